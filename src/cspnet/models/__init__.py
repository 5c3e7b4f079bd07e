"""Model definitions: the architecture table, the backbone and the classifier."""

from .classifier import ClassifierHead, ImageClassifier
from .cspnet import ARCHS, CSPArch, CSPNet, CrossStage, FeatureInfo, get_arch, num_params
from .features import FeatureDict, as_fpn_inputs, feature_names

__all__ = ["ARCHS", "CSPArch", "CSPNet", "ClassifierHead", "CrossStage", "FeatureDict", "FeatureInfo", "ImageClassifier",
           "as_fpn_inputs", "feature_names", "get_arch", "num_params"]
