"""Training and fine-tuning from an mmpretrain-shaped config, in a plain PyTorch loop (one process, or DDP under
torchrun).

The loop: :func:`fit` builds everything from the config (:func:`read_settings` is the one place that reads the
training keys), then alternates :func:`train_one_epoch` and :func:`validate`, writing a checkpoint after each epoch
(:mod:`cspnet.engine.checkpoint`). Resuming is exact: the data order comes from a sampler seeded by
``(seed, epoch)``, each image's augmentation from a generator seeded by ``(seed, epoch, index)``, the learning rate
is a function of the global step, and the checkpoint holds every RNG state; a run interrupted mid-epoch continues at
the next batch.

Faults: a non-finite loss stops the run before the optimizer step (the last checkpoint stays the last good one);
SIGTERM/SIGINT write ``iter_<step>.pth`` at the next step boundary, then exit with 128 + the signal number. Under
DDP both are agreed on by every rank through one small all-reduce per step, so all ranks stop at the same step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .. import config as config_lib
from ..data.train_transforms import TrainSampler, TrainSet, TrainTransform
from ..errors import CheckpointError, ConfigError, TrainingError
from . import checkpoint as ckpt_lib
from .distributed import (all_gather_object, broadcast_object, destroy_distributed, init_distributed, is_distributed,
                          rank0_first, setup_logging)
from .optim import LRSchedule, ModelEma, build_optimizer

log = logging.getLogger("cspnet")

_EMA_KEYS = {"type", "momentum", "interval", "update_buffers", "begin_iter", "begin_epoch", "evaluate_on_ema",
             "evaluate_on_origin", "ema_type", "strict_load", "priority"}


# --------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------
@dataclass
class TrainSettings:
    """The training keys of a config, resolved and checked. Field comments name the config key."""

    max_epochs: int  # train_cfg.max_epochs
    val_interval: int  # train_cfg.val_interval
    val_begin: int  # train_cfg.val_begin (first epoch to validate after)
    amp_dtype: str | None  # optim_wrapper.type='AmpOptimWrapper' + optim_wrapper.dtype; None: fp32
    loss_scale: str | float  # optim_wrapper.loss_scale: 'dynamic' or a fixed scale (fp16 only)
    clip_grad: dict | None  # optim_wrapper.clip_grad: dict(max_norm, norm_type=2) or dict(type='value', clip_value)
    accumulative_counts: int  # optim_wrapper.accumulative_counts: micro-batches per optimizer step
    label_smooth: float  # model.head.loss=dict(type='LabelSmoothLoss', label_smooth_val=...)
    loss_weight: float  # model.head.loss.loss_weight
    ema: dict | None  # custom_hooks=[dict(type='EMAHook', momentum=..., ...)]
    channels_last: bool  # env_cfg.channels_last
    cudnn_benchmark: bool  # env_cfg.cudnn_benchmark
    sync_bn: bool  # sync_bn='torch'
    seed: int | None  # randomness.seed
    deterministic: bool  # randomness.deterministic
    diff_rank_seed: bool  # randomness.diff_rank_seed
    log_interval: int  # default_hooks.logger.interval
    ckpt_interval: int  # default_hooks.checkpoint.interval (epochs)
    max_keep_ckpts: int  # default_hooks.checkpoint.max_keep_ckpts (-1: keep all)
    auto_scale_lr: bool  # auto_scale_lr.enable (--auto-scale-lr)
    base_batch_size: int  # auto_scale_lr.base_batch_size
    loader: dict = field(default_factory=dict)  # train_dataloader: batch_size, num_workers, ...


def _hook(cfg: Mapping, name: str) -> Mapping:
    return (cfg.get("default_hooks") or {}).get(name) or {}


def read_settings(cfg: Mapping) -> TrainSettings:
    """Read and check every training key of ``cfg`` (see the README's key table).

    Raises:
        ConfigError: for a value this trainer does not implement (the message names the key).
    """
    tc = cfg.get("train_cfg") or {}
    if not tc.get("by_epoch", True) or "max_iters" in tc:
        raise ConfigError("train_cfg: only epoch-based training (by_epoch=True, max_epochs) is supported")
    ow = cfg.get("optim_wrapper") or {}
    kind = ow.get("type", "OptimWrapper")
    if kind not in ("OptimWrapper", "AmpOptimWrapper"):
        raise ConfigError(f"optim_wrapper.type={kind!r}; choose 'OptimWrapper' or 'AmpOptimWrapper'")
    dtype = ow.get("dtype") if kind == "AmpOptimWrapper" else None
    if kind == "AmpOptimWrapper" and dtype not in (None, "float16", "bfloat16"):
        raise ConfigError(f"optim_wrapper.dtype={dtype!r}; choose 'float16' or 'bfloat16'")
    clip = ow.get("clip_grad")
    if clip is not None and (not isinstance(clip, Mapping) or clip.get("type", "norm") not in ("norm", "value")
                             or ("max_norm" not in clip and "clip_value" not in clip)):
        raise ConfigError(f"optim_wrapper.clip_grad={clip!r}; use dict(max_norm=...) or "
                          f"dict(type='value', clip_value=...)")
    loss = ((cfg.get("model") or {}).get("head") or {}).get("loss") or {}
    loss_type = loss.get("type", "CrossEntropyLoss")
    if loss_type not in ("CrossEntropyLoss", "LabelSmoothLoss") or loss.get("use_sigmoid") or loss.get("class_weight"):
        raise ConfigError(f"model.head.loss={dict(loss)!r}: only softmax CrossEntropyLoss and LabelSmoothLoss")
    if loss_type == "LabelSmoothLoss" and loss.get("mode", "original") != "original":
        raise ConfigError(f"model.head.loss.mode={loss['mode']!r}; only 'original' label smoothing is supported")
    if ((cfg.get("model") or {}).get("train_cfg") or {}).get("augments"):
        raise ConfigError("model.train_cfg.augments (Mixup/CutMix) is not supported by this trainer")
    rnd, env = cfg.get("randomness") or {}, cfg.get("env_cfg") or {}
    sync_bn = cfg.get("sync_bn")
    if sync_bn not in (None, False, "torch"):
        raise ConfigError(f"sync_bn={sync_bn!r}; use 'torch' (torch.nn.SyncBatchNorm) or None")
    dl = dict(cfg.get("train_dataloader") or {})
    asl = cfg.get("auto_scale_lr") or {}
    return TrainSettings(
        max_epochs=int(tc.get("max_epochs", 100)), val_interval=int(tc.get("val_interval", 1)),
        val_begin=int(tc.get("val_begin", 1)), amp_dtype=(dtype or "auto") if kind == "AmpOptimWrapper" else None,
        loss_scale=ow.get("loss_scale", "dynamic"), clip_grad=dict(clip) if clip else None,
        accumulative_counts=int(ow.get("accumulative_counts", 1)),
        label_smooth=float(loss.get("label_smooth_val", 0.1)) if loss_type == "LabelSmoothLoss" else 0.0,
        loss_weight=float(loss.get("loss_weight", 1.0)), ema=_ema_settings(cfg.get("custom_hooks")),
        channels_last=bool(env.get("channels_last", False)), cudnn_benchmark=bool(env.get("cudnn_benchmark", False)),
        sync_bn=sync_bn == "torch", seed=rnd.get("seed"), deterministic=bool(rnd.get("deterministic", False)),
        diff_rank_seed=bool(rnd.get("diff_rank_seed", False)),
        log_interval=int(_hook(cfg, "logger").get("interval", 100)),
        ckpt_interval=int(_hook(cfg, "checkpoint").get("interval", 1)),
        max_keep_ckpts=int(_hook(cfg, "checkpoint").get("max_keep_ckpts", -1)),
        auto_scale_lr=bool(asl.get("enable", False)), base_batch_size=int(asl.get("base_batch_size", 256)),
        loader=dl,
    )


def _ema_settings(hooks: Any) -> dict | None:
    """``custom_hooks=[dict(type='EMAHook', momentum=2e-4, ...)]`` (mmpretrain's EMA) -> settings, or None."""
    ema = None
    for i, h in enumerate(hooks or []):
        if not isinstance(h, Mapping) or h.get("type") != "EMAHook":
            raise ConfigError(f"custom_hooks[{i}]={h!r}: only dict(type='EMAHook', ...) is supported")
        unknown = sorted(set(h) - _EMA_KEYS)
        if unknown or h.get("ema_type", "ExponentialMovingAverage") != "ExponentialMovingAverage":
            raise ConfigError(f"custom_hooks[{i}] (EMAHook): unsupported key(s) {unknown or ['ema_type']}; "
                              f"allowed: {sorted(_EMA_KEYS)} with ema_type='ExponentialMovingAverage'")
        ema = dict(momentum=float(h.get("momentum", 2e-4)), interval=int(h.get("interval", 1)),
                   update_buffers=bool(h.get("update_buffers", False)), begin_iter=int(h.get("begin_iter", 0)),
                   begin_epoch=int(h.get("begin_epoch", 0)), evaluate_on_ema=bool(h.get("evaluate_on_ema", True)),
                   # mmpretrain evaluates only the EMA by default; both are reported here, so the gain is visible
                   evaluate_on_origin=bool(h.get("evaluate_on_origin", True)))
    return ema


# --------------------------------------------------------------------------------------------------------------
# Stop requests (SIGTERM / Ctrl-C)
# --------------------------------------------------------------------------------------------------------------
class StopRequest:
    """Turns SIGTERM/SIGINT into a flag that the loop reads at step boundaries; a second signal exits at once."""

    def __init__(self):
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        import threading

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


# --------------------------------------------------------------------------------------------------------------
# One run's state and the loop
# --------------------------------------------------------------------------------------------------------------
@dataclass
class TrainRun:
    """Everything the loop touches. ``model`` is the plain module (what is saved); ``net`` is what is called in
    training (``model`` or its DDP wrapper)."""

    cfg: Any
    settings: TrainSettings
    dist: Any  # DistInfo
    work_dir: Path
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    sampler: TrainSampler
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    eval_transform: Any
    seed: int
    meta: dict
    stop: StopRequest
    step: int = 0
    best: dict = field(default_factory=lambda: {"top1": None, "epoch": None})
    t_start: float = 0.0
    iters_this_run: int = 0

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(self.settings.amp_dtype or "")


def _sync_flags(run: TrainRun, loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
    """Mean loss over ranks and whether any rank was asked to stop. One small all-reduce: it is also the step's
    CPU-GPU sync point, which the NaN check needs anyway."""
    flags = torch.stack([loss.detach().float(), torch.tensor(float(stop), device=loss.device)])
    if run.dist.world_size > 1:
        torch.distributed.all_reduce(flags)
    loss_sum, stops = flags.tolist()
    return loss_sum / run.dist.world_size, stops > 0


def _log_train(run: TrainRun, epoch: int, i: int, n_iters: int, lr: float, loss: float, img_s: float,
               data_time: float) -> None:
    s = run.settings
    elapsed = time.perf_counter() - run.t_start
    left = (s.max_epochs - epoch - 1) * n_iters + (n_iters - i - 1)
    eta = elapsed / max(1, run.iters_this_run) * left
    log.info("Epoch(train) [%d][%*d/%d]  lr: %.4e  eta: %s  loss: %.4f  img/s: %.1f  data_time: %.3f", epoch + 1,
             len(str(n_iters)), i + 1, n_iters, lr, _hms(eta), loss, img_s, data_time)
    _append_jsonl(run, {"mode": "train", "epoch": epoch + 1, "iter": i + 1, "iters": n_iters, "step": run.step,
                        "lr": lr, "loss": loss, "img_s": round(img_s, 2), "data_time": round(data_time, 4),
                        "eta_s": round(eta)})


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _append_jsonl(run: TrainRun, record: dict) -> None:
    if run.dist.is_main:
        with open(run.work_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")


def train_one_epoch(run: TrainRun, epoch: int, start_iter: int = 0) -> bool:
    """Train ``epoch`` (0-based) from micro-batch ``start_iter``.

    Returns whether a stop was requested (on any rank) during the epoch's last step. Raises :class:`Interrupted`
    after writing ``iter_<step>.pth`` on a stop request mid-epoch, and :class:`TrainingError` on a non-finite loss.
    """
    s, dev = run.settings, run.dist.device
    accum = s.accumulative_counts
    bs = run.train_loader.batch_size
    run.sampler.set_epoch(epoch, skip=start_iter * bs)
    n_iters = start_iter + len(run.train_loader)
    run.net.train()
    amp = run.amp_dtype
    window = {"loss": 0.0, "n": 0, "images": 0, "data": 0.0, "t": time.perf_counter()}
    t_data = time.perf_counter()
    stop = False
    for i, (x, y) in enumerate(run.train_loader, start=start_iter):
        window["data"] += time.perf_counter() - t_data
        first, last = i % accum == 0, (i + 1) % accum == 0 or i + 1 == n_iters
        if first:
            lr = run.schedule.apply(run.optimizer, run.step)
        x = run.eval_transform.normalize(x.to(dev, non_blocking=True))
        if s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(dev, non_blocking=True)
        sync = last or run.dist.world_size == 1
        with (contextlib.nullcontext() if sync else run.net.no_sync()):
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = run.net(x)
            loss = s.loss_weight * F.cross_entropy(logits.float(), y, label_smoothing=s.label_smooth)
            run.scaler.scale(loss / accum).backward()
        loss_v, stop = _sync_flags(run, loss, bool(run.stop.signum))
        if not math.isfinite(loss_v):
            raise TrainingError(
                f"the loss is {loss_v} at epoch {epoch + 1}, iteration {i + 1} (step {run.step}); stopped before "
                f"the optimizer step, the last checkpoint in {str(run.work_dir)!r} is untouched. Lower the "
                f"learning rate, add optim_wrapper.clip_grad=dict(max_norm=...), or check the data"
            )
        if last:
            _optimizer_step(run)
            if run.ema is not None:
                run.ema.update(run.model, run.step, epoch)
        window["loss"] += loss_v
        window["n"] += 1
        window["images"] += x.shape[0] * run.dist.world_size
        run.iters_this_run += 1
        if (i + 1) % s.log_interval == 0 or i + 1 == n_iters:
            now = time.perf_counter()
            _log_train(run, epoch, i, n_iters, lr, window["loss"] / window["n"],
                       window["images"] / max(now - window["t"], 1e-9), window["data"] / window["n"])
            window = {"loss": 0.0, "n": 0, "images": 0, "data": 0.0, "t": now}
        if stop and last and i + 1 < n_iters:
            path = _save(run, epoch, i + 1, f"iter_{run.step}.pth")
            raise Interrupted(run.stop.signum or signal.SIGTERM, path)
        t_data = time.perf_counter()
    return stop


def _optimizer_step(run: TrainRun) -> None:
    clip = run.settings.clip_grad
    if clip:
        run.scaler.unscale_(run.optimizer)
        params = [p for g in run.optimizer.param_groups for p in g["params"]]
        if clip.get("type", "norm") == "value":
            torch.nn.utils.clip_grad_value_(params, clip["clip_value"])
        else:
            torch.nn.utils.clip_grad_norm_(params, clip["max_norm"], norm_type=clip.get("norm_type", 2))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1


def _sync_buffers(module: nn.Module) -> None:
    """Rank 0's BN statistics everywhere, so every rank evaluates (and would save) the same model."""
    if is_distributed():
        for b in module.buffers():
            torch.distributed.broadcast(b, 0)


def validate(run: TrainRun, epoch: int) -> dict:
    """Exact top-1/top-5 of the model (and of its EMA) on the val set; logged and returned as a dict.

    The model's buffers must be the same on every rank (the loop broadcasts them first); the EMA's are made so here.
    """
    from .evaluate import evaluate

    s, record = run.settings, {"mode": "val", "epoch": epoch + 1, "step": run.step}
    todo = []
    if run.ema is None or s.ema["evaluate_on_origin"]:
        todo.append(("", run.model))
    if run.ema is not None and s.ema["evaluate_on_ema"]:
        todo.append(("ema_", run.ema.module))
    if run.ema is not None:
        _sync_buffers(run.ema.module)
    for prefix, module in todo:
        res = evaluate(module, run.val_loader, run.eval_transform, device=run.dist.device,
                       amp=run.amp_dtype is not None, progress=False)
        record[prefix + "top1"] = round(res.metrics["accuracy/top1"], 4)
        if "accuracy/top5" in res.metrics:
            record[prefix + "top5"] = round(res.metrics["accuracy/top5"], 4)
    log.info("Epoch(val) [%d]  %s", epoch + 1, "  ".join(f"{k}: {v:.3f}" for k, v in record.items()
                                                          if k.endswith(("top1", "top5"))))
    _append_jsonl(run, record)
    return record


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------
def _state(run: TrainRun, epoch: int, it: int, rngs: list) -> dict:
    return {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
        "ema": run.ema.module.state_dict() if run.ema is not None else None,
        "ema_steps": run.ema.steps if run.ema is not None else 0,
        "epoch": epoch, "iter": it, "step": run.step, "rng": rngs, "seed": run.seed, "best": dict(run.best),
        "meta": run.meta, "config": run.cfg.to_dict(),
    }


def _save(run: TrainRun, epoch: int, it: int, name: str) -> Path:
    """Write ``name`` (rank 0) with every rank's RNG state. ``epoch``: epochs done; ``it``: iterations done in the
    next one. Returns the path (on every rank)."""
    rngs = all_gather_object(ckpt_lib.rng_state())  # a collective: every rank calls _save at the same point
    path = run.work_dir / name
    if run.dist.is_main:
        ckpt_lib.save_checkpoint(_state(run, epoch, it, rngs), path)
        log.info("saved checkpoint %s", path)
    return path


def _prune(run: TrainRun) -> None:
    """Drop interrupt checkpoints made obsolete by an epoch checkpoint, and epochs beyond ``max_keep_ckpts``."""
    if not run.dist.is_main:
        return
    for p in run.work_dir.glob("iter_*.pth"):
        p.unlink(missing_ok=True)
    keep = run.settings.max_keep_ckpts
    if keep > 0:
        epochs = sorted(run.work_dir.glob("epoch_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
        for p in epochs[:-keep]:
            p.unlink(missing_ok=True)


def _resume(run: TrainRun, ckpt: dict, path: Path) -> tuple[int, int]:
    """Load a training checkpoint into ``run``; returns ``(start_epoch, start_iter)``."""
    ckpt_lib.check_resumable(ckpt, run.meta["arch"], run.meta["num_classes"], path, run.model)
    run.model.load_state_dict(ckpt["model"])
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {str(path)!r}: its optimizer state does not fit the "
                                       f"config's optimizer / frozen stages ({e})") from None
    if ckpt.get("scaler") and run.scaler.is_enabled():
        run.scaler.load_state_dict(ckpt["scaler"])
    if run.ema is not None:
        if ckpt.get("ema") is not None:
            run.ema.module.load_state_dict(ckpt["ema"])
            run.ema.steps = int(ckpt.get("ema_steps", 0))
        else:
            run.ema.module.load_state_dict(ckpt["model"])
    run.step, run.best = int(ckpt["step"]), dict(ckpt.get("best") or run.best)
    rngs = ckpt["rng"]
    ckpt_lib.set_rng_state(rngs[run.dist.rank] if run.dist.rank < len(rngs) else rngs[0])
    log.info("resumed from %s: epoch %d, iteration %d, step %d", path, ckpt["epoch"], ckpt["iter"], run.step)
    return int(ckpt["epoch"]), int(ckpt["iter"])


def _truncate_log(work_dir: Path, step: int) -> None:
    """After resuming, drop log lines written after the checkpoint (the killed run's lost steps)."""
    path = work_dir / "log.jsonl"
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    if len(keep) != len(lines):
        from .._io import atomic_write

        atomic_write(path, lambda tmp: tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8"))


# --------------------------------------------------------------------------------------------------------------
# Building a run, and the whole fit
# --------------------------------------------------------------------------------------------------------------
def _seed_everything(seed: int, rank: int, s: TrainSettings) -> None:
    import random

    import numpy as np

    seed = seed + rank if s.diff_rank_seed else seed
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if s.deterministic:
        # cuBLAS needs this before its first call to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = s.cudnn_benchmark


def _build_model(cfg: Any, s: TrainSettings, dist_info: Any, load_from: Any) -> nn.Module:
    """The classifier of ``cfg.model``, with ``load_from`` weights (path, URL or True) for fine-tuning."""
    pretrained = False if load_from in (None, False, "") else load_from
    if pretrained is False:
        model = config_lib.build_model(cfg, pretrained=False)
    else:
        model = rank0_first(lambda: config_lib.build_model(cfg, pretrained=pretrained), f"load_from={load_from!r}")
        log.info("initialised from %s (every weight but a head of another class count)", load_from)
    model.to(dist_info.device)
    if s.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _build_data(cfg: Any, s: TrainSettings, dist_info: Any, seed: int, validate_: bool, num_classes: int):
    from ..data.datasets import build_dataset
    from ..data.transforms import EvalTransform
    from .evaluate import build_eval_loader

    train_set = build_dataset(**config_lib.dataset_kwargs(cfg, "train"))
    if len(train_set.classes) != num_classes:
        raise ConfigError(
            f"the training set has {len(train_set.classes)} classes ({train_set.source}) but model.head.num_classes="
            f"{num_classes}: set --cfg-options model.head.num_classes={len(train_set.classes)}"
        )
    dl = s.loader
    lk = config_lib.loader_kwargs(cfg, "train")
    shuffle = ((dl.get("sampler") or {}).get("shuffle", True))
    sampler = TrainSampler(len(train_set), seed, dist_info.rank, dist_info.world_size, shuffle=shuffle)
    workers = lk["num_workers"]
    loader = torch.utils.data.DataLoader(
        TrainSet(train_set.samples, TrainTransform(config_lib.train_pipeline(cfg)), seed),
        batch_size=lk["batch_size"], sampler=sampler, num_workers=workers,
        drop_last=bool(dl.get("drop_last", False)),
        pin_memory=bool(dl.get("pin_memory", dist_info.device.type == "cuda")),
        persistent_workers=bool(dl.get("persistent_workers", True)) and workers > 0,
    )
    if len(loader) == 0:
        raise ConfigError(f"train_dataloader: {len(train_set)} images give no batch of {lk['batch_size']} per process "
                          f"with drop_last=True; lower batch_size")
    val_loader, eval_transform = None, EvalTransform(config_lib.eval_preset(cfg, "val"))
    if validate_:
        val_set = build_dataset(**config_lib.dataset_kwargs(cfg, "val"), transform=eval_transform.to_uint8)
        vk = config_lib.loader_kwargs(cfg, "val")
        val_loader = build_eval_loader(val_set, vk["batch_size"], vk["num_workers"])
    log.info("train: %s; val: %s", train_set.describe(), val_loader.dataset.dataset.describe() if val_loader else "off")
    return sampler, loader, val_loader, eval_transform, list(train_set.classes)


def _amp_settings(s: TrainSettings, device: torch.device) -> torch.amp.GradScaler:
    if s.amp_dtype == "auto":  # fp16 + loss scaling on GPUs (mmengine's default); CPUs autocast to bf16 only
        s.amp_dtype = "float16" if device.type == "cuda" else "bfloat16"
    scale = s.loss_scale
    kwargs = dict(scale) if isinstance(scale, Mapping) else {}
    if isinstance(scale, (int, float)):  # a fixed scale: start there, never grow (it still backs off on overflow)
        kwargs = {"init_scale": float(scale), "growth_interval": 2**31 - 1}
    elif not isinstance(scale, Mapping) and scale != "dynamic":
        raise ConfigError(f"optim_wrapper.loss_scale={scale!r}; use 'dynamic', a number or a dict of GradScaler args")
    return torch.amp.GradScaler(device.type, enabled=s.amp_dtype == "float16", **kwargs)


def setup_run(cfg: Any, work_dir: Path, dist_info: Any, resume_from: Path | None, validate_: bool,
              stop: StopRequest) -> tuple[TrainRun, int, int]:
    """Build model, data, optimizer, schedule, EMA and DDP for ``cfg``; load ``resume_from``. Returns the run and
    where to start ``(epoch, iteration)``."""

    s = read_settings(cfg)
    ckpt = ckpt_lib.load_checkpoint(resume_from) if resume_from else None
    arch = config_lib.model_name(cfg)
    if ckpt:  # before building anything: a wrong checkpoint fails in a second
        ckpt_lib.check_resumable(ckpt, arch, config_lib.model_kwargs(cfg)["num_classes"], resume_from)
    # one seed for every rank: the data order must agree; a resumed run keeps its seed
    seed = ckpt["seed"] if ckpt else s.seed
    if seed is None:
        seed = broadcast_object(int(torch.randint(0, 2**31 - 1, ()).item()))
    _seed_everything(int(seed), dist_info.rank, s)
    model = _build_model(cfg, s, dist_info, None if ckpt else cfg.get("load_from"))
    sampler, loader, val_loader, eval_transform, classes = _build_data(cfg, s, dist_info, seed, validate_,
                                                                        model.num_classes)
    world_batch = loader.batch_size * dist_info.world_size * s.accumulative_counts
    lr_scale = world_batch / s.base_batch_size if s.auto_scale_lr else 1.0
    optimizer = build_optimizer(model, cfg.get("optim_wrapper") or {}, lr_scale)
    if s.auto_scale_lr:
        log.info("auto-scaled lr x%.4g for a total batch of %d (base %d): lr %.4g", lr_scale, world_batch,
                 s.base_batch_size, optimizer.param_groups[0]["lr"])
    steps_per_epoch = math.ceil(len(loader) / s.accumulative_counts)
    schedule = LRSchedule(cfg.get("param_scheduler"), steps_per_epoch)
    scaler = _amp_settings(s, dist_info.device)
    net: nn.Module = model
    if dist_info.world_size > 1:
        if s.sync_bn and dist_info.device.type == "cuda":
            net = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif s.sync_bn:
            log.warning("sync_bn: SyncBatchNorm needs CUDA; keeping per-process BatchNorm on %s", dist_info.device)
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist_info.device.index] if dist_info.device.type == "cuda" else None)
    ema = ModelEma(model, **s.ema) if s.ema else None
    meta = {"arch": arch, "num_classes": model.num_classes, "dataset_meta": {"classes": classes},
            "cspnet_version": _version()}
    run = TrainRun(cfg, s, dist_info, work_dir, model, net, optimizer, schedule, scaler, ema, sampler, loader,
                   val_loader, eval_transform, int(seed), meta, stop)
    start = (0, 0)
    if ckpt:
        start = _resume(run, ckpt, resume_from)
    return run, start[0], start[1]


def _version() -> str:
    from .. import __version__

    return __version__


def fit(cfg: Any, work_dir: str | os.PathLike, resume_from: str | os.PathLike | None = None, validate_: bool = True,
        launcher: str = "none") -> dict:
    """Train ``cfg`` (a :class:`cspnet.config.Config`) into ``work_dir``; returns a summary dict.

    Returns ``{'best_top1', 'best_epoch', 'best_metric' ('top1' or 'ema_top1'), 'last': the last val record,
    'epochs', 'work_dir', 'checkpoint'}``.

    Raises:
        Interrupted: after SIGTERM/SIGINT, once the checkpoint is written (``exit_code`` = 128 + signal).
        TrainingError: the loss became NaN/inf (nothing is written at that step).
        ConfigError, DatasetError, CheckpointError: bad input, before training starts.
    """

    work_dir = Path(work_dir)
    timeout = ((cfg.get("env_cfg") or {}).get("dist_cfg") or {}).get("timeout", 1800)
    dist_info = init_distributed(launcher, timeout_s=float(timeout))
    # process-wide switches that randomness.deterministic / cudnn_benchmark change; restored for library callers
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        if dist_info.is_main:
            work_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(dist_info.rank, cfg.get("log_level", "INFO"), work_dir / "train.log")
        with StopRequest() as stop:
            run, epoch, it = setup_run(cfg, work_dir, dist_info, Path(resume_from) if resume_from else None,
                                       validate_, stop)
            if dist_info.is_main:
                if resume_from:
                    _truncate_log(work_dir, run.step)
                cfg.dump(work_dir / (Path(cfg.filename or "config.py").stem + ".py"))
            _log_start(run, epoch)
            return _fit_loop(run, epoch, it)
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        destroy_distributed()


def _log_start(run: TrainRun, epoch: int) -> None:
    s, d = run.settings, run.dist
    bs = run.train_loader.batch_size
    log.info("training %s (%d classes) for %d epochs from epoch %d: %d process(es) x %d images x %d accumulation = "
             "%d per step, %d steps/epoch, lr %.4g, amp %s, channels_last %s, EMA %s, seed %d, work dir %s",
             run.meta["arch"], run.meta["num_classes"], s.max_epochs, epoch + 1, d.world_size, bs,
             s.accumulative_counts, bs * d.world_size * s.accumulative_counts, run.schedule.iters_per_epoch,
             run.optimizer.param_groups[0]["initial_lr"], s.amp_dtype or "off", s.channels_last,
             f"momentum {s.ema['momentum']}" if s.ema else "off", run.seed, run.work_dir)


def _fit_loop(run: TrainRun, epoch: int, it: int) -> dict:
    s = run.settings
    run.t_start = time.perf_counter()
    last: dict = {}
    for epoch in range(epoch, s.max_epochs):
        stop = train_one_epoch(run, epoch, it)
        it = 0
        done = epoch + 1
        _sync_buffers(run.model)  # before validating and saving: both need the same model on every rank
        if run.val_loader is not None and done >= s.val_begin and (done % s.val_interval == 0 or done == s.max_epochs):
            last = validate(run, epoch)
            metric = "ema_top1" if "ema_top1" in last else "top1"  # the EMA's when evaluated, as timm
            improved = run.best["top1"] is None or last[metric] > run.best["top1"]
            if improved:
                run.best = {"top1": last[metric], "epoch": done, "metric": metric}
        else:
            improved = False
        if done % s.ckpt_interval == 0 or done == s.max_epochs or improved or stop:
            path = _save(run, done, 0, f"epoch_{done}.pth")
            if improved and run.dist.is_main:
                ckpt_lib.copy_checkpoint(path, run.work_dir / "best.pth")
            _prune(run)
        if stop and done < s.max_epochs:
            raise Interrupted(run.stop.signum or signal.SIGTERM, path)
    if run.dist.is_main:
        plot_curves(run.work_dir / "log.jsonl", run.work_dir / "curves.png")
    return {"best_top1": run.best["top1"], "best_epoch": run.best["epoch"], "best_metric": run.best.get("metric"),
            "last": last, "epochs": s.max_epochs,
            "work_dir": str(run.work_dir), "checkpoint": str(ckpt_lib.find_latest(run.work_dir))}


def plot_curves(log_path: str | os.PathLike, png_path: str | os.PathLike) -> Path | None:
    """Plot training loss per step and validation top-1 per epoch from ``log.jsonl`` into a PNG.

    Returns the PNG path, or None (with a log line) when matplotlib is not installed (``pip install cspnet[plot]``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no %s (pip install 'cspnet[plot]')", png_path)
        return None
    from .._io import atomic_path

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
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(png_path)
