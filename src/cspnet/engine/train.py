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

from .. import weights
from .._io import atomic_write
from .._version import __version__
from ..config import LossSpec, TrainSpec
from ..data.loader import worker_count
from ..data.train_transforms import TrainSampler, TrainSet, TrainTransform
from ..data.transforms import EvalTransform
from ..errors import CheckpointError, ConfigError, TrainingError
from ..models import ImageClassifier
from ..spec import ModelSpec
from . import checkpoint as ckpt_lib
from .distributed import (DistInfo, all_gather_object, broadcast_object, destroy_distributed, init_distributed,
                          is_distributed, rank0_first, setup_logging)
from .evaluate import eval_loader, evaluate
from .optim import LRSchedule, ModelEma, build_optimizer

log = logging.getLogger("cspnet")


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


def _log_train(run: TrainRun, epoch: int, i: int, iters: int, lr: float, window: _Window) -> None:
    left = (run.spec.max_epochs - epoch - 1) * iters + (iters - i - 1)
    eta = (time.perf_counter() - run.t_start) / max(1, run.iters_this_run) * left
    eta_hms = f"{int(eta) // 3600}:{int(eta) // 60 % 60:02d}:{int(eta) % 60:02d}"
    loss, img_s = window.loss / window.n, window.images / max(time.perf_counter() - window.start, 1e-9)
    acc = {f"acc/top{k}": round(100 * float(h) / window.seen, 4) for k, h in window.hits.items()}
    log.info("Epoch(train) [%d][%*d/%d]  lr: %.4e  eta: %s  loss: %.4f%s  img/s: %.1f  data_time: %.3f", epoch + 1,
             len(str(iters)), i + 1, iters, lr, eta_hms, loss, "".join(f"  {k}: {v:.2f}" for k, v in acc.items()),
             img_s, window.data_time / window.n)
    _append_jsonl(run, {"mode": "train", "epoch": epoch + 1, "iter": i + 1, "iters": iters, "step": run.step,
                        "lr": lr, "loss": loss, **acc, "img_s": round(img_s, 2),
                        "data_time": round(window.data_time / window.n, 4), "eta_s": round(eta)})


