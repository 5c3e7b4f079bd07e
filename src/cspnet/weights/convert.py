"""Pure, strict state-dict converters between the three layouts of the same weights.

* ``cspnet``: this library's classifier: ``backbone.<timm name>`` and ``head.fc.*``.
* ``timm``: timm's ``CspNet``: ``stem.conv1.*``, ``stages.*``, ``head.fc.*`` (the Hub's ``model.safetensors``).
* ``mmpretrain``: mmpretrain's ``ImageClassifier``: ``backbone.stem[.0]``, ``downsample_conv``, ``expand_conv``,
  ``atfer_blocks_conv`` (sic), ``final_conv``, ResNet blocks as ``convN`` + ``bnN``, ``head.fc.*``.

Every function takes and returns ``dict[str, Tensor]`` without touching the tensors, and checks the complete key set
and every shape against the architecture: a mismatch raises :class:`~cspnet.errors.CheckpointError` listing the
missing, unexpected and mis-shaped keys. The head may be absent (a backbone-only checkpoint) or have any number of
classes. The order of keys follows the model's own order in every layout.
"""

from __future__ import annotations

import functools
from typing import Mapping

import torch

from ..errors import CheckpointError
from ..models.cspnet import ARCHS, CSPArch, get_arch, param_shapes

LAYOUTS = ("cspnet", "timm", "mmpretrain")
HEAD_KEYS = ("head.fc.weight", "head.fc.bias")
# Buffers that hold no weights: a checkpoint may omit them (filled with 0); they never change an output.
OPTIONAL_SUFFIX = "num_batches_tracked"

# mmpretrain's stage module names for timm's.
_MM_STAGE_NAMES = {
    "conv_down": "downsample_conv",
    "conv_exp": "expand_conv",
    "conv_transition_b": "atfer_blocks_conv",  # the typo is in every published mmpretrain checkpoint
    "conv_transition": "final_conv",
}
# mmpretrain builds its ResNet/ResNeXt bottlenecks from plain nn.Conv2d plus bn1/bn2/bn3 (``convN.weight``,
# ``bnN.*``); its darknet blocks are ConvModules (``convN.conv.weight``, ``convN.bn.*``), as timm's.
_MM_FLAT_BLOCKS = {"bottle": True, "dark": False}


@functools.lru_cache(maxsize=None)
def backbone_spec(arch: CSPArch) -> dict[str, tuple[int, ...]]:
    """``{cspnet key: shape}`` of the backbone in model order (from the architecture table: no module is built)."""
    return {f"backbone.{k}": shape for k, shape in param_shapes(arch).items()}


def _to_mmpretrain_key(key: str, arch: CSPArch) -> str:
    if key in HEAD_KEYS:
        return key
    parts = key.split(".")[1:]  # drop "backbone"
    if parts[0] == "stem":  # stem.conv1.* -> stem.0.* (ResNet stem is a Sequential with the pool) or stem.*
        parts = ["stem", "0", *parts[2:]] if arch.stem_pool else ["stem", *parts[2:]]
    else:
        parts[2] = _MM_STAGE_NAMES.get(parts[2], parts[2])
        if parts[2] == "blocks" and _MM_FLAT_BLOCKS[arch.block]:  # blocks.j.convN.{conv,bn}.x
            n = parts[4][-1]
            parts = parts[:4] + ([f"conv{n}", *parts[6:]] if parts[5] == "conv" else [f"bn{n}", *parts[6:]])
    return "backbone." + ".".join(parts)


