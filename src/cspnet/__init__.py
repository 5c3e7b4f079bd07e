"""cspnet: CSPDarkNet-53, CSPResNet-50 and CSPResNeXt-50 for PyTorch.

The public API mirrors mmpretrain's (``get_model``, ``list_models``, ``inference_model``) plus timm-style model
contracts; see the README for a tour. Names are imported on first use (PEP 562), so ``import cspnet`` and the
command line's ``--help`` start without importing torch."""

from ._lazy import lazy_exports
from ._version import __version__

_EXPORTS = {
    "ARCHS": "models", "CSPNet": "models", "ImageClassifier": "models", "ModelSpec": "spec", "CSPNetError": "errors",
    "EvalPreset": "data.presets", "EvalTransform": "data.transforms", "load_image": "data.transforms",
    "WEIGHTS": "weights.records", "WeightsInfo": "weights.records", "get_weights_info": "weights.records",
    "list_models": "weights.records", "convert_state_dict": "weights.convert", "load_weights": "weights.loading:load",
    "get_transform": "zoo", "analyze": "analysis", "export_model": "export", "fuse_bn": "optimize",
    "optimize_for_inference": "optimize", "get_model": "inference", "inference_model": "inference",
    "predict_files": "inference",
}
__all__ = [*_EXPORTS, "__version__"]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
