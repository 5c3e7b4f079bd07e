"""cspnet: CSPDarkNet-53, CSPResNet-50 and CSPResNeXt-50 for PyTorch.

The public API mirrors mmpretrain's (``get_model``, ``list_models``, ``inference_model``) plus timm-style model
contracts; see the README for a tour.
"""

from .analysis import analyze
from .data.transforms import EvalPreset, EvalTransform, load_image
from .errors import CSPNetError
from .export import export_model
from .fast import fuse_bn, optimize_for_inference
from .inference import inference_model
from .models import ARCHS, CSPNet, ImageClassifier
from .weights.convert import convert_state_dict
from .zoo import WEIGHTS, WeightsInfo, get_model, get_transform, get_weights_info, list_models, load_weights

__version__ = "0.1.0"

__all__ = [
    "ARCHS",
    "CSPNet",
    "CSPNetError",
    "EvalPreset",
    "EvalTransform",
    "ImageClassifier",
    "WEIGHTS",
    "WeightsInfo",
    "analyze",
    "convert_state_dict",
    "export_model",
    "fuse_bn",
    "get_model",
    "get_transform",
    "get_weights_info",
    "inference_model",
    "list_models",
    "load_image",
    "load_weights",
    "optimize_for_inference",
    "__version__",
]
