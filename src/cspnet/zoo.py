"""The model zoo: one typed record per checkpoint, name resolution, ``list_models`` and ``get_model``.

mmpretrain's three CSPNet checkpoints are timm's RA weights renamed (identical tensors), so each weight set has one
record, reachable by its honest name (``cspdarknet53.ra_in1k``), the architecture name (``cspdarknet53``) and the
seed's name (``cspdarknet50_3rdparty_8xb32_in1k``). The README's model table is generated from these records.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .data.classes import imagenet_classes
from .data.transforms import EvalPreset, EvalTransform
from .errors import CheckpointError, InvalidOptionError
from .models.classifier import ImageClassifier
from .models.cspnet import ARCHS, CSPNet
from .weights import convert
from .weights.checkpoint import read_state_dict
from .weights.sources import HubFile, UrlFile, default_cache_dir, download, hash_prefix_of, resolve

log = logging.getLogger("cspnet")

_MMPRETRAIN_URL = "https://download.openmmlab.com/mmclassification/v0/cspnet/"


@dataclass(frozen=True)
class Metrics:
    """ImageNet-1k validation accuracy (%) measured with ``preset``, as published by ``source``."""

    top1: float
    top5: float
    preset: EvalPreset
    source: str


@dataclass(frozen=True)
class WeightsInfo:
    """Everything known about one checkpoint.

    ``macs_224`` and ``macs_eval`` are multiply-accumulates (G) of backbone + global pool (the seed's "FLOPs"
    column) at 224 and at the eval crop; ``tests/test_analysis.py`` recomputes them and the parameter count.
    """

    name: str
    arch: str
    aliases: tuple[str, ...]
    eval: EvalPreset
    metrics: Metrics
    params: int
    macs_224: float
    macs_eval: float
    sources: tuple[HubFile | UrlFile, ...]
    config: str
    num_classes: int = 1000
    license: str = "apache-2.0"
    paper: str = "https://arxiv.org/abs/1911.11929"
    notes: str = ""
    other_metrics: tuple[Metrics, ...] = field(default=())

    @property
    def top1(self) -> float:
        return self.metrics.top1

    @property
    def top5(self) -> float:
        return self.metrics.top5


def _bicubic(resize: int, crop: int) -> EvalPreset:
    return EvalPreset(resize, crop, "bicubic")


_TIMM_RESULTS = "timm results-imagenet.csv (Pillow bilinear, short edge 288, crop 256)"
_MMPRETRAIN = "mmpretrain metafile (configs/cspnet)"

WEIGHTS: tuple[WeightsInfo, ...] = (
    WeightsInfo(
        name="cspdarknet53.ra_in1k",
        arch="cspdarknet53",
        aliases=("cspdarknet53", "cspdarknet50_3rdparty_8xb32_in1k"),
        eval=_bicubic(288, 256),
        metrics=Metrics(80.05, 95.07, _bicubic(288, 256), _MMPRETRAIN),
        other_metrics=(Metrics(80.078, 95.060, EvalPreset(288, 256, "bilinear"), _TIMM_RESULTS),),
        params=27_642_184,
        macs_224=5.027,
        macs_eval=6.566,
        sources=(
            HubFile("timm/cspdarknet53.ra_in1k"),
            UrlFile(_MMPRETRAIN_URL + "cspdarknet50_3rdparty_8xb32_in1k_20220329-bd275287.pth", "mmpretrain"),
        ),
        config="configs/cspnet/cspdarknet50_8xb32_in1k.py",
        notes="timm RA recipe (RandAugment, RMSProp, EMA). mmpretrain's name says 50; the network has 53 layers.",
    ),
    WeightsInfo(
        name="cspresnet50.ra_in1k",
        arch="cspresnet50",
        aliases=("cspresnet50", "cspresnet50_3rdparty_8xb32_in1k"),
        eval=_bicubic(288, 256),
        metrics=Metrics(79.55, 94.68, _bicubic(288, 256), _MMPRETRAIN),
        other_metrics=(Metrics(79.578, 94.698, EvalPreset(288, 256, "bilinear"), _TIMM_RESULTS),),
        params=21_616_168,
        macs_224=3.475,
        macs_eval=4.539,
        sources=(
            HubFile("timm/cspresnet50.ra_in1k"),
            UrlFile(_MMPRETRAIN_URL + "cspresnet50_3rdparty_8xb32_in1k_20220329-dd6dddfb.pth", "mmpretrain"),
        ),
        config="configs/cspnet/cspresnet50_8xb32_in1k.py",
        notes="timm RA recipe (RandAugment, RMSProp, EMA).",
    ),
    WeightsInfo(
        name="cspresnext50.ra_in1k",
        arch="cspresnext50",
        aliases=("cspresnext50", "cspresnext50_3rdparty_8xb32_in1k"),
        # mmpretrain evaluates CSPResNeXt at 256 -> 224 (79.96); timm at 288 -> 256 gets 80.55 from the same weights.
        eval=_bicubic(256, 224),
        metrics=Metrics(79.96, 94.96, _bicubic(256, 224), _MMPRETRAIN),
        other_metrics=(Metrics(80.548, 95.330, EvalPreset(288, 256, "bilinear"), _TIMM_RESULTS),),
        params=20_569_896,
        macs_224=3.097,
        macs_eval=3.097,
        sources=(
            HubFile("timm/cspresnext50.ra_in1k"),
            UrlFile(_MMPRETRAIN_URL + "cspresnext50_3rdparty_8xb32_in1k_20220329-2cc84d21.pth", "mmpretrain"),
        ),
        config="configs/cspnet/cspresnext50_8xb32_in1k.py",
        notes="timm RA recipe (RandAugment, RMSProp, EMA).",
    ),
)

_BY_NAME: dict[str, WeightsInfo] = {}
for _w in WEIGHTS:
    for _n in (_w.name, *_w.aliases):
        _BY_NAME[_n.lower()] = _w


def get_weights_info(name: str) -> WeightsInfo:
    """The record for a model name: weights name, architecture, seed alias, or ``[hf-hub:]timm/<weights name>``."""
    key = re.sub(r"^(hf[-_]hub:)?timm/", "", name.strip()).lower()
    try:
        return _BY_NAME[key]
    except KeyError:
        close = [n for n in list_models() if key.split(".")[0][:6] in n.lower()]
        hint = f" Did you mean one of {close}?" if close else ""
        raise InvalidOptionError(f"unknown model {name!r}.{hint} `cspnet list` shows every name.") from None


def list_models(pattern: str | None = None) -> list[str]:
    """Every accepted model name, sorted; ``pattern`` filters with fnmatch (``*`` implied at both ends if absent)."""
    names = sorted({n for w in WEIGHTS for n in (w.name, *w.aliases)})
    if not pattern:
        return names
    pat = pattern.lower() if any(c in pattern for c in "*?[") else f"*{pattern.lower()}*"
    return [n for n in names if fnmatch.fnmatch(n.lower(), pat)]


def get_transform(name: str | WeightsInfo | EvalPreset) -> EvalTransform:
    """The exact eval preprocessing of a model: image (path, PIL, RGB uint8 array) -> float32 ``(3, crop, crop)``."""
    if isinstance(name, EvalPreset):
        return EvalTransform(name)
    info = name if isinstance(name, WeightsInfo) else get_weights_info(name)
    return EvalTransform(info.eval)


def _is_url(s: str) -> bool:
    return urllib.parse.urlparse(s).scheme in ("http", "https", "file")


def _fetch_url(url: str, info: WeightsInfo, **where) -> Path:
    """A user-given URL: a seed URL goes through every source (mirror, Hub, ...); any other is downloaded.

    ``where``: the keyword arguments of :func:`~cspnet.weights.sources.resolve` (weights_dir, cache_dir, ...).
    """
    for s in info.sources:
        if isinstance(s, UrlFile) and s.url == url:
            return resolve(info.name, info.sources, **where)
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint.pth"
    dst = default_cache_dir(where.get("cache_dir")) / name
    if dst.is_file():
        return dst
    return download(url, dst, hash_prefix_of(name))


def _merge_mm_kwargs(kwargs: dict, backbone: Mapping | None, head: Mapping | None) -> dict:
    """Accept mmpretrain's ``backbone=dict(...)`` / ``head=dict(num_classes=...)`` overrides."""
    if backbone:
        extra = {k: v for k, v in backbone.items() if k not in ("type", "depth")}
        kwargs.update(extra)
    if head:
        unknown = set(head) - {"num_classes", "type", "in_channels", "loss", "topk"}
        if unknown:
            raise InvalidOptionError(f"head options {sorted(unknown)} are not supported; only num_classes is")
        if "num_classes" in head:
            kwargs["num_classes"] = head["num_classes"]
    return kwargs


