"""Parameters, MACs and activations of a model at a stated resolution: mmpretrain's ``get_flops.py``, built in
(README, "FLOPs, parameters and activations", compares the numbers with the seed's, mmengine's and timm's).

Counting convention (fvcore's and mmengine's ``get_model_complexity_info``'s, which gave the seed's "FLOPs" column):
one multiply-accumulate (MAC) per conv/linear weight use, 2 per element for an inference-mode BatchNorm (scale and
shift), 1 per input element for global average pooling; activations, additions and concatenations are free. The
seed's column is :attr:`Analysis.macs` (backbone + global pool, head excluded); timm's model cards quote the whole
model, ``macs + macs_head``. :class:`torch.utils.flop_counter.FlopCounterMode` counts one forward pass on *meta*
tensors (``torch.func.functional_call`` swaps in shape-only weights): no compute or memory, any size or device."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from .errors import InvalidOptionError
from .models.classifier import ImageClassifier
from .models.cspnet import CSPNet, num_params

aten = torch.ops.aten


# FlopCounterMode formulas receive the shapes of the op's tensor arguments (None for absent ones) and out_shape.
def _conv_macs(x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed, *args, out_shape=None, **kwargs):
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=transposed) // 2  # torch counts 2 FLOPs per MAC


def _addmm_macs(_bias_shape, a_shape, b_shape, *args, out_shape=None, **kwargs):
    return a_shape[0] * a_shape[1] * b_shape[1]


def _norm_macs(x_shape, w_shape, *args, out_shape=None, **kwargs):
    return math.prod(x_shape) * (2 if w_shape is not None else 1)  # fvcore: x * scale + shift in inference mode


def _mean_macs(x_shape, *args, out_shape=None, **kwargs):
    return math.prod(x_shape)  # the head's global average pool


def _output_elements(*args, out_shape=None, **kwargs):
    return math.prod(out_shape)


# Eval-mode BatchNorm reaches the dispatcher as _native_batch_norm_legit_no_training (or native_batch_norm with
# training=False on some paths); both take (input, weight, ...).
_MACS = {aten.convolution: _conv_macs, aten.addmm: _addmm_macs, aten._native_batch_norm_legit_no_training: _norm_macs,
         aten.native_batch_norm: _norm_macs, aten.mean: _mean_macs}
# fvcore's activation count: elements output by convolutions (the backbone has no other matmul-like op)
_ACTIVATIONS = {aten.convolution: _output_elements}


@dataclass(frozen=True)
class PartCost:
    """One part of the network (``stem``, ``stages.<i>``, ``pool``, ``head``) at :attr:`Analysis.resolution`."""

    name: str
    macs: int
    params: int
    activations: int


@dataclass(frozen=True)
class Analysis:
    """The cost of one model at one input resolution (batch 1). All counts are plain integers. ``macs``: backbone +
    global pool, the seed's "FLOPs" column (conv + BatchNorm + pool, head excluded); ``macs_conv``: the convolutions
    alone; ``macs_head``: the linear classifier; ``activations``: elements output by the backbone's convolutions
    (fvcore's count); ``parts``: the same per stem, stage, pool and head."""

    model: str
    resolution: tuple[int, int]
    params: int
    params_backbone: int
    params_head: int
    macs: int
    macs_conv: int
    macs_head: int
    activations: int
    parts: tuple[PartCost, ...]

    def to_dict(self) -> dict:
        convention = ("MACs (multiply-accumulates) for batch 1 at `resolution` (H, W): conv/linear weight uses + 2 per "
                      "BatchNorm element + 1 per pooled element (fvcore/mmengine); `macs` = backbone + global pool, "
                      "head excluded; activations = elements output by convolutions")
        return {**asdict(self), "resolution": list(self.resolution), "convention": convention}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format(self) -> str:
        """A table for people: every number carries its resolution."""
        h, w = self.resolution
        at = f"@{h}x{w}"
        rows = [f"{self.model} at {h}x{w} (batch 1)",
                f"{'part':<10} {'GMACs' + at:>16} {'params (M)':>11} {'MActs' + at:>16}"]
        rows += [f"{p.name:<10} {p.macs / 1e9:>16.4f} {p.params / 1e6:>11.3f} {p.activations / 1e6:>16.3f}"
                 for p in self.parts]
        conv = f"conv {self.macs_conv / 1e9:.3f} G + BatchNorm"
        pooled = any(p.name == "pool" for p in self.parts)
        what = f"backbone + global pool (the seed's FLOPs column; {conv} + pool)" if pooled else f"backbone ({conv})"
        rows += ["", f"MACs {at}: {self.macs / 1e9:.3f} G {what}; head {self.macs_head / 1e9:.4f} G; whole model "
                     f"{(self.macs + self.macs_head) / 1e9:.3f} G",
                 f"params: {self.params / 1e6:.3f} M = backbone {self.params_backbone / 1e6:.3f} M + head "
                 f"{self.params_head / 1e6:.3f} M (resolution-independent)",
                 f"activations {at}: {self.activations / 1e6:.3f} M (elements output by convolutions)"]
        return "\n".join(rows)


def resolution(size: int | Sequence[int], name: str = "shape", minimum: int = 1,
               maximum: int | None = None) -> tuple[int, int]:
    """An input size given as ``N``, ``[N]`` or ``(H, W)`` -> ``(H, W)``, each at least ``minimum`` (and at most
    ``maximum``); else :class:`~cspnet.errors.InvalidOptionError` naming the argument ``name``."""
    try:
        hw = (size, size) if isinstance(size, int) else tuple(size)
    except TypeError:  # neither a number nor a sequence (None, a float): refused below
        hw = ()
    hw = hw * 2 if len(hw) == 1 else hw
    if len(hw) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= minimum
                               and (maximum is None or s <= maximum) for s in hw):
        least = "positive" if minimum == 1 else f"at least {minimum} (the network's stride)"
        most = f" and at most {maximum}" if maximum is not None else ""
        raise InvalidOptionError(f"{name}={size!r}: give one size or (H, W), each {least}{most}")
    return hw  # type: ignore[return-value]


