"""The published weights: one typed record per checkpoint, and the names they answer to.

mmpretrain's three CSPNet checkpoints are timm's RA weights renamed (identical tensors), so each weight set has one
record, reachable by its honest name (``cspdarknet53.ra_in1k``), the architecture name (``cspdarknet53``) and the
seed's name (``cspdarknet50_3rdparty_8xb32_in1k``). The README's model table is generated from these records.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field, replace

from ..data.classes import imagenet_classes
from ..data.presets import EvalPreset
from ..errors import InvalidOptionError
from ..spec import ModelSpec
from .sources import HubFile, UrlFile

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
    """Everything known about one checkpoint. ``macs_224`` and ``macs_eval`` are multiply-accumulates (G) of backbone +
    global pool (the seed's "FLOPs" column) at 224 and at the eval crop; ``tests/test_analysis.py`` recomputes them and
    the parameter count."""

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

    def __post_init__(self):
        # Every source's download is bounded by the size the file can have: float32 parameters and BN buffers plus a
        # little metadata, well under twice the parameters' 4 bytes each (+16 MiB); a server sending more is wrong.
        bound = 8 * self.params + (16 << 20)
        object.__setattr__(self, "sources", tuple(s if s.max_bytes else replace(s, max_bytes=bound)
                                                  for s in self.sources))

    def spec(self) -> ModelSpec:
        """The model these weights fill: an ImageNet-1k classifier with this record's eval preprocessing."""
        return ModelSpec(self.arch, self.eval, self.num_classes, imagenet_classes(), name=self.name)

    @property
    def top1(self) -> float:
        return self.metrics.top1

    @property
    def top5(self) -> float:
        return self.metrics.top5


_TIMM_RESULTS = "timm results-imagenet.csv (Pillow bilinear, short edge 288, crop 256)"
_MMPRETRAIN = "mmpretrain metafile (configs/cspnet)"

WEIGHTS: tuple[WeightsInfo, ...] = (
    WeightsInfo(
        name="cspdarknet53.ra_in1k", arch="cspdarknet53",
        aliases=("cspdarknet53", "cspdarknet50_3rdparty_8xb32_in1k"),
        eval=EvalPreset(288, 256, "bicubic"),
        metrics=Metrics(80.05, 95.07, EvalPreset(288, 256, "bicubic"), _MMPRETRAIN),
        other_metrics=(Metrics(80.078, 95.060, EvalPreset(288, 256, "bilinear"), _TIMM_RESULTS),),
        params=27_642_184, macs_224=5.027, macs_eval=6.566,
        sources=(HubFile("timm/cspdarknet53.ra_in1k"),
                 UrlFile(_MMPRETRAIN_URL + "cspdarknet50_3rdparty_8xb32_in1k_20220329-bd275287.pth", "mmpretrain")),
        config="configs/cspnet/cspdarknet50_8xb32_in1k.py",
        notes="timm RA recipe (RandAugment, RMSProp, EMA). mmpretrain's name says 50; the network has 53 layers.",
    ),
    WeightsInfo(
        name="cspresnet50.ra_in1k", arch="cspresnet50",
        aliases=("cspresnet50", "cspresnet50_3rdparty_8xb32_in1k"),
        eval=EvalPreset(288, 256, "bicubic"),
        metrics=Metrics(79.55, 94.68, EvalPreset(288, 256, "bicubic"), _MMPRETRAIN),
        other_metrics=(Metrics(79.578, 94.698, EvalPreset(288, 256, "bilinear"), _TIMM_RESULTS),),
        params=21_616_168, macs_224=3.475, macs_eval=4.539,
        sources=(HubFile("timm/cspresnet50.ra_in1k"),
                 UrlFile(_MMPRETRAIN_URL + "cspresnet50_3rdparty_8xb32_in1k_20220329-dd6dddfb.pth", "mmpretrain")),
        config="configs/cspnet/cspresnet50_8xb32_in1k.py",
        notes="timm RA recipe (RandAugment, RMSProp, EMA).",
    ),
    WeightsInfo(
        name="cspresnext50.ra_in1k", arch="cspresnext50",
        aliases=("cspresnext50", "cspresnext50_3rdparty_8xb32_in1k"),
        # mmpretrain evaluates CSPResNeXt at 256 -> 224 (79.96); timm at 288 -> 256 gets 80.55 from the same weights.
        eval=EvalPreset(256, 224, "bicubic"),
        metrics=Metrics(79.96, 94.96, EvalPreset(256, 224, "bicubic"), _MMPRETRAIN),
        other_metrics=(Metrics(80.548, 95.330, EvalPreset(288, 256, "bilinear"), _TIMM_RESULTS),),
        params=20_569_896, macs_224=3.097, macs_eval=3.097,
        sources=(HubFile("timm/cspresnext50.ra_in1k"),
                 UrlFile(_MMPRETRAIN_URL + "cspresnext50_3rdparty_8xb32_in1k_20220329-2cc84d21.pth", "mmpretrain")),
        config="configs/cspnet/cspresnext50_8xb32_in1k.py",
        notes="timm RA recipe (RandAugment, RMSProp, EMA).",
    ),
)

_BY_NAME: dict[str, WeightsInfo] = {n.lower(): w for w in WEIGHTS for n in (w.name, *w.aliases)}


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
