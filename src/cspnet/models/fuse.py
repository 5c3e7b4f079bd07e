"""BatchNorm folding for inference: ``fuse_bn(model)`` returns a copy whose convolutions absorb their BatchNorm.

In eval mode a BatchNorm is the affine map ``y = (x - mean) / sqrt(var + eps) * gamma + beta``, so ``bn(conv(x, W))``
equals ``conv(x, W * s) + (beta - mean * s)`` with ``s = gamma / sqrt(var + eps)`` per output channel. Folding removes
one full read and write of every activation map; the logits change by float rounding only (about 1e-6 relative).
LeakyReLU stays as it is. With no BatchNorm left to train, a folded model is for inference only.

On CPU, under ``torch.no_grad``/``inference_mode``, a folded conv runs as one oneDNN primitive with its bias and
LeakyReLU (and, in a bottleneck, the residual add) fused in (``torch.ops.mkldnn._convolution_pointwise``, the op
``torch.compile`` emits for the same pattern): one pass over each output map instead of two or three.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidOptionError
from .cspnet import LEAKY_SLOPE, BottleneckBlock, ConvNormAct, DarkBlock

_TRAIN_REFUSED = ("this model has its BatchNorm folded into the convolutions (cspnet.fuse_bn / optimize_for_inference):"
                  " it is for inference only. Train the original, unfused model and fold it again afterwards.")


@functools.lru_cache(maxsize=None)
def _mkldnn_fused_ok() -> bool:
    """Whether this PyTorch build runs oneDNN's fused conv op, and runs it right (checked once on a tiny conv)."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g) for s in ((1, 4, 5, 5), (6, 4, 3, 3), (6,)))
        r = torch.randn(1, 6, 5, 5, generator=g)
        with torch.no_grad():
            y = op(x, w, b, [1, 1], [1, 1], [1, 1], 1, "leaky_relu", [LEAKY_SLOPE], "")
            y2 = op.binary(x, r, w, b, [1, 1], [1, 1], [1, 1], 1, "add", 1.0, None, [], "")
            ref = F.conv2d(x, w, b, 1, 1)
        ok = torch.allclose(y, F.leaky_relu(ref, LEAKY_SLOPE), atol=1e-4) and torch.allclose(y2, ref + r, atol=1e-4)
        return bool(ok)
    except (AttributeError, RuntimeError, NotImplementedError):  # an op missing or unsupported in this build
        return False


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


@torch.no_grad()
def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, memory_format: torch.memory_format) -> nn.Conv2d:
    """A new conv computing ``bn(conv(x))`` of eval mode, ``(N, C_in, H, W) -> (N, C_out, H', W')``. The arithmetic
    is torch.nn.utils.fusion.fuse_conv_bn_weights's, op for op (the same bits), without fuse_conv_bn_eval's deep copy
    of the conv and its random init, and with the weight written once, straight into ``memory_format``."""
    w = conv.weight
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    var_rsqrt = torch.rsqrt(bn.running_var + bn.eps)
    scale = (gamma * var_rsqrt).reshape(-1, 1, 1, 1)
    weight = torch.mul(w, scale, out=torch.empty_like(w, memory_format=memory_format))
    bias = ((b - bn.running_mean) * var_rsqrt * gamma + beta).to(w.dtype if conv.bias is None else conv.bias.dtype)
    # built on the meta device: no memory and no random init for tensors replaced on the next line
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                      conv.groups, True, conv.padding_mode, device="meta")
    fused.weight, fused.bias = nn.Parameter(weight, False), nn.Parameter(bias, False)
    return fused


class FusedConvAct(nn.Module):
    """A :class:`~cspnet.models.cspnet.ConvNormAct` with its BatchNorm folded: conv (with bias) -> act.
    ``forward(x, residual=None)``: ``(N, C_in, H, W) -> (N, C_out, H', W')``; with ``residual`` (same shape as the
    output) it returns ``act(conv(x) + residual)``, the bottleneck's add-then-activate. Inference only."""

    def __init__(self, conv: nn.Conv2d, act: bool):
        super().__init__()
        self.conv = conv
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True) if act else nn.Identity()
        self.training = False

    @classmethod
    def from_conv_norm_act(cls, m: ConvNormAct, act: bool | None = None,
                           memory_format: torch.memory_format = torch.preserve_format) -> "FusedConvAct":
        """Fold ``m.bn`` (its running statistics) into a new conv, its weight in ``memory_format``; ``act``
        overrides whether LeakyReLU follows. ``m`` is not changed."""
        return cls(_folded_conv(m.conv, m.bn, memory_format), isinstance(m.act, nn.LeakyReLU) if act is None else act)

    def train(self, mode: bool = True) -> "FusedConvAct":
        if mode:
            raise InvalidOptionError(_TRAIN_REFUSED)
        return super().train(False)

    def _mkldnn(self, x: torch.Tensor) -> bool:
        # Only where the plain path would give the same numbers: CPU, no autograd (the op has no backward), no
        # autocast (it would change the dtype the plain conv runs in), input and weight of one float dtype; and not
        # under torch.compile, where inductor picks (and fuses) the kernels itself.
        return (not _compiling() and x.device.type == "cpu" and not torch.is_grad_enabled()
                and x.dtype == self.conv.weight.dtype and x.dtype in (torch.float32, torch.bfloat16)
                and not torch.is_autocast_enabled("cpu") and _mkldnn_fused_ok())

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        c, act = self.conv, isinstance(self.act, nn.LeakyReLU)
        if self._mkldnn(x):
            args = (c.weight, c.bias, list(c.padding), list(c.stride), list(c.dilation), c.groups)
            if residual is None:
                attr, scalars = ("leaky_relu", [LEAKY_SLOPE]) if act else ("none", [])
                return torch.ops.mkldnn._convolution_pointwise(x, *args, attr, scalars, "")
            # oneDNN's binary post-op takes only ReLU after the add, so LeakyReLU runs in place afterwards.
            y = torch.ops.mkldnn._convolution_pointwise.binary(x, residual, *args, "add", 1.0, None, [], "")
            return F.leaky_relu_(y, LEAKY_SLOPE) if act else y
        y = c(x)
        return self.act(y if residual is None else y.add_(residual))


