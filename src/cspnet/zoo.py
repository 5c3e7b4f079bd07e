"""The model zoo's front door: a model from a name or a :class:`~cspnet.spec.ModelSpec`, with its weights.

A name means the published model (:mod:`cspnet.weights.records`); a checkpoint carries its own model, so weights
from a file decide the head, the class names and the eval preprocessing unless the caller says otherwise.
(:func:`cspnet.get_model` also takes config files and checkpoint paths as the model: :mod:`cspnet.inference`.)"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch

from . import weights
from .data.transforms import EvalPreset, EvalTransform
from .errors import CheckpointError, InvalidOptionError
from .models import CSPNet, ImageClassifier
from .spec import BackboneOptions, ModelSpec
from .weights.records import WeightsInfo, get_weights_info

log = logging.getLogger("cspnet")

_WHERE = ("weights_dir", "cache_dir", "mirror", "offline", "url_mapping")
_HEAD_KEYS = {"num_classes", "type", "in_channels", "loss", "topk"}  # mmpretrain's head dict; only num_classes acts


def get_transform(name: str | WeightsInfo | EvalPreset) -> EvalTransform:
    """The exact eval preprocessing of a model: image (path, PIL, RGB uint8 array) -> float32 ``(3, crop, crop)``."""
    if not isinstance(name, EvalPreset):
        name = (name if isinstance(name, WeightsInfo) else get_weights_info(name)).eval
    return EvalTransform(name)


def with_options(spec: ModelSpec, num_classes: int | None = None, backbone: Mapping[str, Any] | None = None,
                 head: Mapping[str, Any] | None = None, **options) -> ModelSpec:
    """``spec`` with the caller's options: ``num_classes``, ``drop_rate``, CSPNet options, and mmpretrain's
    ``backbone=dict(...)`` / ``head=dict(num_classes=...)``. A new head width drops the class names."""
    options = {**{k: v for k, v in (backbone or {}).items() if k not in ("type", "depth")}, **options}
    if head:
        if set(head) - _HEAD_KEYS:
            raise InvalidOptionError(f"head options {sorted(set(head) - _HEAD_KEYS)} are not supported; only "
                                     f"num_classes is")
        num_classes = head.get("num_classes", num_classes)
    drop_rate = options.pop("drop_rate", spec.drop_rate)
    try:
        bb = BackboneOptions(**{**spec.backbone.kwargs(), **options})
    except TypeError:
        known = sorted(["drop_rate", *BackboneOptions.__dataclass_fields__])
        raise InvalidOptionError(f"unknown model option(s) {sorted(options)}; known: {known}") from None
    if num_classes is not None and num_classes != spec.num_classes:
        spec = spec.replace(num_classes=num_classes, classes=None)
    return spec.replace(drop_rate=drop_rate, backbone=bb)


def get_model(name: str | ModelSpec | None, pretrained: weights.Pretrained = False, num_classes: int | None = None,
              features_only: bool = False, device: str | torch.device | None = None, *, use_ema: bool | None = None,
              backbone: Mapping[str, Any] | None = None, head: Mapping[str, Any] | None = None,
              **kwargs) -> ImageClassifier | CSPNet:
    """Build a model, optionally with weights. Returns it in eval mode.

    Args:
        name: ``cspdarknet53`` / ``cspresnet50`` / ``cspresnext50``, a weights name (``cspdarknet53.ra_in1k``), a
            seed name (``cspdarknet50_3rdparty_8xb32_in1k``), ``timm/<weights name>``, a :class:`ModelSpec`, or
            None when ``pretrained`` is a file, which then names the architecture too.
        pretrained: ``False`` (random init), ``True`` (the published weights, from the first source that has
            them: see :mod:`cspnet.weights.sources`), a local file or URL in the timm, mmpretrain or cspnet layout
            (detected from its keys), or a state dict. A file's own model (head width, class names, eval
            preprocessing: recorded by cspnet, or read from the file) is the model built, unless a ModelSpec or
            ``num_classes`` says otherwise: another ``num_classes`` loads everything but the head (fine-tuning).
        num_classes: classes of the head (default: the weights', else 1000).
        features_only: return the :class:`~cspnet.models.CSPNet` backbone alone; its ``forward`` returns the maps
            of ``out_indices`` (default: every stage), described by ``feature_info``.
        device: where to put the model.
        use_ema: with a training checkpoint: True loads its EMA weights, False its raw weights; None (default)
            the ones that its run selected its best epoch by.
        backbone, head: as mmpretrain's (``backbone=dict(out_indices=(1, 2))``, ``head=dict(num_classes=10)``).
        **kwargs: ``weights_dir``, ``cache_dir``, ``mirror``, ``offline``, ``url_mapping`` (see
            :func:`cspnet.weights.sources.resolve`); :class:`~cspnet.models.CSPNet` options; the head's ``drop_rate``.
    """
    where = {k: kwargs.pop(k) for k in _WHERE if k in kwargs}
    explicit = isinstance(name, ModelSpec)
    spec = name if explicit else get_weights_info(name).spec() if name is not None else None
    found = None
    if pretrained is not False and pretrained is not None:
        found = weights.read(pretrained, spec.arch if spec else None, use_ema=use_ema, **where)
        if spec is None or (not explicit and found.spec is not None):
            spec = found.spec  # a checkpoint carries its model
        elif explicit and spec.classes is None and found.spec is not None and found.num_classes == spec.num_classes:
            spec = spec.replace(classes=found.spec.classes)
    if spec is None:
        raise InvalidOptionError("get_model(None, ...) needs pretrained= a checkpoint file, which names the model")
    if features_only and ("drop_rate" in kwargs or num_classes not in (None, 0)):
        raise InvalidOptionError("features_only=True builds the backbone alone: it takes no num_classes/drop_rate")
    reheaded = num_classes is not None or (head or {}).get("num_classes") is not None
    spec = with_options(spec, num_classes, backbone, head, **kwargs)
    if explicit and found is not None and not (features_only or reheaded) and found.num_classes not in (
            None, spec.num_classes):  # a spec's (a config's) head only confirms the file's; num_classes replaces it
        raise CheckpointError(f"{found.source} has a {found.num_classes}-class head, but {spec.name or spec.arch} "
                              f"builds {spec.num_classes} classes: give the model the file's head (a config: "
                              f"model.head.num_classes={found.num_classes}, or leave it unset), or num_classes="
                              f"{spec.num_classes} (--num-classes) to replace the head on purpose")
    model = spec.build(features_only, init=found is None)  # weights to load: no random init for them to overwrite
    if found is not None:
        if not features_only and found.num_classes not in (None, spec.num_classes):
            # a warning, so the command line shows it: the new head is untrained, its predictions mean nothing
            log.warning("%s: a new, untrained %d-class head replaces its %d-class one (to fine-tune)", found.source,
                        spec.num_classes, found.num_classes)
        weights.load_state(model, found)
        log.info("loaded %s weights from %s%s", spec.arch, found.source, " (EMA)" if found.ema else "")
    if device is not None:
        model.to(device)
    return model.eval()
