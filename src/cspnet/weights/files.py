"""Weight files, read and written safely: safetensors, or ``torch.load(weights_only=True)``.

A pickle that would import or call anything beyond tensors and plain containers is refused before any of its code
runs. Training checkpoints (a run's whole state), mmpretrain's ``{'state_dict', 'meta'}`` and timm's flat files are
unwrapped here, in one place, into the weights they hold and what they say about their model.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .._io import atomic_write
from ..errors import CheckpointError
from ..spec import ModelSpec

# Containers in which training scripts nest the weights, most specific first. EMA weights are preferred, as timm's
# validate.py --use-ema and mmpretrain's EMA hook do for evaluation, when asked or when the run chose its best
# epoch by them (see read_weights).
_WRAPPERS = ("state_dict", "model", "module", "net")
_EMA_WRAPPERS = ("ema", "state_dict_ema", "model_ema", "ema_state_dict")
# Prefixes added by DataParallel/DDP and torch.compile.
_PREFIXES = ("module.", "_orig_mod.")


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {str(path)!r}: it is a pickle that needs more than tensors and plain containers "
            f"({str(e).splitlines()[0][:300]}). Loading it could run code. If you trust its origin, re-save only "
            f"its tensors elsewhere (torch.save(state_dict) or safetensors) and load that file."
        ) from None


def read_file(path: str | os.PathLike) -> tuple[Any, dict]:
    """Read a ``.safetensors`` or torch file. Returns ``(object, metadata)`` (metadata: safetensors header dict).

    Raises:
        CheckpointError: naming the file, if it is missing, truncated, corrupt, or an unsafe pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors" or (not zipfile.is_zipfile(path) and _looks_safetensors(path)):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        return _torch_load(path), {}
    except CheckpointError:
        raise
    except Exception as e:  # zip/pickle/safetensors parse errors of a truncated or corrupt file
        raise CheckpointError(
            f"checkpoint {str(path)!r} ({path.stat().st_size} bytes) is truncated or corrupt: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}. Delete it and download or copy it again."
        ) from None


def _looks_safetensors(path: Path) -> bool:
    """safetensors files start with a little-endian u64 header length followed by a JSON object."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return 0 < n < 100_000_000 and f.read(1) == b"{"


def extract_state_dict(obj: Any, source: str = "checkpoint", prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a loaded checkpoint and strip ``module.``/``_orig_mod.`` prefixes."""
    if prefer_ema and isinstance(obj, Mapping):
        obj = next((obj[k] for k in _EMA_WRAPPERS if isinstance(obj.get(k), Mapping)), obj)
    while isinstance(obj, Mapping) and not (obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(
                f"{source}: found no state dict (tensors under 'state_dict', 'model' or at the top level); "
                f"top-level keys: {list(obj)[:8]}"
            )
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: holds no tensors")
    out = {}
    for k, v in obj.items():
        for p in _PREFIXES:
            while k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


@dataclass(frozen=True)
class WeightsFile:
    """One weights file, read: its state dict (in the file's layout) and what the file says about its model. ``spec``:
    the :class:`~cspnet.models.ModelSpec` cspnet recorded (None for other files); ``classes``: class names from an
    mmpretrain ``meta`` (when there is no spec); ``ema``: whether the EMA weights were taken."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    spec: ModelSpec | None
    classes: tuple[str, ...] | None
    ema: bool


def read_weights(path: str | os.PathLike, use_ema: bool | None = None) -> WeightsFile:
    """Read any weights file. ``use_ema``: True takes the EMA weights (an error if there are none); None takes them
    when the file's training run selected its best epoch by the EMA's accuracy; False never."""
    obj, header = read_file(path)
    source = f"checkpoint {str(path)!r}"
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    has_ema = isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in _EMA_WRAPPERS)
    if use_ema and not has_ema:
        raise CheckpointError(f"{source} holds no EMA weights (keys {list(obj)[:8] if isinstance(obj, Mapping) else []}); "
                              f"drop use_ema / --ema to load its weights")
    if use_ema is None:
        best = obj.get("best") if has_ema else None
        use_ema = isinstance(best, Mapping) and best.get("metric") == "ema_top1"
    sd = extract_state_dict(obj, source=source, prefer_ema=bool(use_ema))
    try:
        spec_meta = json.loads(header["spec"]) if "spec" in header else meta.get("spec")
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{source}: its 'spec' metadata is not JSON ({e})") from None
    spec = ModelSpec.from_meta(spec_meta, source) if spec_meta is not None else None
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    classes = dataset_meta.get("classes") or meta.get("CLASSES")  # mmpretrain 1.x / mmcls 0.x
    if classes is not None and not (isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{source}: meta.dataset_meta.classes must be a list of class names, got {classes!r:.80}")
    return WeightsFile(Path(path), sd, spec, tuple(classes) if classes else None, bool(use_ema))


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, layout: str,
                    spec: ModelSpec | None = None) -> Path:
    """Write a state dict atomically: ``.safetensors`` (the spec as JSON metadata) or a torch file. A torch file is
    saved flat (as timm's) when there is no spec; else as ``{'state_dict': ..., 'meta': {'spec': ...}}``, which timm and
    mmpretrain both read (mmpretrain's layout always has this shape, with ``meta.dataset_meta.classes`` as mmpretrain's
    published checkpoints)."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        header = {"format": "pt", "layout": layout, **({"spec": json.dumps(spec.to_meta())} if spec else {})}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    meta: dict[str, Any] = {"spec": spec.to_meta()} if spec else {}
    if layout == "mmpretrain" and spec is not None and spec.classes is not None:
        meta["dataset_meta"] = {"classes": list(spec.classes)}
    obj: Any = {"state_dict": tensors, "meta": meta} if meta or layout == "mmpretrain" else tensors
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