def load_weights(
    model: ImageClassifier | CSPNet,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
) -> None:
    """Load a state dict of any layout into a classifier or backbone, strictly.

    The head is skipped (and left freshly initialised) when the checkpoint has none or a different number of
    classes; every other key must match. A checkpoint of another architecture is named as such.
    """
    arch = model.arch if isinstance(model, CSPNet) else model.backbone.arch
    try:
        sd = convert.to_cspnet(state_dict, arch)
    except CheckpointError as e:
        other = convert.guess_arch(state_dict)
        if other and other != arch.name:
            raise CheckpointError(
                f"{source} holds {other} weights, not {arch.name}: build the model with get_model({other!r}, ...)"
            ) from None
        raise CheckpointError(f"{source}: {e}") from None
    head = {k: sd.pop(k) for k in convert.HEAD_KEYS if k in sd}
    backbone = model if isinstance(model, CSPNet) else model.backbone
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in sd.items()})
    if backbone is model:
        return
    n_ckpt = head["head.fc.weight"].shape[0] if head else None
    if head and n_ckpt == model.num_classes:
        model.head.load_state_dict({k.removeprefix("head."): v for k, v in head.items()})
    elif model.num_classes:
        why = "has no head" if not head else f"has {n_ckpt} classes"
        log.info("%s %s; the %d-class head stays freshly initialised (fine-tuning)", source, why, model.num_classes)


