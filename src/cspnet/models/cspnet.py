"""CSPNet backbones: CSPDarkNet-53, CSPResNet-50 and CSPResNeXt-50.

Paper: "CSPNet: A New Backbone that can Enhance Learning Capability of CNN", Wang et al., CVPRW 2020
(arXiv 1911.11929). The networks are numerically identical to timm 1.0 (``timm/models/cspnet.py``) and
mmpretrain 1.2 (``mmpretrain/models/backbones/cspnet.py``); module names follow timm, so a timm state dict loads
under a ``backbone.`` prefix and mmpretrain's is a rename (see :mod:`cspnet.weights.convert`).

The three variants differ only in data: one :class:`CSPArch` each in :data:`ARCHS`, read by one generic
:class:`CrossStage` and one :class:`CSPNet`. Known deviations from the original darknet CSPDarknet53: LeakyReLU with
slope 0.01 (not darknet's 0.1 or Mish), and a stride-1 stem, as in timm, whose RA weights everyone uses."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..errors import InvalidOptionError

# timm and mmcv both build nn.LeakyReLU() with PyTorch's default slope 0.01 (mmpretrain's docstrings say 0.1, its
# code does not). The published weights were trained with 0.01; any other slope changes every logit.
LEAKY_SLOPE = 0.01


# -- The architecture as data ----------------------------------------------------------------------------------
def _per_stage(value, n: int, name: str) -> tuple:
    """Broadcast a scalar to ``n`` stages, or check that a sequence has one value per stage."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise InvalidOptionError(f"{name} has {len(value)} values; expected one per stage ({n})")
        return tuple(value)
    return (value,) * n


@dataclass(frozen=True)
class StageSpec:
    """The settings of one cross stage, resolved to channel counts."""

    in_chs: int
    out_chs: int
    depth: int
    stride: int  # 1: no conv_down (CSPResNet stage 0 follows the stem's max-pool)
    groups: int  # grouped 3x3 convs (ResNeXt cardinality), in conv_down and in every block's 3x3
    exp_chs: int  # conv_exp output; its first half bypasses the blocks, the second half runs through them
    block_chs: int
    mid_chs: int  # the bottleneck width inside each block
    cross_linear: bool  # conv_exp without activation (conv + BN only)
    down_chs: int  # conv_down output: out_chs with down_growth, else in_chs
    block: str  # key of BLOCKS


@dataclass(frozen=True)
class CSPArch:
    """One CSP variant. Per-stage fields take a scalar (every stage) or one value per stage. Channel arithmetic
    (as timm): ``exp = round(out * expand_ratio)``, ``block = round(out * block_ratio)``,
    ``mid = round(block * bottle_ratio)``; blocks are residual without projection, so ``exp // 2 == block``."""

    name: str
    stem_chs: int
    stem_kernel: int
    stem_stride: int
    stem_pool: bool  # 3x3 stride-2 max-pool after the stem conv (ResNet style)
    depths: tuple[int, ...]
    channels: tuple[int, ...]
    strides: int | tuple[int, ...] = 2
    groups: int | tuple[int, ...] = 1
    expand_ratio: float | tuple[float, ...] = 1.0
    bottle_ratio: float | tuple[float, ...] = 1.0
    block_ratio: float | tuple[float, ...] = 1.0
    cross_linear: bool = False
    down_growth: bool = False
    block: str = "bottle"

    def __post_init__(self):
        n = len(self.depths)
        if len(self.channels) != n:
            raise InvalidOptionError(f"{self.name}: channels has {len(self.channels)} values, depths {n}")
        for f in ("strides", "groups", "expand_ratio", "bottle_ratio", "block_ratio"):
            object.__setattr__(self, f, _per_stage(getattr(self, f), n, f"{self.name}.{f}"))
        if self.block not in BLOCKS:
            raise InvalidOptionError(f"{self.name}: unknown block {self.block!r}; choose from {sorted(BLOCKS)}")
        for s in self.stages():
            if s.exp_chs % 2 or s.exp_chs // 2 != s.block_chs:
                raise InvalidOptionError(f"{self.name}: a stage splits {s.exp_chs} channels for {s.block_chs}-wide blocks")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stem_reduction(self) -> int:
        return self.stem_stride * (2 if self.stem_pool else 1)

    def stages(self) -> list[StageSpec]:
        specs, in_chs = [], self.stem_chs
        for i, out_chs in enumerate(self.channels):
            block_chs = int(round(out_chs * self.block_ratio[i]))
            specs.append(StageSpec(
                in_chs=in_chs, out_chs=out_chs, depth=self.depths[i], stride=self.strides[i], groups=self.groups[i],
                exp_chs=int(round(out_chs * self.expand_ratio[i])), block_chs=block_chs,
                mid_chs=int(round(block_chs * self.bottle_ratio[i])), cross_linear=self.cross_linear,
                down_chs=out_chs if self.down_growth else in_chs, block=self.block))
            in_chs = out_chs
        return specs


