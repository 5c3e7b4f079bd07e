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
import pickle
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import rows, weights
from .._io import atomic_write
from ..config import EvalSpec, LoaderSpec
from ..data.loader import Indexed, build_eval_loader, input_path
from ..data.transforms import EvalTransform
from ..errors import CheckpointError, ConfigError, DatasetError, ImageError, InvalidOptionError
from ..optimize import InferenceOnly, model_device, optimize_for_inference
from .distributed import DistInfo, all_gather_object, get_rank, get_world_size, rank0_first

log = logging.getLogger("cspnet")


def forward_batch(model: torch.nn.Module, images: torch.Tensor, transform: EvalTransform, tta: bool = False,
                  amp: bool = False, subset: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images ``(N, 3, H, W)`` on the model's device -> softmax scores ``(N, num_classes)`` float32. ``tta``:
    average the softmax of the image and its horizontal mirror (mmpretrain's ``--tta``); ``amp``: bfloat16 autocast.
    ``subset``: bool ``(num_classes,)``, the classes a test set can hold (ImageNet-R/-A's 200): the softmax of the
    logits restricted to them, as those sets' authors evaluate; the other classes score 0."""
    def probs(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return (logits if subset is None else logits.masked_fill(~subset, float("-inf"))).softmax(dim=1)

    x = transform.normalize(images)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        scores = probs(model(x))
        if tta:
            scores = (scores + probs(model(x.flip(3)))) / 2
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
    # ReaL: the samples whose label set is empty are left out of the metrics, as the ReaL paper does
    unscored: int = 0
    # per sample in index order, with keep_scores: (index, path, label, softmax (num_classes,)), for mmpretrain's pkl
    scores: list[tuple[int, str, int, np.ndarray]] | None = None

    @property
    def images_per_second(self) -> float:
        return (self.num_samples + len(self.skipped)) / self.seconds if self.seconds > 0 else float("nan")


def _sample_path(dataset: Any, index: int) -> str:
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"sample {index}"


def _class_subset(dataset: Any, num_classes: int | None, device: torch.device) -> torch.Tensor | None:
    """The bool mask ``(num_classes,)`` of a dataset's ``class_subset`` (ImageNet-R/-A), or None for all classes."""
    subset = getattr(dataset, "class_subset", None)
    if subset is None:
        return None
    if num_classes is None or max(subset) >= num_classes:
        raise DatasetError(f"{dataset.describe()} holds a subset of ImageNet's 1000 classes; the model predicts "
                           f"{num_classes}: test a 1000-class ImageNet model on it")
    mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
    mask[list(subset)] = True
    return mask


def _row_batch(dataset: Any, indices: torch.Tensor, labels: torch.Tensor, top_idx: torch.Tensor,
               top_score: torch.Tensor, classes: Any, label_sets: Any) -> list[dict[str, Any]]:
    """One batch's per-image rows (:mod:`cspnet.rows`), its top 5 at most."""
    idx, sc = top_idx[:, :5].cpu().tolist(), top_score[:, :5].cpu().tolist()
    return [rows.make_row(i, _sample_path(dataset, i), t, s, classes, label=y,
                          labels=label_sets[i] if label_sets is not None else None)
            for i, y, t, s in zip(indices.tolist(), labels.tolist(), idx, sc)]


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
             decode: Callable[[Any], torch.Tensor] | None = None,
             write_rows: Callable[[list[dict[str, Any]]], None] | None = None,
             keep_scores: bool = False) -> EvalResult:
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
        write_rows: receives this rank's per-image rows (:mod:`cspnet.rows`) batch by batch, as they are computed,
            and an error row per unreadable image under ``skip_bad``.
        keep_scores: also return every sample's whole softmax (``scores``; gathered to every rank: N x classes).

    A dataset with ``class_subset`` (ImageNet-R/-A) is scored over those classes only; one with ``label_sets``
    (ReaL) counts a sample correct at k when one of its k best classes is in its set, and leaves out the samples
    whose set is empty.

    Raises:
        ImageError: for an unreadable image, without ``skip_bad`` (in a multi-process run: after the pass, on
            every rank, so that no rank is left waiting).
        DatasetError: when no image at all could be read.
    """
    from tqdm import tqdm

    dataset = loader.dataset.dataset if isinstance(loader.dataset, Indexed) else loader.dataset
    dev = torch.device(device) if device is not None else model_device(model)
    model.eval()
    _check_labels(dataset, getattr(model, "num_classes", None))
    if optimize or compile or cuda_graph:
        model = optimize_for_inference(model, fuse=optimize, channels_last=None if optimize else False,
                                       dtype=torch.bfloat16 if amp else None, compile=compile, cuda_graph=cuda_graph)
    world, num_classes, ks = get_world_size(), None, sorted(set(topk))
    subset = _class_subset(dataset, getattr(model, "num_classes", None), dev)
    label_sets, classes = getattr(dataset, "label_sets", None), getattr(model, "classes", None)
    parts: dict[str, list] = {"index": [], "label": [], "top_idx": [], "top_score": [], "label_pos": []}
    if keep_scores:
        parts["scores"] = []
    bad: list[tuple[int, str]] = []
    start = time.perf_counter()
    bar = tqdm(total=len(loader.sampler), unit="img", desc="test",  # type: ignore[arg-type]
               disable=not progress or get_rank() != 0, dynamic_ncols=True, mininterval=1.0, leave=False)
    for indices, images, labels, batch_bad in loader:
        if batch_bad:
            if not skip_bad and world == 1:
                raise ImageError(f"{batch_bad[0][1]} (use --skip-bad to continue past unreadable images)")
            bad += batch_bad
            if write_rows is not None:
                write_rows([rows.error_row(i, _sample_path(dataset, i), msg) for i, msg in batch_bad])
        if images is not None:
            batch = decode(images) if decode is not None else images.to(dev, non_blocking=True)
            scores = forward_batch(model, batch, transform, tta=tta, amp=amp, subset=subset)
            num_classes = scores.shape[1]
            # the metrics' largest k, and the rows' top 5
            top_score, top_idx = scores.topk(min(max(ks) if write_rows is None else max(*ks, 5), num_classes), dim=1)
            label_pos = scores.gather(1, labels.to(dev, non_blocking=True)[:, None])[:, 0] > 0
            # Kept on the device until the end: a copy to the CPU per batch would make the loop wait for the GPU
            # every step, so loading and decoding the next batch could not overlap the model's work. (Rows are
            # the exception: written as they come, so that a killed run keeps them.)
            for key, t in zip(parts, (indices, labels, top_idx, top_score, label_pos, scores)):
                parts[key].append(t)
            if write_rows is not None:
                write_rows(_row_batch(dataset, indices, labels, top_idx, top_score, classes, label_sets))
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
    # (N, k): where a true class sits in the top k, counted (mmpretrain's rule) only with a score > 0
    if label_sets is None:
        hits = (merged["top_idx"] == merged["label"][:, None]) & merged["label_pos"][:, None]
    else:  # ReaL: any class of the image's label set; an image with an empty set is not scored
        hits = np.array([[c in label_sets[i] for c in top] for i, top in zip(merged["index"], merged["top_idx"])],
                        dtype=bool).reshape(merged["top_idx"].shape) & (merged["top_score"] > 0)
        hits = hits[[len(label_sets[i]) > 0 for i in merged["index"]]]
    if not len(hits):
        raise DatasetError(f"no image of {dataset.describe()} has a label to score")
    correct = {k: hits[:, :k].any(axis=1) for k in ks if k <= num_classes}
    metrics = {f"{prefix}/top{k}": 100.0 * float(c.sum()) / len(c) for k, c in correct.items()}
    predictions = [
        {"path": _sample_path(dataset, int(i)), "label": int(y), "pred_label": int(idx[0]),
         "pred_score": float(s[0]), "top5": [int(c) for c in idx[:5]]}
        for i, y, idx, s in zip(merged["index"], merged["label"], merged["top_idx"], merged["top_score"])
    ] if keep_predictions else None
    scores = [(int(i), _sample_path(dataset, int(i)), int(y), s) for i, y, s in
              zip(merged["index"], merged["label"], merged["scores"])] if keep_scores else None
    return EvalResult(metrics, len(merged["index"]), len(dataset), skipped, predictions,  # type: ignore[arg-type]
                      seconds, len(merged["index"]) - len(hits), scores)


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
    re-heads, unlike fine-tuning). An int8 ``.onnx`` file (``cspnet export --dtype int8``) gives its
    :class:`~cspnet.quantize.QuantizedModel`, under the same checks, and its crop must be the config's."""
    if isinstance(checkpoint, (str, os.PathLike)) and str(checkpoint).lower().endswith(".onnx"):
        return _int8_for_test(spec, str(checkpoint), dataset_classes)
    found = weights.read(checkpoint, spec.model.arch, use_ema=use_ema, **where)
    model, held = spec.model, found.spec
    fix = f"set model.head.num_classes={found.num_classes} or test with the config it was trained with"
    if found.num_classes != model.num_classes:
        what = "has no head" if found.num_classes is None else f"has a {found.num_classes}-class head"
        raise CheckpointError(f"{found.source} {what}, but the config builds {model.num_classes} classes: {fix}")
    names = held.classes if held is not None else None
    _check_classes(found.source, names, dataset_classes)
    # on the meta device: load_state assigns the checkpoint's tensors (no random init, no copy)
    net = model.replace(classes=model.classes or names).build(init=False)
    weights.load_state(net, found)
    return net


def _check_classes(source: str, names: Any, dataset_classes: tuple[str, ...] | None) -> None:
    """A checkpoint's class names (None: unknown) must be the test set's, in order."""
    if names is not None and dataset_classes is not None and tuple(names) != tuple(dataset_classes):
        raise CheckpointError(f"{source} was trained on classes {list(names)[:5]}..., the test set has "
                              f"{list(dataset_classes)[:5]}...: the labels would not mean the same classes")


def _int8_for_test(spec: EvalSpec, path: str, dataset_classes: tuple[str, ...] | None) -> torch.nn.Module:
    from ..quantize import load_quantized

    model, want = load_quantized(path), spec.model
    held = model.spec
    if (held.arch, held.num_classes) != (want.arch, want.num_classes):
        raise CheckpointError(f"{path!r} is an int8 {held.arch} with {held.num_classes} classes; the config builds "
                              f"{want.arch} with {want.num_classes}: test it with the config it was made from")
    _check_classes(repr(path), held.classes, dataset_classes)
    if model.image_size != (want.eval.crop, want.eval.crop):
        raise CheckpointError(f"{path!r} was calibrated for {model.image_size[0]} x {model.image_size[1]} inputs; "
                              f"the config's test pipeline crops {want.eval.crop}: set its crop_size (or export at "
                              f"this size)")
    return model


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
             out_item: str = "pred", work_dir: str | os.PathLike | None = None,
             say: Callable[[str], None] = log.info, **where) -> TestRun:
    """Evaluate ``checkpoint`` (a file, URL, True for the published weights, or a state dict) on ``spec``'s test set,
    on ``dist.device`` (one process, or this rank's shard under torchrun). The arguments left None take the
    config's value; ``tta``/``amp`` add to its ``tta_model``/``test_cfg.fp16``. ``output``: by its extension
    (:func:`check_output`), the per-image rows as they come (``.jsonl``/``.csv``/``.parquet``, with the summary in
    ``<output>.meta.json``), mmpretrain's pickle (``.pkl``) or the summary with the predictions (``.json``);
    ``out_item='metrics'``: the metrics alone (``.json``/``.pkl``). ``work_dir``: the summary, the resolved config
    and (with :func:`~cspnet.engine.distributed.setup_logging`) the log. ``say`` (rank 0) receives the three lines that state
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
    kind = check_output(output, out_item) if output is not None else None
    with _rank_rows(output if kind == "rows" else None, dist) as writer:
        result = evaluate(model, loader, transform, device=dist.device, topk=spec.metrics.topk,
                          prefix=spec.metrics.prefix, tta=tta, amp=amp, skip_bad=skip_bad,
                          keep_predictions=kind == "json", optimize=optimize, compile=compile, cuda_graph=cuda_graph,
                          decode=inp.on_device, write_rows=writer.write if writer is not None else None,
                          keep_scores=kind == "pkl")
    preset = spec.model.eval
    summary = {
        "config": spec.source.file, "checkpoint": str(checkpoint), "model": spec.model.arch,
        "dataset": {"root": dataset.root, "source": dataset.source, "layout": dataset.layout,
                    "num_images": result.num_images, "num_classes": dataset.num_classes},
        "eval": {"resize": preset.resize, "crop": preset.crop, "interpolation": preset.interpolation,
                 "mean": list(preset.mean), "std": list(preset.std), "amp": amp, "tta": tta,
                 "dtype": "int8" if isinstance(model, InferenceOnly) else "bf16" if amp else "fp32",
                 "world_size": dist.world_size, "batch_size": batch},
        "num_samples": result.num_samples, "skipped": [{"path": p, "error": e} for p, e in result.skipped],
        "metrics": result.metrics,
    }
    if result.unscored:
        summary["unscored"] = result.unscored  # ReaL's images with an empty label set
    if dist.is_main and work_dir is not None:
        _write_json(Path(work_dir) / f"test_{time.strftime('%Y%m%d_%H%M%S')}.json", summary)
        spec.source.dump(work_dir)
    if dist.is_main and output is not None:
        _write_output(Path(output), kind, out_item, summary, result, model)
    return TestRun(result, summary)


def check_output(output: str | os.PathLike, out_item: str = "pred") -> str:
    """What ``--out`` writes, by its extension: 'rows', 'pkl' or 'json'; checked before any work.

    Raises:
        InvalidOptionError: another extension, parquet without pyarrow, or rows asked for the metrics alone.
    """
    suffix = Path(output).suffix.lower()
    if out_item not in ("pred", "metrics"):
        raise InvalidOptionError(f"--out-item {out_item!r}: use 'pred' or 'metrics'")
    if suffix in (".pkl", ".pickle"):
        return "pkl"
    if suffix == ".json":
        return "json"
    if out_item == "metrics" and suffix in rows.FORMATS:
        raise InvalidOptionError(f"--out {str(output)!r} --out-item metrics: the metrics are one record; name the "
                                 f"file .json or .pkl")
    try:
        rows.check_format(output, "--out")
    except InvalidOptionError:
        raise InvalidOptionError(f"--out {str(output)!r}: the extension decides what is written: .jsonl, .csv or "
                                 f".parquet (a row per image), .pkl (mmpretrain's pickle) or .json (the summary "
                                 f"with the predictions)") from None
    return "rows"


@contextmanager
def _rank_rows(output: str | os.PathLike | None, dist: DistInfo) -> Iterator[rows.RowWriter | None]:
    """This rank's row writer for ``output``: the file itself in one process; under torchrun each rank writes its
    own part beside it as rows come, and rank 0 merges the parts into ``output`` in index order when all are done."""
    if output is None:
        yield None
        return
    out = Path(output)
    parts = [rows.part_path(out, r, dist.world_size) for r in range(dist.world_size)]
    mine = out if dist.world_size == 1 else parts[dist.rank]
    if dist.world_size > 1:
        mine.unlink(missing_ok=True)  # a killed run's part: its rows are in no merged file
    # replace: an earlier result at the output is kept until this one is complete (a new file is written in place,
    # so a killed run keeps the rows it wrote)
    with rows.open_writer(mine, replace=True, what="--out") as writer:
        yield writer
    if dist.world_size > 1:
        all_gather_object(None)  # every rank's part closed before rank 0 reads them
        if dist.is_main:
            rows.merge(parts, out, what="--out")
            for part in parts:
                part.unlink()


def _write_output(path: Path, kind: str, out_item: str, summary: dict[str, Any], result: EvalResult,
                  model: torch.nn.Module) -> None:
    """The ``--out`` file of :func:`run_test` (rows were written during the pass: here their sidecar)."""
    if kind == "rows":
        classes = getattr(model, "classes", None)
        rows.write_meta(path, {**summary, "classes": list(classes) if classes else None})
    elif kind == "json":
        _write_json(path, summary["metrics"] if out_item == "metrics" else
                    {**summary, "predictions": result.predictions})
    elif out_item == "metrics":
        atomic_write(path, lambda tmp: tmp.write_bytes(pickle.dumps(result.metrics)), what="--out")
    else:
        # mmpretrain's DumpResults: DataSample.to_dict() per sample, tensors on the CPU. pred_label is the argmax
        # of the (TTA-averaged) scores, which mmpretrain's AverageClsScoreTTA leaves stale.
        samples = [{"pred_score": torch.from_numpy(s), "pred_label": torch.tensor([int(s.argmax())]),
                    "gt_label": torch.tensor([label]), "img_path": p, "sample_idx": i, "num_classes": len(s)}
                   for i, p, label, s in result.scores or []]
        atomic_write(path, lambda tmp: tmp.write_bytes(pickle.dumps(samples)), what="--out")


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8"))
