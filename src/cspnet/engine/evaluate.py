"""Exact top-k evaluation over a whole dataset, in one process or under torchrun: :func:`evaluate` (a model and a
loader) and :func:`run_test` (an :class:`~cspnet.config.EvalSpec` and a checkpoint: what ``cspnet test`` runs).

Every sample is counted exactly once, whatever the number of processes: the sampler does not pad (rank ``r`` of
``W`` takes indices ``r, r+W, r+2W, ...``), each rank keeps ``(index, label, top-k)`` per sample, and rank results
are gathered and checked to cover the dataset once before any metric is computed. (Padding samplers, or averaging
per-rank means, make top-1 depend on the number of GPUs: pytorch/pytorch#25162.) Metrics follow mmpretrain's
``Accuracy``: a sample is correct at k when its label is among the k highest softmax scores and that score is > 0.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import weights
from .._io import atomic_write
from ..config import EvalSpec, LoaderSpec
from ..data.loader import Indexed, build_eval_loader, input_path
from ..data.transforms import EvalTransform
from ..errors import CheckpointError, ConfigError, DatasetError, ImageError
from ..optimize import optimize_for_inference
from .distributed import DistInfo, all_gather_object, get_rank, get_world_size, rank0_first

log = logging.getLogger("cspnet")


def forward_batch(model: torch.nn.Module, images: torch.Tensor, transform: EvalTransform, tta: bool = False,
                  amp: bool = False) -> torch.Tensor:
    """uint8 images ``(N, 3, H, W)`` on the model's device -> softmax scores ``(N, num_classes)`` float32. ``tta``:
    average the softmax of the image and its horizontal mirror (mmpretrain's ``--tta``); ``amp``: bfloat16 autocast."""
    x = transform.normalize(images)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        scores = model(x).float().softmax(dim=1)
        if tta:
            scores = (scores + model(x.flip(3)).float().softmax(dim=1)) / 2
    return scores


@dataclass
class EvalResult:
    """What :func:`evaluate` measured. ``metrics``: ``{'accuracy/top1': %, 'accuracy/top5': %}`` over
    ``num_samples`` images (``num_images`` in the dataset minus the ``skipped`` ``(path, error)``)."""

    metrics: dict[str, float]
    num_samples: int
    num_images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    predictions: list[dict[str, Any]] | None = None
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return (self.num_samples + len(self.skipped)) / self.seconds if self.seconds > 0 else float("nan")


def _sample_path(dataset: Any, index: int) -> str:
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"sample {index}"


def _check_labels(dataset: Any, num_classes: int | None) -> None:
    """Before the pass, on every rank alike: a label the model cannot predict is a data error, not a 0% class."""
    samples = getattr(dataset, "samples", None)
    if samples and num_classes:
        path, label = max(samples, key=lambda s: s[1])
        if label >= num_classes:
            raise DatasetError(f"{path!r} has label {label}, but the model predicts {num_classes} classes")


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader, transform: EvalTransform, *,
             device: str | torch.device | None = None, topk: Iterable[int] = (1, 5), prefix: str = "accuracy",
             tta: bool = False, amp: bool = False, skip_bad: bool = False, keep_predictions: bool = False,
             progress: bool = True, optimize: bool = True, compile: bool = False, cuda_graph: bool = False,
             decode: Callable[[Any], torch.Tensor] | None = None) -> EvalResult:
    """Top-k accuracy of ``model`` over every sample of ``loader``'s dataset, across all processes (every rank returns
    the same result).

    Args:
        model: ``(N, 3, H, W)`` normalised float -> logits ``(N, C)``; put in eval mode here.
        loader: from :func:`~cspnet.data.loader.build_eval_loader` (every rank builds its own shard's loader).
        transform: its ``normalize`` runs on the device, on each uint8 batch.
        device: where to run (default: the model's device).
        topk: the k of each metric (``{prefix}/top{k}``); a k larger than the number of classes is left out.
        skip_bad: count unreadable images out instead of failing; they are listed in ``skipped``.
        keep_predictions: also return per-sample ``predictions`` (path, label, pred_label, pred_score, top5).
        progress: a progress bar (images/s) on rank 0.
        optimize, compile, cuda_graph: the fast path (:func:`cspnet.optimize.optimize_for_inference`): BatchNorm
            folded and channels_last by default (same results up to float rounding), bf16 weights with ``amp``.
        decode: turns a loader batch into uint8 ``(N, 3, H, W)`` on the device (:func:`cspnet.data.loader.input_path`'s
            ``on_device``: Pillow's resize on the device, or nvJPEG); default: the batch is that, moved to the device.

    Raises:
        ImageError: for an unreadable image, without ``skip_bad`` (in a multi-process run: after the pass, on
            every rank, so that no rank is left waiting).
        DatasetError: when no image at all could be read.
    """
    from tqdm import tqdm

    dataset = loader.dataset.dataset if isinstance(loader.dataset, Indexed) else loader.dataset
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    _check_labels(dataset, getattr(model, "num_classes", None))
    if optimize or compile or cuda_graph:
        model = optimize_for_inference(model, fuse=optimize, channels_last=None if optimize else False,
                                       dtype=torch.bfloat16 if amp else None, compile=compile, cuda_graph=cuda_graph)
    world, num_classes, ks = get_world_size(), None, sorted(set(topk))
    parts: dict[str, list] = {"index": [], "label": [], "top_idx": [], "top_score": [], "label_pos": []}
    bad: list[tuple[int, str]] = []
    start = time.perf_counter()
    bar = tqdm(total=len(loader.sampler), unit="img", desc="test",  # type: ignore[arg-type]
               disable=not progress or get_rank() != 0, dynamic_ncols=True, mininterval=1.0, leave=False)
    for indices, images, labels, batch_bad in loader:
        if batch_bad:
            if not skip_bad and world == 1:
                raise ImageError(f"{batch_bad[0][1]} (use --skip-bad to continue past unreadable images)")
            bad += batch_bad
        if images is not None:
            batch = decode(images) if decode is not None else images.to(dev, non_blocking=True)
            scores = forward_batch(model, batch, transform, tta=tta, amp=amp)
            num_classes = scores.shape[1]
            top_score, top_idx = scores.topk(min(max(ks), num_classes), dim=1)
            label_pos = scores.gather(1, labels.to(dev, non_blocking=True)[:, None])[:, 0] > 0
            # Kept on the device until the end: a copy to the CPU per batch would make the loop wait for the GPU
            # every step, so loading and decoding the next batch could not overlap the model's work.
            for key, t in zip(parts, (indices, labels, top_idx, top_score, label_pos)):
                parts[key].append(t)
        bar.update(len(indices) + len(batch_bad))
    bar.close()
    local = {key: torch.cat(v).cpu().numpy() if v else None for key, v in parts.items()}
    gathered = all_gather_object({**local, "bad": bad, "num_classes": num_classes})
    seconds = time.perf_counter() - start
    all_bad = sorted(b for g in gathered for b in g["bad"])
    skipped = [(_sample_path(dataset, i), msg) for i, msg in all_bad]
    if all_bad and not skip_bad:
        raise ImageError(f"{len(all_bad)} unreadable image(s), first: {all_bad[0][1]} (use --skip-bad to continue)")
    got = [g for g in gathered if g["index"] is not None]
    if not got:
        raise DatasetError(f"no image of the {len(dataset)} could be read")  # type: ignore[arg-type]
    order = np.argsort(np.concatenate([g["index"] for g in got]), kind="stable")
    merged = {key: np.concatenate([g[key] for g in got])[order] for key in parts}
    # Each sample exactly once: the unpadded sampler guarantees it; this checks it.
    expected = len(dataset) - len(all_bad)  # type: ignore[arg-type]
    unique = np.unique(merged["index"])
    assert len(unique) == len(merged["index"]) == expected, (
        f"evaluated {len(merged['index'])} samples ({len(unique)} distinct) of {expected}")
    num_classes = max(g["num_classes"] for g in got)
    hits = merged["top_idx"] == merged["label"][:, None]  # (N, k): where the label sits in the top k
    correct = {k: hits[:, :k].any(axis=1) & merged["label_pos"] for k in ks if k <= num_classes}
    metrics = {f"{prefix}/top{k}": 100.0 * float(c.sum()) / len(c) for k, c in correct.items()}
    predictions = [
        {"path": _sample_path(dataset, int(i)), "label": int(y), "pred_label": int(idx[0]),
         "pred_score": float(s[0]), "top5": [int(c) for c in idx[:5]]}
        for i, y, idx, s in zip(merged["index"], merged["label"], merged["top_idx"], merged["top_score"])
    ] if keep_predictions else None
    return EvalResult(metrics, len(merged["index"]), len(dataset), skipped, predictions, seconds)  # type: ignore[arg-type]