def get_model(
    name: str,
    pretrained: bool | str | os.PathLike = False,
    num_classes: int | None = None,
    features_only: bool = False,
    device: str | torch.device | None = None,
    *,
    weights_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    offline: bool | None = None,
    url_mapping: tuple[str, str] | None = None,
    use_ema: bool = False,
    backbone: Mapping[str, Any] | None = None,
    head: Mapping[str, Any] | None = None,
    **kwargs,
) -> ImageClassifier | CSPNet:
    """Build a model by name, optionally with weights. Returns it in eval mode.

    Args:
        name: ``cspdarknet53`` / ``cspresnet50`` / ``cspresnext50``, a weights name (``cspdarknet53.ra_in1k``),
            a seed name (``cspdarknet50_3rdparty_8xb32_in1k``), ``timm/<weights name>``, or a config file
            (``configs/cspnet/cspdarknet50_8xb32_in1k.py``; ``pretrained=True`` then uses its ``load_from``).
        pretrained: ``False`` (random init), ``True`` (the published weights, from the first source that has
            them: see :mod:`cspnet.weights.sources`), or a local file or URL in the timm, mmpretrain or cspnet
            layout, detected from its keys.
        num_classes: classes of the head (default 1000). With weights of another class count, everything but the
            head is loaded (fine-tuning).
        features_only: return the :class:`~cspnet.models.CSPNet` backbone alone; its ``forward`` returns the maps
            of ``out_indices`` (default: every stage), described by ``feature_info``.
        device: where to put the model.
        weights_dir, cache_dir, mirror, offline, url_mapping: see :func:`cspnet.weights.sources.resolve`.
        use_ema: with a training checkpoint that holds EMA weights, load those.
        backbone, head: mmpretrain-style overrides (``backbone=dict(out_indices=(1, 2, 3))``,
            ``head=dict(num_classes=10)``).
        **kwargs: backbone options (``out_indices``, ``frozen_stages``, ``norm_eval``, ``drop_path_rate``,
            ``in_chans``, ``zero_init_last``) and ``drop_rate`` for the head.
    """
    where = dict(weights_dir=weights_dir, cache_dir=cache_dir, mirror=mirror, offline=offline, url_mapping=url_mapping)
    kwargs = _merge_mm_kwargs(dict(kwargs), backbone, head)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if str(name).endswith(".py"):  # an mmpretrain-style config file, as mmpretrain's get_model accepts
        from .config import build_model, load_config

        cfg = load_config(name)
        if pretrained is True:
            pretrained = cfg.get("load_from") or True
        return build_model(cfg, pretrained=pretrained, device=device, use_ema=use_ema, **where, **kwargs)
    info = get_weights_info(name)
    if features_only:
        if kwargs.pop("num_classes", None) not in (None, 0) or "drop_rate" in kwargs:
            raise InvalidOptionError("features_only=True builds the backbone alone: it takes no num_classes/drop_rate")
        kwargs.setdefault("out_indices", tuple(range(len(ARCHS[info.arch].depths))))
        model: ImageClassifier | CSPNet = CSPNet(info.arch, **kwargs)
    else:
        model = ImageClassifier(info.arch, **kwargs)
        model.classes = imagenet_classes() if model.num_classes == info.num_classes else None
        model.transform = EvalTransform(info.eval)
    model.weights = info

    if pretrained is not False and pretrained is not None:
        if pretrained is True:
            path = resolve(info.name, info.sources, **where)
        elif isinstance(pretrained, (str, os.PathLike)):
            path = _fetch_url(str(pretrained), info, **where) if _is_url(str(pretrained)) else Path(pretrained)
        else:
            raise InvalidOptionError(f"pretrained={pretrained!r}: use False, True, a file path or a URL")
        sd, meta = read_state_dict(path, prefer_ema=use_ema)
        load_weights(model, sd, source=f"checkpoint {str(path)!r}")
        if isinstance(model, ImageClassifier) and meta.get("classes") and len(meta["classes"]) == model.num_classes:
            model.classes = list(meta["classes"])
        log.info("loaded %s weights from %s", info.arch, path)
    if device is not None:
        model.to(device)
    return model.eval()
