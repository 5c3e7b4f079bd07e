"""Training checkpoints: everything needed to continue a run exactly, as plain data.

A checkpoint is a dict of tensors, numbers, strings, lists, tuples and dicts only, so it loads with
``torch.load(weights_only=True)`` (and :func:`cspnet.get_model` reads its ``model`` or, with ``use_ema``, its
``ema`` weights). Keys: ``model``, ``optimizer``, ``scaler``, ``ema`` (state dicts or None), ``ema_steps``,
``epoch`` (epochs completed), ``iter`` (iterations done in the next epoch, non-zero only when interrupted
mid-epoch), ``step`` (optimizer steps so far), ``rng`` (every rank's RNG states), ``seed``, ``best``
(``{'top1', 'epoch', 'metric'}``), ``meta`` (``spec``: the :class:`~cspnet.models.ModelSpec` of the model,
``dataset_meta.classes`` as mmpretrain, ``cspnet_version``), ``run`` (what an exact resume must keep: batch size,
processes, accumulation, epochs and schedule) and ``config`` (the resolved config file's text, as mmengine keeps it).
``optimizer`` and ``scaler`` are None with ``save_optimizer=False``: weights, not resumable.

Each run has its own folder in the work dir, ``<work_dir>/<YYYYmmdd_HHMMSS>/`` (as mmengine's log folders), so two
runs never touch each other's files: ``epoch_N.pth`` after each epoch, ``iter_S.pth`` when interrupted, ``best.pth``
(a copy of the best epoch by validation top-1), a ``.safetensors`` beside each (the weights every command uses, with
the model's spec), ``last_checkpoint`` naming the newest ``.pth`` (as mmengine), and ``run.lock`` while it is live.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .._io import atomic_write
from ..config import TrainSpec
from ..errors import CheckpointError, TrainingError
from ..spec import ModelSpec
from ..weights.files import read_file
from ..workdirs import LAST

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
    ``last_checkpoint`` at it.

    Raises:
        TrainingError: the disk is full (or over quota, read-only...): nothing of this checkpoint is left, and the
            message names the previous one, which is intact, to resume from.
    """
    path = Path(path)
    previous = path.parent / LAST
    previous = path.parent / previous.read_text().strip() if previous.is_file() else None
    try:
        atomic_write(path, lambda tmp: torch.save(dict(state), tmp), what="checkpoint", error=TrainingError)
        atomic_write(path.parent / LAST, lambda tmp: tmp.write_text(path.name + "\n"), what="checkpoint pointer",
                     error=TrainingError)
    except TrainingError as e:
        keep = (f"The previous checkpoint {str(previous)!r} is intact: continue from it with --resume {previous}"
                if previous is not None and previous.is_file() else "This run has no earlier checkpoint")
        raise TrainingError(f"{e}. {keep}") from None
    return path


def copy_checkpoint(src: Path, dst: Path) -> None:
    """``dst`` as another name of ``src`` (``best.pth``), atomically: a hard link, which takes no space (a full
    checkpoint is hundreds of MB) and keeps the file when ``src`` is pruned; every write replaces a file by renaming,
    so the two never change together. A copy where the file system has no hard links."""
    tmp = dst.with_name(f".{dst.name}.link")  # one writer per run folder (its lock): a fixed name is safe
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write(dst, lambda t: shutil.copyfile(src, t))


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


def run_record(spec: TrainSpec, world_size: int) -> dict:
    """What a resumed run must share with the run it continues (``checkpoint['run']``): the batch split and the
    schedule fix which images each step sees and its learning rate."""
    return {"batch_size": spec.train_loader.batch_size, "world_size": world_size,
            "accumulate": spec.optim.accumulate, "max_epochs": spec.max_epochs,
            "schedule": [dataclasses.asdict(s) for s in spec.schedule]}


def check_resumable(checkpoint: Mapping, spec: TrainSpec, path: str | os.PathLike, world_size: int,
                    classes: tuple[str, ...]) -> None:
    """Refuse, before anything is built or written, a checkpoint that this run cannot continue exactly: another
    architecture, head or class names (``classes``: the training set's), no optimizer state, or another batch split,
    epoch count or schedule."""
    meta, name = checkpoint["meta"], str(path)
    held = ModelSpec.from_meta(meta.get("spec"), f"checkpoint {name!r}") if isinstance(meta, Mapping) else None
    if held is None or (held.arch, held.num_classes) != (spec.model.arch, spec.model.num_classes):
        raise CheckpointError(f"cannot resume from {name!r}: it was trained as {held.arch if held else '?'} with "
                              f"{held.num_classes if held else '?'} classes, but the config builds {spec.model.arch} "
                              f"with {spec.model.num_classes} classes. Resume with the config it was trained with, or "
                              f"start a new run (set load_from to fine-tune from its weights)")
    if held.classes is not None and tuple(held.classes) != tuple(classes):
        raise CheckpointError(f"cannot resume from {name!r}: it was trained on classes {list(held.classes)[:10]} but "
                              f"the training set now has {list(classes)[:10]}; the labels would change meaning. "
                              f"Resume on the same data, or start a new run with load_from={name!r}")
    if checkpoint["optimizer"] is None:
        raise CheckpointError(f"cannot resume from {name!r}: it was saved without its optimizer state "
                              f"(default_hooks.checkpoint.save_optimizer=False); fine-tune from it with load_from")
    was, now = checkpoint.get("run"), run_record(spec, world_size)
    changed = [k for k in now if isinstance(was, Mapping) and k in was and was[k] != now[k]]
    if changed:
        what = "; ".join(f"{k}: {was[k]} then, {now[k]} now" for k in changed if k != "schedule")
        raise CheckpointError(f"cannot resume from {name!r} exactly: {what or 'param_scheduler changed'}"
                              f"{' (and param_scheduler)' if what and 'schedule' in changed else ''}. Resume with the "
                              f"settings of that run (batch size x processes x accumulative_counts, max_epochs, "
                              f"param_scheduler), or start a new run from its weights with load_from={name!r}")


def load_model_state(model: torch.nn.Module, checkpoint: Mapping, path: str | os.PathLike) -> None:
    """Load the checkpoint's ``model`` weights strictly; ones that do not fit are an error naming the first keys."""
    own = model.state_dict()
    bad = [k for k, v in checkpoint["model"].items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    bad += [k for k in own if k not in checkpoint["model"]]
    if bad:
        raise CheckpointError(f"cannot resume from {str(path)!r}: its weights do not fit the model ({bad[:5]})")
    model.load_state_dict(checkpoint["model"])