# -- Layers and blocks -----------------------------------------------------------------------------------------
class ConvNormAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> LeakyReLU, with timm's child names ``conv``/``bn``/``act``:
    ``(N, in_chs, H, W) -> (N, out_chs, ceil(H / stride), ceil(W / stride))``. Padding is PyTorch-symmetric
    ``kernel // 2`` (not TF "SAME"), as in timm and mmcv."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__(OrderedDict(
            conv=nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            bn=nn.BatchNorm2d(out_chs),  # eps 1e-5, momentum 0.1: the values of timm and mmcv
            act=nn.LeakyReLU(LEAKY_SLOPE, inplace=True) if act else nn.Identity(),
        ))


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al., arXiv 1603.09382). Identity in eval mode or at rate 0."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class DarkBlock(nn.Module):
    """Darknet residual: 1x1 (act) -> 3x3 (act) -> + x. No activation after the add (as timm and mmpretrain).
    ``(N, C, H, W) -> (N, C, H, W)``."""

    def __init__(self, chs: int, mid_chs: int, groups: int, drop_path: float):
        super().__init__()
        self.conv1 = ConvNormAct(chs, mid_chs, 1)
        self.conv2 = ConvNormAct(mid_chs, chs, 3, groups=groups)
        self.drop_path = DropPath(drop_path)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.conv2.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.conv2(self.conv1(x))) + x


class BottleneckBlock(nn.Module):
    """ResNet/ResNeXt bottleneck: 1x1 (act) -> 3x3 grouped (act) -> 1x1 (linear) -> + x -> act.
    ``(N, C, H, W) -> (N, C, H, W)``."""

    def __init__(self, chs: int, mid_chs: int, groups: int, drop_path: float):
        super().__init__()
        self.conv1 = ConvNormAct(chs, mid_chs, 1)
        self.conv2 = ConvNormAct(mid_chs, mid_chs, 3, groups=groups)
        self.conv3 = ConvNormAct(mid_chs, chs, 1, act=False)
        self.drop_path = DropPath(drop_path)
        self.act3 = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def last_norm(self) -> nn.BatchNorm2d:
        return self.conv3.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act3(self.drop_path(self.conv3(self.conv2(self.conv1(x)))) + x)


BLOCKS = {"dark": DarkBlock, "bottle": BottleneckBlock}


