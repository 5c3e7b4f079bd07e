"""Training and fine-tuning from a :class:`~cspnet.config.TrainSpec` in a plain PyTorch loop (one process, or DDP
under torchrun): :func:`fit` builds the run (:func:`setup_run`), then alternates :func:`train_one_epoch` and
:func:`validate`, writing a checkpoint after each epoch (:mod:`cspnet.engine.checkpoint`). Resuming is exact: the
data order comes from a sampler seeded by ``(seed, epoch)``, each image's augmentation from a generator seeded by
``(seed, epoch, index)``, the learning rate is a function of the global step, and the checkpoint holds every RNG
state; a run interrupted mid-epoch continues at the next batch. Faults (README, "Faults"): a non-finite loss stops
the run before the optimizer step; SIGTERM/SIGINT write ``iter_<step>.pth`` at the next step boundary, then exit
with 128 + the signal number; every DDP rank agrees on both through one small all-reduce per step."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .. import weights, workdirs
from .._io import atomic_write
from .._version import __version__
from ..config import LossSpec, TrainSpec
from ..data.loader import worker_count
from ..data.train_transforms import TrainSampler, TrainSet, TrainTransform
from ..data.transforms import EvalTransform
from ..errors import CheckpointError, ConfigError, CSPNetError, TrainingError
from ..models import ImageClassifier
from ..plotting import plot_runs
from ..spec import ModelSpec
from ..weights.files import save_state_dict
from . import checkpoint as ckpt_lib
from .distributed import (DistInfo, all_gather_object, broadcast_object, destroy_distributed, init_distributed,
                          is_distributed, rank0_first, setup_logging)
from .evaluate import eval_loader, evaluate
from .optim import LRSchedule, ModelEma, build_optimizer

log = logging.getLogger("cspnet")
_MIX_STREAM = 1  # keeps the batch-mixing generators apart from the per-sample ones (seeded (seed, epoch, index))


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag that the loop reads at step boundaries; a second signal exits at once."""

    def __init__(self):
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum:
            raise SystemExit(128 + signum)
        self.signum = signum
        log.warning("received %s: writing a checkpoint at the end of this step (send it again to exit now)",
                    signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Interrupted(Exception):
    """Raised after the interrupt checkpoint is written; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int, path: Path | None):
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint: {path}")
        self.exit_code, self.path = 128 + signum, path


@dataclass
class TrainRun:
    """Everything the loop touches. ``model`` is the plain module (what is saved); ``net`` is what is called in
    training (``model`` or its DDP wrapper); ``model_spec`` is what checkpoints record (with the train set's class
    names); ``amp`` the autocast dtype (None: fp32)."""

    spec: TrainSpec
    dist: DistInfo
    work_dir: Path
    model: ImageClassifier
    net: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    sampler: TrainSampler
    train_loader: DataLoader
    val_loader: DataLoader | None
    eval_transform: EvalTransform
    seed: int
    model_spec: ModelSpec
    stop: StopRequest
    amp: torch.dtype | None
    board: Any = None  # a torch.utils.tensorboard SummaryWriter (vis_backends), on rank 0
    step: int = 0
    best: dict = field(default_factory=lambda: {"top1": None, "epoch": None})
    t_start: float = 0.0
    iters_this_run: int = 0


def _sync_flags(run: TrainRun, loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
    """Mean loss over ranks and whether any rank was asked to stop. One small all-reduce: it is also the step's
    CPU-GPU sync point, which the NaN check needs anyway."""
    flags = torch.stack([loss.detach().float(), torch.tensor(float(stop), device=loss.device)])
    if run.dist.world_size > 1:
        torch.distributed.all_reduce(flags)
    loss_sum, stops = flags.tolist()
    return loss_sum / run.dist.world_size, stops > 0


@dataclass
class _Window:
    """What the log line after ``n`` steps averages: loss, images, data-loading time, and with ``model.head.cal_acc``
    the training top-k hits (this process's images)."""

    start: float = field(default_factory=time.perf_counter)
    loss: float = 0.0
    n: int = 0
    images: int = 0
    data_time: float = 0.0
    hits: dict[int, torch.Tensor] = field(default_factory=dict)
    seen: int = 0


def _eta(run: TrainRun, epoch: int, i: int, iters: int) -> tuple[float, str]:
    """The run's time left after iteration ``i``, from its mean step time so far: seconds, and as h:mm:ss."""
    left = (run.spec.max_epochs - epoch - 1) * iters + (iters - i - 1)
    eta = (time.perf_counter() - run.t_start) / max(1, run.iters_this_run) * left
    return eta, f"{int(eta) // 3600}:{int(eta) // 60 % 60:02d}:{int(eta) % 60:02d}"


def _log_train(run: TrainRun, epoch: int, i: int, iters: int, lr: float, window: _Window) -> None:
    eta, eta_hms = _eta(run, epoch, i, iters)
    loss, img_s = window.loss / window.n, window.images / max(time.perf_counter() - window.start, 1e-9)
    acc = {f"acc/top{k}": round(100 * float(h) / window.seen, 4) for k, h in window.hits.items()}
    log.info("Epoch(train) [%d][%*d/%d]  lr: %.4e  eta: %s  loss: %.4f%s  img/s: %.1f  data_time: %.3f", epoch + 1,
             len(str(iters)), i + 1, iters, lr, eta_hms, loss, "".join(f"  {k}: {v:.2f}" for k, v in acc.items()),
             img_s, window.data_time / window.n)
    _append_jsonl(run, {"mode": "train", "epoch": epoch + 1, "iter": i + 1, "iters": iters, "step": run.step,
                        "lr": lr, "loss": loss, **acc, "img_s": round(img_s, 2),
                        "data_time": round(window.data_time / window.n, 4), "eta_s": round(eta)})


def _append_jsonl(run: TrainRun, record: dict) -> None:
    """One line of ``log.jsonl`` (and, with TensorBoard, its numbers as scalars ``<mode>/<key>`` at its step)."""
    if run.dist.is_main:
        with open(run.work_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")
        if run.board is not None:
            for key, value in record.items():
                if key not in ("mode", "step", "epoch", "iter", "iters") and isinstance(value, (int, float)):
                    run.board.add_scalar(f"{record['mode']}/{key}", value, record["step"])
            run.board.flush()


def _loss(criterion: LossSpec, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``model.head.loss``: logits ``(N, C)`` (float32 for the softmax, whatever autocast gave); targets: labels
    ``(N,)``, or Mixup/CutMix's soft targets ``(N, C)``, which torch smooths as mmpretrain's LabelSmoothLoss does
    (``t * (1 - eps) + eps / C``). The config refuses ``class_weight`` with mixing."""
    weight = torch.tensor(criterion.class_weight, device=logits.device) if criterion.class_weight else None
    return criterion.weight * F.cross_entropy(logits.float(), targets, weight=weight, reduction=criterion.reduction,
                                              label_smoothing=criterion.label_smooth)


def train_one_epoch(run: TrainRun, epoch: int, start_iter: int = 0) -> bool:
    """Train ``epoch`` (0-based) from micro-batch ``start_iter``; returns whether a stop was requested (on any rank)
    during the epoch's last step. Raises :class:`Interrupted` after writing ``iter_<step>.pth`` on a stop request
    mid-epoch, and :class:`TrainingError` on a non-finite loss."""
    accumulate, topk = run.spec.optim.accumulate, run.spec.loss.topk
    run.sampler.set_epoch(epoch, skip=start_iter * run.train_loader.batch_size)
    iters = start_iter + len(run.train_loader)
    run.net.train()
    window, data_start, stop = _Window(), time.perf_counter(), False
    # a bar on a terminal (rank 0); the log lines go above it, and on to train.log as ever
    bar = tqdm(total=iters, initial=start_iter, desc=f"epoch {epoch + 1}/{run.spec.max_epochs}", unit="step",
               leave=False, dynamic_ncols=True, disable=None if run.dist.is_main else True)
    with bar, logging_redirect_tqdm([log]) if not bar.disable else contextlib.nullcontext():
        for i, (images, labels) in enumerate(run.train_loader, start=start_iter):
            window.data_time += time.perf_counter() - data_start
            last = (i + 1) % accumulate == 0 or i + 1 == iters
            if i % accumulate == 0:
                lr = run.schedule.apply(run.optimizer, run.step)
            labels = labels.to(run.dist.device, non_blocking=True)
            loss, logits, stop = _train_step(run, images, labels, last, epoch, i)
            window.loss, window.n = window.loss + loss, window.n + 1
            window.images += images.shape[0] * run.dist.world_size
            if topk:
                ranked = logits.detach().topk(min(max(topk), logits.shape[1]), dim=1).indices == labels[:, None]
                for k in topk:
                    window.hits[k] = window.hits.get(k, 0) + ranked[:, :k].any(1).sum()
                window.seen += labels.shape[0]
            run.iters_this_run += 1
            bar.update()
            if not bar.disable:
                img_s = images.shape[0] * run.dist.world_size * (bar.format_dict["rate"] or 0)  # steps/s -> images/s
                left = _eta(run, epoch, i, iters)[1]
                bar.set_postfix_str(f"loss {loss:.4f}  lr {lr:.3e}  {img_s:.1f} img/s  {left} left", refresh=False)
            if (i + 1) % run.spec.runtime.log_interval == 0 or i + 1 == iters:
                _log_train(run, epoch, i, iters, lr, window)
                window = _Window()
            if stop and last and i + 1 < iters:
                path = _save(run, epoch, i + 1, f"iter_{run.step}.pth")
                raise Interrupted(run.stop.signum or signal.SIGTERM, path)
            data_start = time.perf_counter()
    return stop


def _train_step(run: TrainRun, images: torch.Tensor, labels: torch.Tensor, step_end: bool, epoch: int,
                i: int) -> tuple[float, torch.Tensor, bool]:
    """Forward and backward of micro-batch ``i``, and the optimizer step when it ends a step: uint8 images
    ``(N, 3, H, W)`` and labels ``(N,)`` (on the device) -> (the loss averaged over ranks, logits ``(N, C)``, whether
    any rank was asked to stop)."""
    x = run.eval_transform.normalize(images.to(run.dist.device, non_blocking=True))
    targets = labels
    if run.spec.mix is not None:  # soft targets; drawn from this micro-batch's own generator, so resuming is exact
        rng = np.random.default_rng((run.seed, epoch, i, run.dist.rank, _MIX_STREAM))
        x, targets = run.spec.mix(x, labels, run.model.num_classes, rng)
    if run.spec.runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with (contextlib.nullcontext() if step_end or run.dist.world_size == 1 else run.net.no_sync()):
        with torch.autocast(x.device.type, dtype=run.amp or torch.float32, enabled=run.amp is not None):
            logits = run.net(x)
        loss = _loss(run.spec.loss, logits, targets)
        run.scaler.scale(loss / run.spec.optim.accumulate).backward()
    loss_value, stop = _sync_flags(run, loss, bool(run.stop.signum))
    if not math.isfinite(loss_value):
        raise TrainingError(f"the loss is {loss_value} at epoch {epoch + 1}, iteration {i + 1} (step {run.step}); "
                            f"stopped before the optimizer step, the last checkpoint in {str(run.work_dir)!r} is "
                            f"untouched. Lower the learning rate, add optim_wrapper.clip_grad=dict(max_norm=...), "
                            f"or check the data")
    if step_end:
        _optimizer_step(run)
        if run.ema is not None:
            run.ema.update(run.model, run.step, epoch)
    return loss_value, logits, stop


def _optimizer_step(run: TrainRun) -> None:
    if run.spec.optim.clip:
        run.scaler.unscale_(run.optimizer)
        params = [p for g in run.optimizer.param_groups for p in g["params"]]
        kind, limit, norm_type = run.spec.optim.clip
        if kind == "value":
            torch.nn.utils.clip_grad_value_(params, limit)
        else:
            torch.nn.utils.clip_grad_norm_(params, limit, norm_type=norm_type)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1


def _sync_buffers(module: nn.Module) -> None:
    """Rank 0's BN statistics everywhere, so every rank evaluates (and would save) the same model."""
    if is_distributed():
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, 0)


def validate(run: TrainRun, epoch: int) -> dict:
    """Exact top-k of the model (and of its EMA) on the val set (``val_evaluator.topk``, top-1 always: it selects
    ``best.pth``); logged and returned as a dict. The model's buffers must be the same on every rank (the loop
    broadcasts them first); the EMA's are made so here."""
    ema, record = run.spec.ema, {"mode": "val", "epoch": epoch + 1, "step": run.step}
    todo = [("", run.model)] if run.ema is None or ema.evaluate_on_origin else []
    if run.ema is not None:
        _sync_buffers(run.ema.module)
        if ema.evaluate_on_ema:
            todo.append(("ema_", run.ema.module))
    topk = sorted({1, *run.spec.val_metrics.topk})
    for prefix, module in todo:
        res = evaluate(module, run.val_loader, run.eval_transform, device=run.dist.device, topk=topk, prefix="val",
                       amp=run.amp is not None or run.spec.val_fp16, progress=False)
        record.update({f"{prefix}top{k}": round(res.metrics[f"val/top{k}"], 4) for k in topk
                       if f"val/top{k}" in res.metrics})
    log.info("Epoch(val) [%d]  %s", epoch + 1, "  ".join(f"{k}: {v:.3f}" for k, v in record.items() if "top" in k))
    _append_jsonl(run, record)
    return record


def _state(run: TrainRun, epoch: int, iteration: int, rngs: list) -> dict:
    keep = run.spec.checkpoints.optimizer  # save_optimizer=False: weights and position only; not resumable
    return {
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict() if keep else None,
        "scaler": run.scaler.state_dict() if keep and run.scaler.is_enabled() else None,
        "ema": run.ema.module.state_dict() if run.ema is not None else None,
        "ema_steps": run.ema.steps if run.ema is not None else 0,
        "epoch": epoch, "iter": iteration, "step": run.step, "rng": rngs, "seed": run.seed, "best": dict(run.best),
        "meta": {"spec": run.model_spec.to_meta(), "dataset_meta": {"classes": list(run.model_spec.classes or ())},
                 "cspnet_version": __version__},
        "run": ckpt_lib.run_record(run.spec, run.dist.world_size), "config": run.spec.source.text,
    }


def _save(run: TrainRun, epoch: int, iteration: int, name: str) -> Path:
    """Write ``name`` (rank 0) with every rank's RNG state. ``epoch``: epochs done; ``iteration``: iterations done
    in the next one. Returns the path (on every rank)."""
    rngs = all_gather_object(ckpt_lib.rng_state())  # a collective: every rank calls _save at the same point
    path = run.work_dir / name
    if run.dist.is_main:
        ckpt_lib.save_checkpoint(_state(run, epoch, iteration, rngs), path)
        if name.startswith("epoch_"):
            try:
                _save_inference_file(run, path.with_suffix(".safetensors"))
            except CSPNetError as e:  # a full disk, say: the run can go on from the checkpoint just written
                raise TrainingError(f"{e}. The checkpoint {str(path)!r} was written: continue from it with "
                                    f"--resume {path}") from None
        log.info("saved checkpoint %s", path)
    return path


def _save_inference_file(run: TrainRun, path: Path) -> None:
    """The weights every command uses by default (the EMA's when the EMA's top-1 chose ``best``, as
    :func:`cspnet.weights.files.read_weights` decides for the ``.pth``) with the model's spec: a few MB for predict,
    test, export, timm and (after ``cspnet convert``) mmpretrain."""
    ema = run.ema is not None and run.best.get("metric") == "ema_top1"
    save_state_dict((run.ema.module if ema else run.model).state_dict(), path, "cspnet", run.model_spec)


def _prune(run: TrainRun) -> None:
    """Drop interrupt checkpoints made obsolete by an epoch checkpoint, and epochs beyond ``max_keep_ckpts``."""
    if not run.dist.is_main:
        return
    keep = run.spec.checkpoints.max_keep
    epochs = sorted(run.work_dir.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1])) if keep > 0 else []
    for path in [*run.work_dir.glob("iter_*.pth"), *epochs[:-keep]]:
        path.unlink(missing_ok=True)
        path.with_suffix(".safetensors").unlink(missing_ok=True)


def _resume(run: TrainRun, checkpoint: dict, path: Path) -> tuple[int, int]:
    """Load a training checkpoint (checked by :func:`setup_run`) into ``run``; returns ``(start_epoch, start_iter)``."""
    ckpt_lib.load_model_state(run.model, checkpoint, path)
    try:
        run.optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {str(path)!r}: its optimizer state does not fit the "
                              f"config's optimizer / frozen stages ({e})") from None
    if checkpoint.get("scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(checkpoint["scaler"])
    if run.ema is not None:  # a checkpoint without EMA weights restarts the EMA from the model
        ema = checkpoint.get("ema")
        run.ema.module.load_state_dict(checkpoint["model"] if ema is None else ema)
        run.ema.steps = int(checkpoint.get("ema_steps", 0)) if ema is not None else 0
    run.step, run.best = int(checkpoint["step"]), dict(checkpoint.get("best") or run.best)
    rngs = checkpoint["rng"]
    ckpt_lib.set_rng_state(rngs[run.dist.rank] if run.dist.rank < len(rngs) else rngs[0])
    log.info("resumed from %s: epoch %d, iteration %d, step %d", path, checkpoint["epoch"], checkpoint["iter"],
             run.step)
    return int(checkpoint["epoch"]), int(checkpoint["iter"])


def _truncate_log(work_dir: Path, step: int) -> None:
    """After resuming, drop log lines written after the checkpoint (the killed run's lost steps)."""
    path = work_dir / "log.jsonl"
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    if len(keep) != len(lines):
        atomic_write(path, lambda tmp: tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8"))


def _seed_everything(seed: int, rank: int, spec: TrainSpec) -> None:
    runtime = spec.runtime
    seed = seed + rank if runtime.diff_rank_seed else seed
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if runtime.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before its first call
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = runtime.cudnn_benchmark


def _build_model(spec: TrainSpec, dist: DistInfo, load_from: bool | str | None, where: dict) -> ImageClassifier:
    """The classifier of ``spec.model``, with ``load_from`` weights (path, URL or True: the published ones) for
    fine-tuning: every weight, but a head of another width."""
    # the weights first: a missing file fails before seconds of random initialisation
    found = rank0_first(lambda: weights.read(load_from, spec.model.arch, **where),
                        f"load_from={load_from!r}") if load_from else None
    model = spec.model.build()
    if found is not None:
        weights.load_state(model, found)
        head = "" if found.num_classes == model.num_classes else f" but its {found.num_classes or 'missing'}-class head"
        log.info("initialised from %s (every weight%s)", found.source, head)
    model.to(dist.device)
    if spec.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _build_data(spec: TrainSpec, dist: DistInfo, seed: int):
    loader = spec.train_loader
    train_set = spec.train.build()
    sampler = TrainSampler(len(train_set), seed if loader.seed is None else loader.seed, dist.rank, dist.world_size,
                           shuffle=loader.shuffle)
    data = TrainSet(train_set.samples, TrainTransform(spec.augment), seed)
    workers = worker_count(loader.num_workers)
    train_loader = DataLoader(data, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last,
                              num_workers=workers, persistent_workers=loader.persistent_workers and workers > 0,
                              pin_memory=dist.device.type == "cuda" if loader.pin_memory is None else loader.pin_memory,
                              prefetch_factor=loader.prefetch_factor if workers > 0 else None,
                              multiprocessing_context=spec.runtime.mp_start_method if workers > 0 else None)
    if len(train_loader) == 0:
        raise ConfigError(f"train_dataloader: {len(train_set)} images give no batch of {loader.batch_size} per "
                          f"process with drop_last=True; lower batch_size")
    val_loader, eval_transform = None, EvalTransform(spec.model.eval)
    if spec.val is not None:
        val_loader = eval_loader(spec.val.build(transform=eval_transform.to_uint8), spec.val_loader, dist)
    log.info("train: %s; val: %s", train_set.describe(), val_loader.dataset.dataset.describe() if val_loader else "off")
    return sampler, train_loader, val_loader, eval_transform, tuple(train_set.classes)


def _scaler(spec: TrainSpec, amp: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    scale = spec.optim.loss_scale
    kwargs = dict(scale) if isinstance(scale, tuple) else {}
    if isinstance(scale, (int, float)):  # a fixed scale: start there, never grow (it still backs off on overflow)
        kwargs = {"init_scale": float(scale), "growth_interval": 2**31 - 1}
    try:
        return torch.amp.GradScaler(device.type, enabled=amp is torch.float16, **kwargs)
    except TypeError as e:
        raise ConfigError(f"optim_wrapper.loss_scale={dict(kwargs)}: {e}") from None


def setup_run(spec: TrainSpec, work_dir: Path, dist: DistInfo, checkpoint: dict | None, stop: StopRequest,
              where: dict | None = None, resume_from: Path | None = None) -> tuple[TrainRun, int, int]:
    """Build model, data, optimizer, schedule, EMA and DDP for ``spec`` in the run folder ``work_dir``; load
    ``checkpoint`` (read from ``resume_from`` and checked by :func:`cspnet.engine.checkpoint.check_resumable`).
    Returns the run and where to start ``(epoch, iteration)``."""
    # one seed for every rank: the data order must agree; a resumed run keeps its seed
    seed = checkpoint["seed"] if checkpoint else spec.runtime.seed
    if seed is None:
        seed = broadcast_object(int(torch.randint(0, 2**31 - 1, ()).item()))
    _seed_everything(int(seed), dist.rank, spec)
    model = _build_model(spec, dist, None if checkpoint else spec.load_from, where or {})
    sampler, train_loader, val_loader, eval_transform, classes = _build_data(spec, dist, seed)
    world_batch = train_loader.batch_size * dist.world_size * spec.optim.accumulate
    lr_scale = world_batch / spec.base_batch_size if spec.auto_scale_lr else 1.0
    optimizer = build_optimizer(model, spec.optim, lr_scale)
    if spec.auto_scale_lr:
        log.info("auto-scaled lr x%.4g for a total batch of %d (base %d): lr %.4g", lr_scale, world_batch,
                 spec.base_batch_size, optimizer.param_groups[0]["lr"])
    schedule = LRSchedule(spec.schedule, math.ceil(len(train_loader) / spec.optim.accumulate))
    # 'auto': fp16 + loss scaling on GPUs (mmengine's default); CPUs autocast to bf16 only
    amp_name = ("float16" if dist.device.type == "cuda" else "bfloat16") if spec.optim.amp == "auto" else spec.optim.amp
    amp = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(amp_name or "")
    net: nn.Module = model
    if dist.world_size > 1:
        if spec.runtime.sync_bn and dist.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif spec.runtime.sync_bn:
            log.warning("sync_bn: SyncBatchNorm needs CUDA; keeping per-process BatchNorm on %s", dist.device)
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    ema = ModelEma(model, spec.ema) if spec.ema else None
    run = TrainRun(spec, dist, work_dir, model, net, optimizer, schedule, _scaler(spec, amp, dist.device), ema,
                   sampler, train_loader, val_loader, eval_transform, int(seed), spec.model.replace(classes=classes),
                   stop, amp)
    start = _resume(run, checkpoint, resume_from) if checkpoint else (0, 0)
    return run, start[0], start[1]


def _run_dir(work_dir: Path, resume_from: Path | None, dist: DistInfo) -> Path:
    """The folder this run writes: the resumed checkpoint's own run folder (when it is in ``work_dir``), else a new
    timestamped one (rank 0 makes it; every rank gets its name)."""
    if resume_from is not None:
        folder = resume_from.resolve().parent
        if folder == work_dir.resolve() or folder.parent == work_dir.resolve():
            return folder
    return Path(broadcast_object(str(workdirs.new_run_dir(work_dir)) if dist.is_main else None))


def _check_start(spec: TrainSpec, resume: Path | None, dist: DistInfo) -> dict | None:
    """What can be checked before any weights load or file is written: the head against the data, and a resumed
    checkpoint against the run it would continue. Returns that checkpoint (None for a new run)."""
    classes = tuple(spec.train.class_names())
    if len(classes) != spec.model.num_classes:
        raise ConfigError(f"the training set has {len(classes)} classes ({spec.train.root}) but "
                          f"model.head.num_classes={spec.model.num_classes}: set --cfg-options "
                          f"model.head.num_classes={len(classes)}, or leave it unset (None) to take the data's")
    checkpoint = ckpt_lib.load_checkpoint(resume) if resume else None
    if checkpoint:
        ckpt_lib.check_resumable(checkpoint, spec, resume, dist.world_size, classes)
    return checkpoint


def _start(spec: TrainSpec, run_dir: Path, dist: DistInfo, checkpoint: dict | None, stop: StopRequest, where: dict,
           resume: Path | None) -> tuple[TrainRun, int, int]:
    """:func:`setup_run` logging into ``run_dir``; then (rank 0) the resolved config and TensorBoard there. A new
    run that cannot start leaves no folder behind: its log went to stderr too."""
    setup_logging(dist.rank, spec.runtime.log_level, run_dir / "train.log")
    try:
        run, epoch, start_iter = setup_run(spec, run_dir, dist, checkpoint, stop, where, resume)
    except BaseException:
        if dist.is_main and not (resume and run_dir.samefile(resume.parent)):
            setup_logging(dist.rank, spec.runtime.log_level)  # closes train.log
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if dist.is_main:
        if resume:
            _truncate_log(run_dir, run.step)
        spec.source.dump(run_dir)
        if spec.runtime.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            run.board = SummaryWriter(str(run_dir / "vis_data"))  # where mmengine's TensorBoard backend writes
    return run, epoch, start_iter


def fit(spec: TrainSpec, work_dir: str | os.PathLike | None = None, resume_from: str | os.PathLike | None = None,
        **where) -> dict:
    """Train ``spec`` into a new run folder ``<work_dir>/<YYYYmmdd_HHMMSS>`` (``work_dir`` default: the spec's, else
    ``work_dirs/<config name>``), or continue ``resume_from`` in its own run folder. ``where``: where ``load_from``
    weights come from (see :func:`cspnet.weights.sources.resolve`).

    Returns ``{'best_top1', 'best_epoch', 'best_metric' ('top1' or 'ema_top1'), 'last': the last val record,
    'epochs', 'work_dir': the run folder, 'checkpoint'}``.

    Raises:
        Interrupted: after SIGTERM/SIGINT, once the checkpoint is written (``exit_code`` = 128 + signal).
        TrainingError: the loss became NaN/inf (nothing is written at that step).
        ConfigError, DatasetError, CheckpointError: bad input, before training starts.
    """
    work_dir = Path(work_dir or spec.work_dir or Path("work_dirs") / Path(spec.source.file or "run").stem)
    dist = init_distributed(spec.launcher, timeout_s=spec.runtime.dist_timeout, backend=spec.runtime.dist_backend)
    # process-wide switches that randomness.deterministic / cudnn_benchmark change; restored for library callers
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        setup_logging(dist.rank, spec.runtime.log_level)  # stderr only: nothing is written before the checks pass
        resume = Path(resume_from) if resume_from else None
        checkpoint = _check_start(spec, resume, dist)
        run_dir = _run_dir(work_dir, resume, dist)
        with workdirs.run_lock(run_dir) if dist.is_main else contextlib.nullcontext(), StopRequest() as stop:
            run, epoch, start_iter = _start(spec, run_dir, dist, checkpoint, stop, where, resume)
            try:
                return _fit_loop(run, epoch, start_iter)  # which draws the curves after every epoch
            except BaseException:  # the curves of what was done, also after an interrupt or an error mid-epoch
                if dist.is_main:
                    _draw(run_dir)
                raise
            finally:
                if run.board is not None:
                    run.board.close()
    finally:
        # only when changed: the call imports torch._dynamo (~2 s), which a run that fails at once should not pay
        if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) \
                != saved[:2]:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        destroy_distributed()


def _draw(run_dir: Path) -> None:
    """``curves.png`` from the run's log. A picture must never end a run, nor hide the error that did."""
    if (run_dir / "log.jsonl").is_file():
        try:
            plot_runs([run_dir / "log.jsonl"], run_dir / "curves.png")
        except Exception as e:  # noqa: BLE001 (matplotlib's errors have no common type)
            log.warning("could not draw %s: %s", run_dir / "curves.png", e)


def _fit_loop(run: TrainRun, epoch: int, start_iter: int) -> dict:
    spec, policy, batch = run.spec, run.spec.checkpoints, run.train_loader.batch_size
    log.info("training %s (%d classes) for %d epochs from epoch %d: %d process(es) x %d images x %d accumulation = "
             "%d per step, %d steps/epoch, lr %.4g, amp %s, channels_last %s, EMA %s, seed %d, work dir %s",
             spec.model.arch, run.model.num_classes, spec.max_epochs, epoch + 1, run.dist.world_size, batch,
             spec.optim.accumulate, batch * run.dist.world_size * spec.optim.accumulate, run.schedule.iters_per_epoch,
             run.optimizer.param_groups[0]["initial_lr"], run.amp or "off", spec.runtime.channels_last,
             f"momentum {spec.ema.momentum}" if spec.ema else "off", run.seed, run.work_dir)
    run.t_start = time.perf_counter()
    last: dict = {}
    for epoch in range(epoch, spec.max_epochs):
        stop = train_one_epoch(run, epoch, start_iter)
        start_iter = 0
        done = epoch + 1
        _sync_buffers(run.model)  # before validating and saving: both need the same model on every rank
        improved = False
        if run.val_loader is not None and done >= spec.val_begin and (done % spec.val_interval == 0
                                                                       or done == spec.max_epochs):
            last = validate(run, epoch)
            # the better of the weights evaluated, the EMA's on a tie (as timm): a short fine-tune's EMA can lag far
            # behind the raw weights, and best must not be a model at chance; the file records which it holds
            metric = max((k for k in ("ema_top1", "top1") if k in last), key=last.__getitem__)
            improved = run.best["top1"] is None or last[metric] > run.best["top1"]
            if improved:
                run.best = {"top1": last[metric], "epoch": done, "metric": metric}
        improved = improved and policy.best
        if done % policy.interval == 0 or (done == spec.max_epochs and policy.last) or improved or stop:
            path = _save(run, done, 0, f"epoch_{done}.pth")
            if improved and run.dist.is_main:
                ckpt_lib.copy_checkpoint(path, run.work_dir / "best.pth")
                ckpt_lib.copy_checkpoint(path.with_suffix(".safetensors"), run.work_dir / "best.safetensors")
            _prune(run)
        if run.dist.is_main:
            _draw(run.work_dir)  # a picture of the run so far
        if stop and done < spec.max_epochs:
            raise Interrupted(run.stop.signum or signal.SIGTERM, path)
    return {"best_top1": run.best["top1"], "best_epoch": run.best["epoch"], "best_metric": run.best.get("metric"),
            "last": last, "epochs": spec.max_epochs, "work_dir": str(run.work_dir),
            "checkpoint": str(workdirs.find_latest(run.work_dir))}