def eval_loader(dataset: Any, spec: LoaderSpec, dist: DistInfo, batch_size: int | None = None,
                num_workers: int | None = None) -> DataLoader:
    """The loader ``spec`` describes (``batch_size``/``num_workers``: overrides) over this rank's shard of
    ``dataset``, for :func:`evaluate`: validation during training and :func:`run_test` alike."""
    return build_eval_loader(dataset, batch_size or spec.batch_size,
                             spec.num_workers if num_workers is None else num_workers, dist.rank, dist.world_size,
                             pin_memory=dist.device.type == "cuda" if spec.pin_memory is None else spec.pin_memory,
                             persistent_workers=spec.persistent_workers, prefetch_factor=spec.prefetch_factor)


def build_for_test(spec: EvalSpec, checkpoint: weights.Pretrained, *, use_ema: bool | None = None,
                   dataset_classes: tuple[str, ...] | None = None, **where) -> torch.nn.Module:
    """The model of ``spec`` with the weights of ``checkpoint``, which must be the same model: a checkpoint whose
    architecture, head width or class names differ from the config's is an error naming both (an evaluation never
    re-heads, unlike fine-tuning)."""
    found = weights.read(checkpoint, spec.model.arch, use_ema=use_ema, **where)
    model, held = spec.model, found.spec
    fix = f"set model.head.num_classes={found.num_classes} or test with the config it was trained with"
    if found.num_classes != model.num_classes:
        what = "has no head" if found.num_classes is None else f"has a {found.num_classes}-class head"
        raise CheckpointError(f"{found.source} {what}, but the config builds {model.num_classes} classes: {fix}")
    names = held.classes if held is not None else None
    if names is not None and dataset_classes is not None and tuple(names) != tuple(dataset_classes):
        raise CheckpointError(f"{found.source} was trained on classes {list(names)[:5]}..., the test set has "
                              f"{list(dataset_classes)[:5]}...: the labels would not mean the same classes")
    net = model.replace(classes=model.classes or names).build()
    weights.load_state(net, found)
    return net