@functools.lru_cache(maxsize=None)
def key_map(arch: CSPArch, layout: str) -> dict[str, str]:
    """``{cspnet key: key in layout}`` for every backbone and head key of ``arch``."""
    if layout not in LAYOUTS:
        raise CheckpointError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    keys = [*backbone_spec(arch), *HEAD_KEYS]
    if layout == "cspnet":
        return {k: k for k in keys}
    if layout == "timm":
        return {k: k.removeprefix("backbone.") for k in keys}
    return {k: _to_mmpretrain_key(k, arch) for k in keys}


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Tell a cspnet, timm or mmpretrain state dict apart by its key names."""
    keys = list(state_dict)
    if any(k.startswith("backbone.") and ".conv_exp." in k for k in keys):
        return "cspnet"
    if any(k.startswith("backbone.") and ".expand_conv." in k for k in keys):
        return "mmpretrain"
    if any(k.startswith("stages.") and ".conv_exp." in k for k in keys):
        return "timm"
    sample = ", ".join(keys[:3]) or "no keys"
    raise CheckpointError(f"not a CSPNet state dict in any known layout (cspnet, timm, mmpretrain); its first keys "
                          f"are: {sample}")


def _head_shapes(sd: Mapping[str, torch.Tensor], num_features: int) -> dict[str, tuple[int, ...]]:
    w = sd.get("head.fc.weight")
    return {} if w is None else {"head.fc.weight": (w.shape[0], num_features), "head.fc.bias": (w.shape[0],)}


def _mismatch_report(missing: list, unexpected: list, bad_shapes: list, limit: int = 12) -> str:
    def show(what: str, items: list) -> str:
        more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
        return f"{what} {len(items)}: {', '.join(items[:limit])}{more}"

    groups = (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad_shapes))
    return "; ".join(show(what, items) for what, items in groups if items)


def guess_arch(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the architecture whose keys and shapes a state dict (any layout) matches exactly, if any."""
    try:
        layout = detect_layout(state_dict)
    except CheckpointError:
        return None
    for name, arch in ARCHS.items():
        try:
            to_cspnet(state_dict, arch, layout)
            return name
        except CheckpointError:
            pass
    return None


def to_cspnet(state_dict: Mapping[str, torch.Tensor], arch: CSPArch | str, layout: str | None = None) -> dict:
    """Convert a state dict of ``arch`` from ``layout`` (detected if None) to the cspnet layout, strictly. The head is
    optional and may have any number of classes; ``num_batches_tracked`` buffers may be missing."""
    arch = get_arch(arch) if isinstance(arch, str) else arch
    layout = layout or detect_layout(state_dict)
    inverse = {v: k for k, v in key_map(arch, layout).items()}
    out = {inverse[k]: v for k, v in state_dict.items() if k in inverse}
    unexpected = [k for k in state_dict if k not in inverse]
    expected = {**backbone_spec(arch), **_head_shapes(out, arch.channels[-1])}
    missing = [k for k in expected if k not in out and not k.endswith(OPTIONAL_SUFFIX)]
    if "head.fc.bias" in out and "head.fc.weight" not in out:
        missing.append("head.fc.weight")
    bad = [f"{k} {tuple(out[k].shape)} (expected {s})" for k, s in expected.items() if k in out and tuple(out[k].shape) != s]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"state dict ({layout} layout) does not fit {arch.name}: {_mismatch_report(missing, unexpected, bad)}"
        )
    # model order, filling omitted counters
    return {k: out[k] if k in out else torch.tensor(0, dtype=torch.long) for k in expected}


def from_cspnet(state_dict: Mapping[str, torch.Tensor], arch: CSPArch | str, layout: str) -> dict:
    """Convert a cspnet-layout state dict of ``arch`` to ``layout`` (strict, same checks as :func:`to_cspnet`)."""
    arch = get_arch(arch) if isinstance(arch, str) else arch
    checked = to_cspnet(state_dict, arch, "cspnet")
    names = key_map(arch, layout)
    return {names[k]: v for k, v in checked.items()}


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], arch: CSPArch | str, to: str,
                       src: str | None = None) -> dict:
    """Convert between any two layouts: ``src`` (detected if None) -> ``to``."""
    return from_cspnet(to_cspnet(state_dict, arch, src), arch, to)