class FusedDarkBlock(nn.Module):
    """:class:`~cspnet.models.cspnet.DarkBlock` folded: 1x1 (act) -> 3x3 (act) -> + x. ``(N, C, H, W)`` -> same."""

    def __init__(self, block: DarkBlock, memory_format: torch.memory_format = torch.preserve_format):
        super().__init__()
        self.conv1 = FusedConvAct.from_conv_norm_act(block.conv1, memory_format=memory_format)
        self.conv2 = FusedConvAct.from_conv_norm_act(block.conv2, memory_format=memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        # In place saves a full-size allocation; with autograd on, LeakyReLU's backward needs its output intact.
        return y + x if torch.is_grad_enabled() else y.add_(x)


class FusedBottleneckBlock(nn.Module):
    """:class:`~cspnet.models.cspnet.BottleneckBlock` folded; ``conv3`` carries the block's final activation
    (``act(conv3(h) + x)``). ``(N, C, H, W)`` -> same."""

    def __init__(self, block: BottleneckBlock, memory_format: torch.memory_format = torch.preserve_format):
        super().__init__()
        self.conv1 = FusedConvAct.from_conv_norm_act(block.conv1, memory_format=memory_format)
        self.conv2 = FusedConvAct.from_conv_norm_act(block.conv2, memory_format=memory_format)
        self.conv3 = FusedConvAct.from_conv_norm_act(block.conv3, act=True, memory_format=memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)), residual=x)


def _foldable(module: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """``(parent, name, child)`` for each block or conv-norm-act below ``module`` that folding replaces whole (it does
    not look inside them)."""
    for name, child in module.named_children():
        if isinstance(child, (DarkBlock, BottleneckBlock, ConvNormAct)):
            yield module, name, child
        else:
            yield from _foldable(child)


def _fold(m: DarkBlock | BottleneckBlock | ConvNormAct, memory_format: torch.memory_format) -> nn.Module:
    if isinstance(m, DarkBlock):
        return FusedDarkBlock(m, memory_format)
    if isinstance(m, BottleneckBlock):
        return FusedBottleneckBlock(m, memory_format)
    return FusedConvAct.from_conv_norm_act(m, memory_format=memory_format)


def fuse_bn(model: nn.Module, *, memory_format: torch.memory_format = torch.preserve_format) -> nn.Module:
    """A copy of ``model`` (an ``ImageClassifier``, a ``CSPNet`` backbone or any module built of cspnet blocks) with
    every BatchNorm folded into the convolution before it, in eval mode. ``model`` is not changed. The copy computes the
    same function as ``model.eval()`` up to float rounding, has the same attributes and methods (``forward``,
    ``extract_feat``, ``forward_features``, ...), and is for inference only: no parameter requires grad (gradients with
    respect to the input still flow, e.g. for Grad-CAM) and ``copy.train()`` raises
    :class:`~cspnet.errors.InvalidOptionError`. Drop-path, an identity in eval mode, is dropped. ``memory_format``: of
    the folded conv weights (``torch.channels_last`` for an NHWC copy, written once instead of converted after)."""
    if not any(isinstance(m, ConvNormAct) for m in model.modules()):
        raise InvalidOptionError(f"fuse_bn: {type(model).__name__} has no cspnet conv/BatchNorm layers to fold")
    # What folding replaces is not copied (the memo hands the copy the originals, which the fold reads and never
    # changes): a deep copy of every weight took longer than the folding itself.
    memo: dict[int, Any] = {id(child): child for _, _, child in _foldable(model)}
    fused = copy.deepcopy(model, memo)
    for parent, name, child in list(_foldable(fused)):
        setattr(parent, name, _fold(child, memory_format))
    return fused.eval().requires_grad_(False)  # only now: before, the originals were still in the copy