@dataclass
class TestRun:
    """What :func:`run_test` did: the :class:`EvalResult`, and ``summary``, the JSON-able record of the run
    (config, checkpoint, dataset, eval settings, metrics) that ``--out`` and ``--work-dir`` receive."""

    result: EvalResult
    summary: dict[str, Any]


def run_test(spec: EvalSpec, checkpoint: weights.Pretrained, dist: DistInfo, *, batch_size: int | None = None,
             num_workers: int | None = None, resize: str = "auto", decode: str = "cpu", tta: bool = False,
             amp: bool = False, skip_bad: bool = False, optimize: bool = True, compile: bool = False,
             cuda_graph: bool = False, use_ema: bool | None = None, output: str | os.PathLike | None = None,
             work_dir: str | os.PathLike | None = None, say: Callable[[str], None] = log.info, **where) -> TestRun:
    """Evaluate ``checkpoint`` (a file, URL, True for the published weights, or a state dict) on ``spec``'s test set,
    on ``dist.device`` (one process, or this rank's shard under torchrun). The arguments left None take the
    config's value; ``tta``/``amp`` add to its ``tta_model``/``test_cfg.fp16``. ``output``: a JSON file of the
    summary with per-image predictions; ``work_dir``: the summary, the resolved config and (with
    :func:`~cspnet.engine.distributed.setup_logging`) the log. ``say`` (rank 0) receives the three lines that state
    the model, the data and the eval setting before the pass. ``where``: see :func:`cspnet.weights.sources.resolve`.

    Raises:
        ConfigError, DatasetError, CheckpointError: bad input, before the pass (the data before the weights: a
            wrong path fails in a second, not after a download).
    """
    inp = input_path(spec.model.eval, dist.device, resize, decode)
    dataset = spec.data.build(transform=inp.read)
    if spec.model.num_classes != dataset.num_classes:
        raise ConfigError(f"the model predicts {spec.model.num_classes} classes (model.head.num_classes) but the test "
                          f"set has {dataset.num_classes} ({dataset.source}); set model.head.num_classes or the "
                          f"dataset's classes")
    custom = tuple(dataset.classes) if spec.data.kind == "CustomDataset" else None
    # rank 0 first: only one process downloads the checkpoint
    model = rank0_first(lambda: build_for_test(spec, checkpoint, use_ema=use_ema, dataset_classes=custom, **where),
                        "the checkpoint").to(dist.device)
    loader = eval_loader(dataset, spec.loader, dist, batch_size, num_workers)
    batch = loader.batch_size
    tta, amp, transform = tta or spec.tta, amp or spec.fp16, EvalTransform(spec.model.eval)
    if dist.is_main:
        say(f"model: {spec.model.arch} ({spec.source.file}), checkpoint: {checkpoint}")
        say(f"data:  {dataset.describe()}")
        say(f"eval:  {spec.model.eval.describe()}; {'bf16 autocast' if amp else 'fp32'}; "
            f"{'flip TTA' if tta else 'no TTA'}; {dist.world_size} process(es) x batch {batch} on {dist.device.type}; "
            f"{inp.describe}")
    result = evaluate(model, loader, transform, device=dist.device, topk=spec.metrics.topk, prefix=spec.metrics.prefix,
                      tta=tta, amp=amp, skip_bad=skip_bad, keep_predictions=output is not None, optimize=optimize,
                      compile=compile, cuda_graph=cuda_graph, decode=inp.on_device)
    preset = spec.model.eval
    summary = {
        "config": spec.source.file, "checkpoint": str(checkpoint), "model": spec.model.arch,
        "dataset": {"root": dataset.root, "source": dataset.source, "layout": dataset.layout,
                    "num_images": result.num_images, "num_classes": dataset.num_classes},
        "eval": {"resize": preset.resize, "crop": preset.crop, "interpolation": preset.interpolation,
                 "mean": list(preset.mean), "std": list(preset.std), "amp": amp, "tta": tta,
                 "world_size": dist.world_size, "batch_size": batch},
        "num_samples": result.num_samples, "skipped": [{"path": p, "error": e} for p, e in result.skipped],
        "metrics": result.metrics,
    }
    if dist.is_main and work_dir is not None:
        _write_json(Path(work_dir) / f"test_{time.strftime('%Y%m%d_%H%M%S')}.json", summary)
        spec.source.dump(work_dir)
    if dist.is_main and output is not None:
        _write_json(Path(output), {**summary, "predictions": result.predictions})
    return TestRun(result, summary)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8"))
