"""Exact top-k evaluation over a whole dataset, in one process or under torchrun.

Every sample is counted exactly once, whatever the number of processes: the sampler does not pad (rank ``r`` of
``W`` takes indices ``r, r+W, r+2W, ...``), each rank keeps ``(index, label, top-k)`` per sample, and rank results
are gathered and checked to cover the dataset once before any metric is computed. (Padding samplers, or averaging
per-rank means, make top-1 depend on the number of GPUs: pytorch/pytorch#25162.) Metrics follow mmpretrain's
``Accuracy``: a sample is correct at k when its label is among the k highest softmax scores and that score is > 0.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.transforms import EvalTransform
from ..errors import DatasetError, ImageError
from .distributed import all_gather_object, get_rank, get_world_size

log = logging.getLogger("cspnet")


class ShardSampler(Sampler[int]):
    """Rank ``rank`` of ``world_size`` takes ``rank, rank + world_size, ...``: every index once, no padding."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.indices = range(rank, num_samples, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _Indexed(Dataset):
    """``dataset[i]`` -> ``(i, image or None, label, error message or None)``: a bad image does not kill a worker."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        try:
            image, label = self.dataset[index]
            return index, image, int(label), None
        except ImageError as e:
            samples = getattr(self.dataset, "samples", None)
            label = samples[index][1] if samples is not None else -1
            return index, None, int(label), str(e)


def collate_indexed(batch: Sequence[tuple[int, Any, int, str | None]]):
    """Stack the readable images; returns ``(indices, images, labels, bad)``, ``images`` uint8 ``(n, 3, H, W)``
    (or what the items' ``collate`` makes of them), ``None`` when none could be read.

    ``indices``/``labels`` cover the readable images only; ``bad`` lists ``(index, error message)`` of the others.
    """
    good = [b for b in batch if b[3] is None]
    bad = [(b[0], b[3]) for b in batch if b[3] is not None]
    indices = torch.tensor([b[0] for b in good], dtype=torch.long)
    labels = torch.tensor([b[2] for b in good], dtype=torch.long)
    images = None
    if good:
        # uint8 crops are stacked; items with a ``collate`` of their own (decoded images for the resize on the
        # device, cspnet.data.resample) pack themselves; others (encoded JPEGs for nvJPEG, cspnet.fast) stay a list
        items = [b[1] for b in good]
        pack = getattr(type(items[0]), "collate", None)
        images = torch.stack(items) if isinstance(items[0], torch.Tensor) else pack(items) if pack else items
    return indices, images, labels, bad


def build_eval_loader(
    dataset: Dataset,
    batch_size: int = 32,
    num_workers: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A loader for :func:`evaluate`: this rank's unpadded shard, in order, batches of ``collate_indexed``.

    ``dataset[i]`` must return ``(uint8 tensor (3, H, W), label)``. ``num_workers`` defaults to one per CPU core
    (shared among the processes of one machine under torchrun): Pillow decodes and resizes ~200 ImageNet JPEGs/s
    per core, so fewer workers starve a GPU. ``pin_memory`` defaults to whether CUDA is available;
    ``rank``/``world_size`` to the process group's.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    local_procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    workers = max(1, (os.cpu_count() or 1) // local_procs) if num_workers is None else num_workers
    return DataLoader(
        _Indexed(dataset),
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), rank, world_size),  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=collate_indexed,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=False,
    )


def forward_batch(
    model: torch.nn.Module, images: torch.Tensor, transform: EvalTransform, tta: bool = False, amp: bool = False
) -> torch.Tensor:
    """uint8 images ``(N, 3, H, W)`` on the model's device -> softmax scores ``(N, num_classes)`` float32.

    ``tta``: average the softmax of the image and its horizontal mirror (mmpretrain's ``--tta``).
    ``amp``: run the network under bfloat16 autocast.
    """
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
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    transform: EvalTransform,
    *,
    device: str | torch.device | None = None,
    topk: Iterable[int] = (1, 5),
    tta: bool = False,
    amp: bool = False,
    skip_bad: bool = False,
    keep_predictions: bool = False,
    progress: bool = True,
    optimize: bool = True,
    compile: bool = False,
    cuda_graph: bool = False,
    decode: Callable[[Any], torch.Tensor] | None = None,
) -> EvalResult:
    """Top-k accuracy of ``model`` over every sample of ``loader``'s dataset, across all processes.

    Args:
        model: ``(N, 3, H, W)`` normalised float -> logits ``(N, C)``; put in eval mode here.
        loader: from :func:`build_eval_loader` (every rank builds its own shard's loader).
        transform: its ``normalize`` runs on the device, on each uint8 batch.
        device: where to run (default: the model's device).
        topk: the k of each metric; a k larger than the number of classes is left out.
        skip_bad: count unreadable images out instead of failing; they are listed in ``skipped``.
        keep_predictions: also return per-sample ``predictions`` (path, label, pred_label, pred_score, top5).
        progress: a progress bar (images/s) on rank 0.
        optimize, compile, cuda_graph: the fast path (:func:`cspnet.fast.optimize_for_inference`): BatchNorm
            folded and channels_last by default (same results up to float rounding), bf16 weights with ``amp``.
        decode: turns a loader batch into uint8 ``(N, 3, H, W)`` on the device
            (:class:`cspnet.data.resample.DeviceResize`: Pillow's resize on the device, exact;
            :class:`cspnet.fast.GpuJpegDecoder`: nvJPEG); default: the batch is already that, moved to the device.

    Every rank returns the same result.

    Raises:
        ImageError: for an unreadable image, without ``skip_bad`` (in a multi-process run: after the pass, on
            every rank, so that no rank is left waiting).
        DatasetError: when no image at all could be read.
    """
    from tqdm import tqdm

    dataset = loader.dataset.dataset if isinstance(loader.dataset, _Indexed) else loader.dataset
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    _check_labels(dataset, getattr(model, "num_classes", None))
    if optimize or compile or cuda_graph:
        from ..fast import optimize_for_inference

        model = optimize_for_inference(model, fuse=optimize, channels_last=None if optimize else False,
                                       dtype=torch.bfloat16 if amp else None, compile=compile, cuda_graph=cuda_graph)
    rank, world = get_rank(), get_world_size()
    num_classes: int | None = None
    ks = sorted(set(topk))
    parts: dict[str, list] = {"index": [], "label": [], "top_idx": [], "top_score": [], "label_pos": []}
    bad: list[tuple[int, str]] = []
    start = time.perf_counter()
    bar = tqdm(total=len(loader.sampler), unit="img", desc="test", disable=not progress or rank != 0,  # type: ignore[arg-type]
               dynamic_ncols=True, mininterval=1.0, leave=False)
    for indices, images, labels, batch_bad in loader:
        if batch_bad:
            if not skip_bad and world == 1:
                raise ImageError(f"{batch_bad[0][1]} (use --skip-bad to continue past unreadable images)")
            bad += batch_bad
        if images is not None:
            batch = decode(images) if decode is not None else images.to(dev, non_blocking=True)
            scores = forward_batch(model, batch, transform, tta=tta, amp=amp)
            num_classes = scores.shape[1]
            k = min(max(ks), num_classes)
            top_score, top_idx = scores.topk(k, dim=1)
            label_pos = scores.gather(1, labels.to(dev, non_blocking=True)[:, None])[:, 0] > 0
            # Kept on the device until the end: a copy to the CPU per batch would make the loop wait for the GPU
            # every step, so loading and decoding the next batch could not overlap the model's work.
            for key, t in (("index", indices), ("label", labels), ("top_idx", top_idx), ("top_score", top_score),
                           ("label_pos", label_pos)):
                parts[key].append(t)
        bar.update(len(indices) + len(batch_bad))
    bar.close()
    local = {key: torch.cat(v).cpu().numpy() if v else None for key, v in parts.items()}
    local["bad"], local["num_classes"] = bad, num_classes
    gathered = all_gather_object(local)
    seconds = time.perf_counter() - start

    all_bad = sorted(b for g in gathered for b in g["bad"])
    skipped = [(_sample_path(dataset, i), msg) for i, msg in all_bad]
    if all_bad and not skip_bad:
        raise ImageError(f"{len(all_bad)} unreadable image(s), first: {all_bad[0][1]} (use --skip-bad to continue)")
    got = [g for g in gathered if g["index"] is not None]
    if not got:
        raise DatasetError(f"no image of the {len(dataset)} could be read")  # type: ignore[arg-type]
    merged = {key: np.concatenate([g[key] for g in got]) for key in parts}
    order = np.argsort(merged["index"], kind="stable")
    merged = {key: v[order] for key, v in merged.items()}
    # Each sample exactly once: the unpadded sampler guarantees it; this checks it.
    expected = len(dataset) - len(all_bad)  # type: ignore[arg-type]
    unique = np.unique(merged["index"])
    assert len(unique) == len(merged["index"]) == expected, (
        f"evaluated {len(merged['index'])} samples ({len(unique)} distinct) of {expected}"
    )

    num_classes = max(g["num_classes"] for g in got)
    hits = merged["top_idx"] == merged["label"][:, None]  # (N, k): where the label sits in the top k
    metrics = {}
    for k in ks:
        if k <= num_classes:
            correct = hits[:, :k].any(axis=1) & merged["label_pos"]
            metrics[f"accuracy/top{k}"] = 100.0 * float(correct.sum()) / len(correct)

    predictions = None
    if keep_predictions:
        predictions = [
            {"path": _sample_path(dataset, int(i)), "label": int(y), "pred_label": int(idx[0]),
             "pred_score": float(s[0]), "top5": [int(c) for c in idx[:5]]}
            for i, y, idx, s in zip(merged["index"], merged["label"], merged["top_idx"], merged["top_score"])
        ]
    return EvalResult(metrics, len(merged["index"]), len(dataset), skipped, predictions, seconds)  # type: ignore[arg-type]
