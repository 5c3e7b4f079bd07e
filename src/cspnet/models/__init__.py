"""Model definitions: the architecture table, the backbone and the classifier."""

from .classifier import ClassifierHead, ImageClassifier
from .cspnet import ARCHS, CSPArch, CSPNet, CrossStage, FeatureInfo, get_arch, num_params

__all__ = ["ARCHS", "CSPArch", "CSPNet", "ClassifierHead", "CrossStage", "FeatureInfo", "ImageClassifier", "get_arch", "num_params"]
