"""Reading and writing checkpoint files safely: safetensors, or ``torch.load(weights_only=True)``.

A pickle that would import or call anything beyond tensors and plain containers is refused before any of its code
runs. Training checkpoints, mmpretrain's ``{'state_dict', 'meta'}`` and timm's flat files are unwrapped here, in
one place.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .._io import atomic_write
from ..errors import CheckpointError

# Containers in which training scripts nest the weights, most specific first. EMA weights are preferred, as timm's
# validate.py --use-ema and mmpretrain's EMA hook do for evaluation, only when asked (see read_state_dict).
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


def read_checkpoint(path: str | os.PathLike) -> tuple[Any, dict]:
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

            tensors = {}
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                for k in f.keys():
                    tensors[k] = f.get_tensor(k)
            return tensors, dict(meta)
        return _torch_load(path), {}
    except CheckpointError:
        raise
    except Exception as e:  # zip/pickle/safetensors parse errors of a truncated or corrupt file
        size = path.stat().st_size
        raise CheckpointError(
            f"checkpoint {str(path)!r} ({size} bytes) is truncated or corrupt: {type(e).__name__}: "
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
        for key in _EMA_WRAPPERS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            raise CheckpointError(
                f"{source}: found no state dict (tensors under 'state_dict', 'model' or at the top level); "
                f"top-level keys: {list(obj)[:8]}"
            )
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: holds no tensors")
    out = {}
    for k, v in obj.items():
        for p in _PREFIXES:
            while k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


def _is_tensor_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(path: str | os.PathLike, prefer_ema: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, meta)`` from any checkpoint file; ``meta`` holds e.g. ``classes`` when the file has them."""
    obj, meta = read_checkpoint(path)
    sd = extract_state_dict(obj, source=f"checkpoint {str(path)!r}", prefer_ema=prefer_ema)
    info: dict = {}
    if "classes" in meta:  # our safetensors metadata stores JSON strings
        info["classes"] = json.loads(meta["classes"])
    if isinstance(obj, Mapping) and isinstance(obj.get("meta"), Mapping):  # mmpretrain 1.x / mmcls 0.x
        m = obj["meta"]
        classes = (m.get("dataset_meta") or {}).get("classes") if isinstance(m.get("dataset_meta"), Mapping) else None
        classes = classes or m.get("CLASSES")
        if classes:
            info["classes"] = list(classes)
    return sd, info


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, layout: str, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write a state dict atomically: ``.safetensors`` (flat, metadata as JSON strings) or a torch file.

    A torch file in the mmpretrain layout is wrapped as ``{'state_dict': ..., 'meta': {...}}`` like mmpretrain's
    published checkpoints; the others are saved flat, like timm's.
    """
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = dict(metadata or {})
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        header = {"format": "pt", "layout": layout, **{k: json.dumps(v) for k, v in meta.items()}}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    if layout == "mmpretrain":
        mm_meta = {"dataset_meta": {"classes": list(meta["classes"])}} if meta.get("classes") else {}
        obj: Any = {"state_dict": tensors, "meta": mm_meta}
    else:
        obj = tensors
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
