"""Training checkpoints: everything needed to continue a run exactly, as plain data.

A checkpoint is a dict of tensors, numbers, strings, lists, tuples and dicts only, so it loads with
``torch.load(weights_only=True)`` (and :func:`cspnet.get_model` reads its ``model`` or, with ``use_ema``, its
``ema`` weights). Keys: ``model``, ``optimizer``, ``scaler``, ``ema`` (state dicts or None), ``ema_steps``,
``epoch`` (epochs completed), ``iter`` (iterations done in the next epoch, non-zero only when interrupted
mid-epoch), ``step`` (optimizer steps so far), ``rng`` (every rank's RNG states), ``seed``, ``best``
(``{'top1', 'epoch', 'metric'}``), ``meta`` (``spec``: the :class:`~cspnet.models.ModelSpec` of the model,
``dataset_meta.classes`` as mmpretrain, ``cspnet_version``) and ``config`` (the resolved config file's text, as
mmengine keeps it). ``optimizer`` and ``scaler`` are None with ``save_optimizer=False``: weights, not resumable.

Files in the work dir: ``epoch_N.pth`` after each epoch, ``iter_S.pth`` when interrupted, ``best.pth`` (a copy of
the best epoch by validation top-1) and ``last_checkpoint``, a text file naming the newest one, as mmengine.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .._io import atomic_write
from ..errors import CheckpointError
from ..spec import ModelSpec
from ..weights.files import read_file

LAST = "last_checkpoint"
_REQUIRED = ("model", "optimizer", "epoch", "step", "meta")


def rng_state() -> dict:
    """Every RNG a training step can touch: torch (CPU and each CUDA device), NumPy and Python's ``random``."""
    mt, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` atomically (a reader sees the previous file or the whole new one) and point
    ``last_checkpoint`` at it."""
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))
    atomic_write(path.parent / LAST, lambda tmp: tmp.write_text(path.name + "\n"))
    return path


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Atomic copy (``best.pth``)."""
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def find_latest(work_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``last_checkpoint`` names, else the newest ``epoch_*.pth``/``iter_*.pth``; None if none."""
    work_dir = Path(work_dir)
    last = work_dir / LAST
    if last.is_file():
        p = work_dir / last.read_text().strip()
        if p.is_file():
            return p
    found = [p for p in work_dir.glob("*.pth") if re.fullmatch(r"(epoch|iter)_\d+\.pth", p.name)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a training checkpoint written by :func:`save_checkpoint` (``weights_only``; never runs code).

    Raises:
        CheckpointError: the file is missing, corrupt, unsafe, or holds only weights (use ``load_from`` for
            fine-tuning from weights).
    """
    ckpt, _ = read_file(path)
    missing = [k for k in _REQUIRED if not isinstance(ckpt, Mapping) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{str(path)!r} is not a cspnet training checkpoint (missing {missing}); to start from "
                              f"its weights, set load_from={str(path)!r} instead of --resume")
    return dict(ckpt)


def check_resumable(checkpoint: Mapping, spec: ModelSpec, path: str | os.PathLike) -> None:
    """Refuse a checkpoint of another architecture or class count, or without optimizer state, before any build."""
    meta = checkpoint["meta"]
    held = ModelSpec.from_meta(meta.get("spec"), f"checkpoint {str(path)!r}") if isinstance(meta, Mapping) else None
    if held is None or (held.arch, held.num_classes) != (spec.arch, spec.num_classes):
        raise CheckpointError(f"cannot resume from {str(path)!r}: it was trained as {held.arch if held else '?'} with "
                              f"{held.num_classes if held else '?'} classes, but the config builds {spec.arch} with "
                              f"{spec.num_classes} classes. Resume with the config it was trained with, or start a "
                              f"new run (set load_from to fine-tune from its weights)")
    if checkpoint["optimizer"] is None:
        raise CheckpointError(f"cannot resume from {str(path)!r}: it was saved without its optimizer state "
                              f"(default_hooks.checkpoint.save_optimizer=False); fine-tune from it with load_from")


def load_model_state(model: torch.nn.Module, checkpoint: Mapping, path: str | os.PathLike) -> None:
    """Load the checkpoint's ``model`` weights strictly; ones that do not fit are an error naming the first keys."""
    own = model.state_dict()
    bad = [k for k, v in checkpoint["model"].items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    bad += [k for k in own if k not in checkpoint["model"]]
    if bad:
        raise CheckpointError(f"cannot resume from {str(path)!r}: its weights do not fit the model ({bad[:5]})")
    model.load_state_dict(checkpoint["model"])