class CrossStage(nn.Module):
    """One cross stage partial stage. ``(N, in_chs, H, W) -> (N, out_chs, H / stride, W / stride)``::

        x -> conv_down (3x3, stride) -> conv_exp (1x1) -> split channels in two halves
             first half  ------------------------------------------------\\
             second half -> blocks x depth -> conv_transition_b (1x1) -> concat -> conv_transition (1x1) -> out
    """

    def __init__(self, spec: StageSpec, drop_path_rates: Sequence[float]):
        super().__init__()
        self.conv_down = (ConvNormAct(spec.in_chs, spec.down_chs, 3, spec.stride, groups=spec.groups)
                          if spec.stride != 1 else nn.Identity())
        self.conv_exp = ConvNormAct(spec.down_chs, spec.exp_chs, 1, act=not spec.cross_linear)
        block = BLOCKS[spec.block]
        self.blocks = nn.Sequential(
            *(block(spec.block_chs, spec.mid_chs, spec.groups, drop_path_rates[j]) for j in range(spec.depth))
        )
        self.conv_transition_b = ConvNormAct(spec.block_chs, spec.exp_chs // 2, 1)
        self.conv_transition = ConvNormAct(spec.exp_chs, spec.out_chs, 1)
        self.split = spec.exp_chs // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_exp(self.conv_down(x))
        xs, xb = x.split(self.split, dim=1)
        xb = self.conv_transition_b(self.blocks(xb))
        return self.conv_transition(torch.cat([xs, xb], dim=1))


# -- The backbone ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureInfo:
    """One stage output: its index (what ``out_indices`` names), module, channels and stride."""

    index: int
    module: str
    channels: int
    stride: int


def _resolve_out_indices(out_indices, num_stages: int) -> tuple[int, ...]:
    idx = (out_indices,) if isinstance(out_indices, int) else tuple(out_indices)
    if not idx:
        raise InvalidOptionError("out_indices is empty; name at least one stage")
    resolved = []
    for i in idx:
        if not isinstance(i, int) or isinstance(i, bool) or not -num_stages <= i < num_stages:
            raise InvalidOptionError(f"out_indices entry {i!r} is out of range: this backbone has {num_stages} stages, "
                                     f"so use 0..{num_stages - 1} (or -{num_stages}..-1)")
        resolved.append(i % num_stages)
    if len(set(resolved)) != len(resolved):
        raise InvalidOptionError(f"out_indices {idx} names a stage twice")
    return tuple(sorted(resolved))


class CSPNet(nn.Module):
    """A CSPNet backbone. ``forward``: ``(N, 3, H, W)`` -> tuple of maps, one per ``out_indices`` in stage order.

    Args:
        arch: a :class:`CSPArch` or the name of one in :data:`ARCHS`.
        in_chans: input channels.
        out_indices: stage indices to return (negative counts from the end). Default: the last stage.
            These are *stage* indices as in mmpretrain; :attr:`feature_info` gives each one's channels and stride.
        frozen_stages: -1 freezes nothing; ``k >= 0`` freezes the stem and stages ``0..k`` (mmpretrain's meaning):
            no gradients, BatchNorm kept in eval mode.
        norm_eval: keep every BatchNorm in eval mode while training (frozen statistics, usual for detection).
        drop_path_rate: stochastic depth, rising linearly from 0 to this rate over all blocks.
        zero_init_last: zero the last BatchNorm scale of every block at initialisation (timm's default; helps
            training from scratch, irrelevant when weights are loaded).
    """

    def __init__(
        self,
        arch: CSPArch | str,
        in_chans: int = 3,
        out_indices: int | Sequence[int] = -1,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
    ):
        super().__init__()
        arch = get_arch(arch) if isinstance(arch, str) else arch
        n = arch.num_stages
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages < n:
            raise InvalidOptionError(f"frozen_stages={frozen_stages!r} is out of range: use -1 (none) to {n - 1}")
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise InvalidOptionError(f"drop_path_rate={drop_path_rate!r} must be in [0, 1)")
        self.arch, self.name = arch, arch.name
        self.out_indices = _resolve_out_indices(out_indices, n)
        self.frozen_stages = frozen_stages
        self.norm_eval = bool(norm_eval)
        stem = OrderedDict(conv1=ConvNormAct(in_chans, arch.stem_chs, arch.stem_kernel, arch.stem_stride))
        if arch.stem_pool:
            stem["pool"] = nn.MaxPool2d(3, 2, 1)
        self.stem = nn.Sequential(stem)
        specs = arch.stages()
        total = sum(arch.depths)  # rates rise linearly over all blocks (0 .. drop_path_rate), as timm/mmpretrain
        rates = [float(drop_path_rate) * j / max(total - 1, 1) for j in range(total)]
        starts = [sum(arch.depths[:i]) for i in range(n)]
        self.stages = nn.Sequential(*(CrossStage(s, rates[a : a + s.depth]) for a, s in zip(starts, specs)))
        stride, info = arch.stem_reduction, []
        for i, s in enumerate(specs):
            stride *= s.stride
            info.append(FeatureInfo(i, f"stages.{i}", s.out_chs, stride))
        self.feature_info: tuple[FeatureInfo, ...] = tuple(info)
        self.num_features = specs[-1].out_chs
        self._init_weights(zero_init_last)
        self._freeze()

    # Init matters only when training from scratch. Kaiming-normal fan_out (He et al. 2015) as timm; zeroing the
    # last BN of each residual block makes every block start as identity (Goyal et al., arXiv 1706.02677).
    def _init_weights(self, zero_init_last: bool) -> None:
        if self.stem.conv1.conv.weight.is_meta:  # built for weights that replace every value (ModelSpec.build(
            return  # init=False)); and normal_ on the meta device imports torch._dynamo, seconds of a cold start
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=LEAKY_SLOPE)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "last_norm"):
                    nn.init.zeros_(m.last_norm().weight)

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each output, in ``out_indices`` order."""
        return tuple(self.feature_info[i].channels for i in self.out_indices)

    @property
    def out_strides(self) -> tuple[int, ...]:
        """Stride (input pixels per output pixel) of each output, in ``out_indices`` order."""
        return tuple(self.feature_info[i].stride for i in self.out_indices)

    def _freeze(self) -> None:
        frozen = [self.stem, *self.stages[: self.frozen_stages + 1]] if self.frozen_stages >= 0 else []
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "CSPNet":
        """Set train mode, keeping frozen stages (and all norms, with ``norm_eval``) in eval. Returns self."""
        super().train(mode)
        self._freeze()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward_stages(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """Run the stem and the stages up to ``max(indices)``; return the maps of ``indices`` (sorted)."""
        x = self.stem(x)
        out, last = [], max(indices)
        for i, stage in enumerate(self.stages[: last + 1]):
            x = stage(x)
            if i in indices:
                out.append(x)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, num_features, H/32, W/32)``: the last stage's map, unpooled."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(N, 3, H, W)`` -> tuple of ``(N, C_i, H/s_i, W/s_i)``, one per ``out_indices`` (see :attr:`feature_info`)."""
        return tuple(self.forward_stages(x, self.out_indices))