def _append_jsonl(run: TrainRun, record: dict) -> None:
    if run.dist.is_main:
        with open(run.work_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")


def _loss(criterion: LossSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``model.head.loss``: logits ``(N, C)`` (float32 for the softmax, whatever autocast gave), labels ``(N,)``."""
    weight = torch.tensor(criterion.class_weight, device=logits.device) if criterion.class_weight else None
    return criterion.weight * F.cross_entropy(logits.float(), labels, weight=weight, reduction=criterion.reduction,
                                              label_smoothing=criterion.label_smooth)


def train_one_epoch(run: TrainRun, epoch: int, start_iter: int = 0) -> bool:
    """Train ``epoch`` (0-based) from micro-batch ``start_iter``; returns whether a stop was requested (on any rank)
    during the epoch's last step. Raises :class:`Interrupted` after writing ``iter_<step>.pth`` on a stop request
    mid-epoch, and :class:`TrainingError` on a non-finite loss."""
    device, accumulate, criterion = run.dist.device, run.spec.optim.accumulate, run.spec.loss
    run.sampler.set_epoch(epoch, skip=start_iter * run.train_loader.batch_size)
    iters = start_iter + len(run.train_loader)
    run.net.train()
    window, data_start, stop = _Window(), time.perf_counter(), False
    for i, (images, labels) in enumerate(run.train_loader, start=start_iter):
        window.data_time += time.perf_counter() - data_start
        first, last = i % accumulate == 0, (i + 1) % accumulate == 0 or i + 1 == iters
        if first:
            lr = run.schedule.apply(run.optimizer, run.step)
        x = run.eval_transform.normalize(images.to(device, non_blocking=True))
        if run.spec.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        with (contextlib.nullcontext() if last or run.dist.world_size == 1 else run.net.no_sync()):
            with torch.autocast(device.type, dtype=run.amp or torch.float32, enabled=run.amp is not None):
                logits = run.net(x)
            loss = _loss(criterion, logits, labels)
            run.scaler.scale(loss / accumulate).backward()
        loss_value, stop = _sync_flags(run, loss, bool(run.stop.signum))
        if not math.isfinite(loss_value):
            raise TrainingError(f"the loss is {loss_value} at epoch {epoch + 1}, iteration {i + 1} (step {run.step}); "
                                f"stopped before the optimizer step, the last checkpoint in {str(run.work_dir)!r} is "
                                f"untouched. Lower the learning rate, add optim_wrapper.clip_grad=dict(max_norm=...), "
                                f"or check the data")
        if last:
            _optimizer_step(run)
            if run.ema is not None:
                run.ema.update(run.model, run.step, epoch)
        window.loss, window.n = window.loss + loss_value, window.n + 1
        window.images += x.shape[0] * run.dist.world_size
        if criterion.topk:
            ranked = logits.detach().topk(min(max(criterion.topk), logits.shape[1]), dim=1).indices == labels[:, None]
            for k in criterion.topk:
                window.hits[k] = window.hits.get(k, 0) + ranked[:, :k].any(1).sum()
            window.seen += labels.shape[0]
        run.iters_this_run += 1
        if (i + 1) % run.spec.runtime.log_interval == 0 or i + 1 == iters:
            _log_train(run, epoch, i, iters, lr, window)
            window = _Window()
        if stop and last and i + 1 < iters:
            path = _save(run, epoch, i + 1, f"iter_{run.step}.pth")
            raise Interrupted(run.stop.signum or signal.SIGTERM, path)
        data_start = time.perf_counter()
    return stop


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
        "config": run.spec.source.text,
    }


def _save(run: TrainRun, epoch: int, iteration: int, name: str) -> Path:
    """Write ``name`` (rank 0) with every rank's RNG state. ``epoch``: epochs done; ``iteration``: iterations done
    in the next one. Returns the path (on every rank)."""
    rngs = all_gather_object(ckpt_lib.rng_state())  # a collective: every rank calls _save at the same point
    path = run.work_dir / name
    if run.dist.is_main:
        ckpt_lib.save_checkpoint(_state(run, epoch, iteration, rngs), path)
        log.info("saved checkpoint %s", path)
    return path


def _prune(run: TrainRun) -> None:
    """Drop interrupt checkpoints made obsolete by an epoch checkpoint, and epochs beyond ``max_keep_ckpts``."""
    if not run.dist.is_main:
        return
    keep = run.spec.checkpoints.max_keep
    epochs = sorted(run.work_dir.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1])) if keep > 0 else []
    for path in [*run.work_dir.glob("iter_*.pth"), *epochs[:-keep]]:
        path.unlink(missing_ok=True)


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
    model = spec.model.build()
    if load_from:
        found = rank0_first(lambda: weights.read(load_from, spec.model.arch, **where), f"load_from={load_from!r}")
        weights.load_state(model, found)
        head = "" if found.num_classes == model.num_classes else f" but its {found.num_classes or 'missing'}-class head"
        log.info("initialised from %s (every weight%s)", found.source, head)
    model.to(dist.device)
    if spec.runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _build_data(spec: TrainSpec, dist: DistInfo, seed: int, num_classes: int):
    loader = spec.train_loader
    train_set = spec.train.build()
    if len(train_set.classes) != num_classes:
        raise ConfigError(f"the training set has {len(train_set.classes)} classes ({train_set.source}) but "
                          f"model.head.num_classes={num_classes}: set --cfg-options "
                          f"model.head.num_classes={len(train_set.classes)}")
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


def setup_run(spec: TrainSpec, work_dir: Path, dist: DistInfo, resume_from: Path | None, stop: StopRequest,
              where: dict | None = None) -> tuple[TrainRun, int, int]:
    """Build model, data, optimizer, schedule, EMA and DDP for ``spec``; load ``resume_from``. Returns the run and
    where to start ``(epoch, iteration)``."""
    checkpoint = ckpt_lib.load_checkpoint(resume_from) if resume_from else None
    if checkpoint:  # before building anything: a wrong checkpoint fails in a second
        ckpt_lib.check_resumable(checkpoint, spec.model, resume_from)
    # one seed for every rank: the data order must agree; a resumed run keeps its seed
    seed = checkpoint["seed"] if checkpoint else spec.runtime.seed
    if seed is None:
        seed = broadcast_object(int(torch.randint(0, 2**31 - 1, ()).item()))
    _seed_everything(int(seed), dist.rank, spec)
    model = _build_model(spec, dist, None if checkpoint else spec.load_from, where or {})
    sampler, train_loader, val_loader, eval_transform, classes = _build_data(spec, dist, seed, model.num_classes)
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


def fit(spec: TrainSpec, work_dir: str | os.PathLike | None = None, resume_from: str | os.PathLike | None = None,
        **where) -> dict:
    """Train ``spec`` into ``work_dir`` (default: the spec's, else ``work_dirs/<config name>``). ``where``: where
    ``load_from`` weights come from (see :func:`cspnet.weights.sources.resolve`).

    Returns ``{'best_top1', 'best_epoch', 'best_metric' ('top1' or 'ema_top1'), 'last': the last val record,
    'epochs', 'work_dir', 'checkpoint'}``.

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
        setup_logging(dist.rank, spec.runtime.log_level, work_dir / "train.log")  # on rank 0, creates work_dir
        with StopRequest() as stop:
            resume = Path(resume_from) if resume_from else None
            run, epoch, start_iter = setup_run(spec, work_dir, dist, resume, stop, where)
            if dist.is_main:
                if resume_from:
                    _truncate_log(work_dir, run.step)
                spec.source.dump(work_dir)
            return _fit_loop(run, epoch, start_iter)
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        destroy_distributed()


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
            metric = "ema_top1" if "ema_top1" in last else "top1"  # the EMA's when evaluated, as timm
            improved = run.best["top1"] is None or last[metric] > run.best["top1"]
            if improved:
                run.best = {"top1": last[metric], "epoch": done, "metric": metric}
        improved = improved and policy.best
        if done % policy.interval == 0 or (done == spec.max_epochs and policy.last) or improved or stop:
            path = _save(run, done, 0, f"epoch_{done}.pth")
            if improved and run.dist.is_main:
                ckpt_lib.copy_checkpoint(path, run.work_dir / "best.pth")
            _prune(run)
        if stop and done < spec.max_epochs:
            raise Interrupted(run.stop.signum or signal.SIGTERM, path)
    if run.dist.is_main:
        plot_curves(run.work_dir / "log.jsonl", run.work_dir / "curves.png")
    return {"best_top1": run.best["top1"], "best_epoch": run.best["epoch"], "best_metric": run.best.get("metric"),
            "last": last, "epochs": spec.max_epochs, "work_dir": str(run.work_dir),
            "checkpoint": str(ckpt_lib.find_latest(run.work_dir))}


def plot_curves(log_path: str | os.PathLike, png_path: str | os.PathLike) -> Path | None:
    """Plot training loss per step and validation top-1 per epoch from ``log.jsonl`` into a PNG; returns its path, or
    None (with a log line) when matplotlib is not installed (``pip install cspnet[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no %s (pip install 'cspnet[plot]')", png_path)
        return None
    rows = [json.loads(ln) for ln in Path(log_path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    train = [r for r in rows if r.get("mode") == "train"]
    val = [r for r in rows if r.get("mode") == "val"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax1.set(xlabel="optimizer step", ylabel="training loss", title="loss")
    for key, label in (("top1", "top-1"), ("ema_top1", "EMA top-1"), ("top5", "top-5")):
        pts = [(r["epoch"], r[key]) for r in val if key in r]
        if pts:
            ax2.plot(*zip(*pts), marker="o", label=label)
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="validation")
    if val:
        ax2.legend()
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return Path(png_path)