def _count(model: nn.Module, x: torch.Tensor, formulas: dict) -> dict[str, dict]:
    """Counts of one forward pass: ``{module path: {op: count}}`` for the ops in ``formulas`` (path "Global": all)."""
    # functional_call swaps every parameter and buffer for a meta tensor of the same shape for this one call
    meta = {k: torch.empty_like(v, device="meta") for k, v in (*model.named_parameters(), *model.named_buffers())}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        torch.func.functional_call(model, meta, (x,))
    return {mod: {op: n for op, n in ops.items() if op in formulas} for mod, ops in counter.get_flop_counts().items()}


def analyze(model: ImageClassifier | CSPNet | str, shape: int | Sequence[int] = 224) -> Analysis:
    """Count parameters, MACs and activations of ``model`` for one ``(1, 3, H, W)`` input: an :class:`Analysis`
    (``analyze("cspdarknet53").macs`` is 5_027_334_400, 5.027 G at 224x224).

    Args:
        model: a classifier, a ``features_only`` backbone (then there is no pool or head), or a model name (built
            on the meta device: no weights, no compute).
        shape: ``H`` or ``(H, W)`` of the input (default 224, as mmpretrain's ``get_flops.py``).
    """
    if isinstance(model, str):
        from .zoo import get_model

        with torch.device("meta"):
            model = get_model(model)
    if isinstance(model, ImageClassifier):
        backbone, head = model.backbone, model.head
    elif isinstance(model, CSPNet):
        backbone, head = model, None
    else:
        raise InvalidOptionError(f"analyze() takes an ImageClassifier, a CSPNet or a model name, not "
                                 f"{type(model).__name__}")
    h, w = resolution(shape)
    x = torch.empty(1, backbone.stem.conv1.conv.in_channels, h, w, device="meta")
    was_training = model.training
    model.eval()  # inference cost: BatchNorm with running statistics, no DropPath
    try:
        by_op, acts_by_op = _count(model, x, _MACS), _count(model, x, _ACTIVATIONS)
    finally:
        model.train(was_training)
    macs = {mod: sum(ops.values()) for mod, ops in by_op.items()}
    acts = {mod: sum(ops.values()) for mod, ops in acts_by_op.items()}
    root = type(model).__name__
    prefix = f"{root}.backbone" if head is not None else root
    names = ["stem"] + [f"stages.{i}" for i in range(len(backbone.stages))]
    parts = [PartCost(n, macs.get(f"{prefix}.{n}", 0), num_params(backbone.get_submodule(n)),
                      acts.get(f"{prefix}.{n}", 0)) for n in names]
    macs_head = 0
    if head is not None:
        macs_head = macs.get(f"{root}.head.fc", 0)
        parts.append(PartCost("pool", macs.get(f"{root}.head", 0) - macs_head, 0, 0))
        parts.append(PartCost("head", macs_head, num_params(head), 0))
    params, params_backbone = num_params(model), num_params(backbone)
    return Analysis(model=getattr(model, "name", backbone.arch.name), resolution=(h, w), params=params,
                    params_backbone=params_backbone, params_head=params - params_backbone,
                    macs=macs["Global"] - macs_head, macs_conv=by_op["Global"].get(aten.convolution, 0),
                    macs_head=macs_head, activations=sum(p.activations for p in parts), parts=tuple(parts))