def _conv_norm_shapes(path: str, in_chs: int, out_chs: int, kernel: int, groups: int = 1) -> dict[str, tuple]:
    bn = {f"{path}.bn.{n}": (out_chs,) for n in ("weight", "bias", "running_mean", "running_var")}
    return {f"{path}.conv.weight": (out_chs, in_chs // groups, kernel, kernel), **bn, f"{path}.bn.num_batches_tracked": ()}


def param_shapes(arch: CSPArch, in_chans: int = 3) -> dict[str, tuple[int, ...]]:
    """``{state-dict key: shape}`` of :class:`CSPNet` in module order, from the table alone: what a checkpoint must
    hold, without building a module (``tests/test_models.py`` checks it against built ones)."""
    shapes = _conv_norm_shapes("stem.conv1", in_chans, arch.stem_chs, arch.stem_kernel)
    for i, s in enumerate(arch.stages()):
        stage = f"stages.{i}"
        if s.stride != 1:
            shapes |= _conv_norm_shapes(f"{stage}.conv_down", s.in_chs, s.down_chs, 3, s.groups)
        shapes |= _conv_norm_shapes(f"{stage}.conv_exp", s.down_chs, s.exp_chs, 1)
        # DarkBlock: 1x1 then grouped 3x3; BottleneckBlock: 1x1, grouped 3x3, 1x1
        convs = [(s.block_chs, s.mid_chs, 1), (s.mid_chs, s.block_chs if s.block == "dark" else s.mid_chs, 3)]
        convs += [(s.mid_chs, s.block_chs, 1)] if s.block == "bottle" else []
        for j in range(s.depth):
            for n, (cin, cout, k) in enumerate(convs, 1):
                shapes |= _conv_norm_shapes(f"{stage}.blocks.{j}.conv{n}", cin, cout, k, s.groups if k == 3 else 1)
        shapes |= _conv_norm_shapes(f"{stage}.conv_transition_b", s.block_chs, s.exp_chs // 2, 1)
        shapes |= _conv_norm_shapes(f"{stage}.conv_transition", s.exp_chs, s.out_chs, 1)
    return shapes


# -- The architecture table ------------------------------------------------------------------------------------
ARCHS: dict[str, CSPArch] = {
    a.name: a
    for a in (
        # Stride-1 stem, darknet blocks, every stage grows its channels in conv_down (down_growth).
        CSPArch(
            name="cspdarknet53",
            stem_chs=32,
            stem_kernel=3,
            stem_stride=1,
            stem_pool=False,
            depths=(1, 2, 8, 8, 4),
            channels=(64, 128, 256, 512, 1024),
            expand_ratio=(2.0, 1.0, 1.0, 1.0, 1.0),
            bottle_ratio=(0.5, 1.0, 1.0, 1.0, 1.0),
            block_ratio=(1.0, 0.5, 0.5, 0.5, 0.5),
            down_growth=True,
            block="dark",
        ),
        # ResNet stem (7x7/2 + max-pool); stage 0 keeps the resolution; conv_exp is linear (cross_linear).
        CSPArch(
            name="cspresnet50",
            stem_chs=64,
            stem_kernel=7,
            stem_stride=2,
            stem_pool=True,
            depths=(3, 3, 5, 2),
            channels=(128, 256, 512, 1024),
            strides=(1, 2, 2, 2),
            expand_ratio=2.0,
            bottle_ratio=0.5,
            cross_linear=True,
        ),
        # As CSPResNet, twice as wide, with 32 groups in every 3x3 (conv_down included, as timm and mmpretrain).
        CSPArch(
            name="cspresnext50",
            stem_chs=64,
            stem_kernel=7,
            stem_stride=2,
            stem_pool=True,
            depths=(3, 3, 5, 2),
            channels=(256, 512, 1024, 2048),
            strides=(1, 2, 2, 2),
            groups=32,
            block_ratio=0.5,
            cross_linear=True,
        ),
    )
}


def get_arch(name: str) -> CSPArch:
    """Look up an architecture by name (``cspdarknet53``, ``cspresnet50``, ``cspresnext50``)."""
    if name not in ARCHS:
        raise InvalidOptionError(f"unknown architecture {name!r}; choose from {sorted(ARCHS)}")
    return ARCHS[name]


def replace_arch(arch: CSPArch, **changes) -> CSPArch:
    """A copy of ``arch`` with some fields changed (e.g. a smaller variant for tests or experiments)."""
    return dataclasses.replace(arch, **changes)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
