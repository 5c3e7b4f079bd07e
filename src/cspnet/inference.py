"""The user's front door, as mmpretrain's ``apis``: :func:`get_model` (a model from a name, a config file or a
checkpoint file) and :func:`inference_model` (classify one image or many)."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from . import config, rows, zoo
from ._io import output_path
from .data.datasets import IMG_EXTENSIONS, image_files, is_image_file, read_lines
from .data.loader import ImageList, build_eval_loader, input_path
from .data.transforms import ImageLike
from .engine.distributed import all_gather_object, broadcast_object, get_rank, get_world_size
from .errors import CSPNetError, DatasetError, ImageError, InvalidOptionError
from .models import CSPNet, ImageClassifier
from .optimize import InferenceOnly, model_device, optimize_for_inference
from .spec import ModelSpec

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
T = TypeVar("T")
log = logging.getLogger("cspnet")


def get_model(model: str | os.PathLike | ModelSpec, pretrained: Any = False, *args, **kwargs
              ) -> ImageClassifier | CSPNet:
    """A model, optionally with weights, in eval mode: :func:`cspnet.zoo.get_model` (its arguments and options),
    where ``model`` may also be a config file (``configs/cspnet/cspdarknet50_8xb32_in1k.py``: its model;
    ``pretrained=True`` then uses its ``load_from``, as mmpretrain's ``get_model``) or a checkpoint file (``.pth``,
    ``.safetensors``, ...), which carries its model and its weights: ``get_model('work_dirs/run/best.pth')``.
    An int8 ``.onnx`` file (``cspnet export --dtype int8``), as the model or as ``pretrained``, gives its
    :class:`~cspnet.quantize.QuantizedModel` (CPU only).
    """
    path = str(model) if isinstance(model, (str, os.PathLike)) else ""
    weights = str(pretrained) if isinstance(pretrained, (str, os.PathLike)) else ""
    if path.lower().endswith(".onnx") or weights.lower().endswith(".onnx"):
        return _int8_model(path if path.lower().endswith(".onnx") else weights,
                           None if path.lower().endswith(".onnx") else model, *args, **kwargs)
    if path.endswith(".py"):
        cfg = config.load_config(path)
        if pretrained is True:
            pretrained = config.load_from(cfg) or True
        if config.head_width(cfg) is None and pretrained not in (False, True, None):
            # the config leaves the head to the data: a checkpoint brings its own (and its class names), so no
            # dataset need be at hand; its architecture must still be the config's
            return zoo.get_model(config.model_spec(cfg, classes_from=None).arch, pretrained, *args, **kwargs)
        return zoo.get_model(config.model_spec(cfg), pretrained, *args, **kwargs)
    if Path(path).suffix.lower() in CHECKPOINT_SUFFIXES:
        if pretrained not in (False, True):
            raise InvalidOptionError(f"get_model({path!r}, pretrained={pretrained!r}): a checkpoint given as the "
                                     f"model brings its weights; give the file once")
        return zoo.get_model(None, path, *args, **kwargs)
    return zoo.get_model(model, pretrained, *args, **kwargs)


def _int8_model(path: str, name: Any, device: Any = None, num_classes: int | None = None,
                use_ema: bool | None = None, **where: Any) -> torch.nn.Module:
    """The int8 model in ``path``, checked against what the caller asked for (``where``: the weight sources,
    which a local file does not use)."""
    from .quantize import load_quantized

    if device is not None and torch.device(device).type != "cpu":
        raise InvalidOptionError(f"{path!r} is an int8 model, which runs on the CPU (ONNX Runtime); use --device cpu")
    if use_ema is not None:
        raise InvalidOptionError(f"{path!r} is an int8 model: it holds one set of weights (--ema/--no-ema choose "
                                 f"a training checkpoint's)")
    model = load_quantized(path)
    if name not in (None, model.spec.arch, model.name):
        raise InvalidOptionError(f"{path!r} holds an int8 {model.spec.arch}, not {name!r}")
    if num_classes is not None and num_classes != model.num_classes:
        raise InvalidOptionError(f"{path!r} has a {model.num_classes}-class head; an int8 model cannot be re-headed "
                                 f"(--num-classes {num_classes}): quantize the fine-tuned model")
    return model


# model -> (its tensors and their versions, its fast copy). Folding takes ~0.1 s, as long as a CPU forward pass at
# batch 1: made on every call it doubled the time of a loop classifying one image per call.
_FAST_COPIES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[list, Any, torch.nn.Module]]" = \
    weakref.WeakKeyDictionary()
DTYPES = ("fp32", "bf16", "int8")


def _fast_copy(model: torch.nn.Module, dtype: str | None = None) -> torch.nn.Module:
    """``optimize_for_inference(model, dtype=...)`` (``dtype``: None or 'fp32', 'bf16'; an int8 model runs as it
    is), cached until any parameter or buffer of ``model`` is replaced, moved, cast or changed in place
    (``load_state_dict``, an optimiser step, ``.to()``, ``p.data = ...``) or another dtype is asked for."""
    dtype = _check_dtype(model, dtype)
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_inference() for t in tensors):  # made under inference_mode: no version counter to watch
        return optimize_for_inference(model, dtype=dtype)
    # The storage too: .to(dtype) and `p.data = ...` swap it without a version bump
    state = [(t._version, t.data_ptr(), t.device, t.dtype) for t in tensors]
    cached = _FAST_COPIES.get(model)
    # Weak references, not ids: a replaced tensor's id may be reused by its successor.
    if cached is not None and cached[1] == dtype and len(cached[0]) == len(tensors) and all(
            ref() is t and old == new for (ref, old), t, new in zip(cached[0], tensors, state)):
        return cached[2]
    net = optimize_for_inference(model, dtype=dtype)
    _FAST_COPIES[model] = ([(weakref.ref(t), s) for t, s in zip(tensors, state)], dtype, net)
    return net


def _pipeline(model: torch.nn.Module, transform: Any, items: list, batch_size: int, num_workers: int | None,
              resize: str, optimize: bool, dtype: str | None) -> tuple[torch.nn.Module, Any, Any, torch.device]:
    """What classifying ``items`` takes: the network that runs (:func:`_network`), the input path (where the resize
    runs: :func:`~cspnet.data.loader.input_path`), the loader over ``items`` and the device."""
    dev = model_device(model)
    net = _network(model, optimize, dtype)
    inp = input_path(transform.preset, dev, resize)
    if num_workers is None:  # workers pay off from the second batch on
        batches = -(-len(items) // max(batch_size, 1))
        num_workers = min(os.cpu_count() or 1, batches) if batches > 1 else 0
    loader = build_eval_loader(ImageList(items, inp.read), batch_size, num_workers, pin_memory=dev.type == "cuda")
    return net, inp, loader, dev


def _network(model: torch.nn.Module, optimize: bool, dtype: str | None) -> torch.nn.Module:
    """What runs: the fast copy (:func:`_fast_copy`), or with ``optimize=False`` the model itself, in float32."""
    if optimize:
        return _fast_copy(model, dtype)
    if _check_dtype(model, dtype) is not None:
        raise InvalidOptionError(f"dtype={dtype!r} runs the fast copy: not with optimize=False")
    return model


def _check_dtype(model: torch.nn.Module, dtype: str | None) -> str | None:
    """``dtype`` (None, 'fp32', 'bf16', 'int8') for ``model`` -> what :func:`optimize_for_inference` takes. int8
    is a property of the weights (a file from ``cspnet export --dtype int8``), not a conversion done here."""
    if dtype not in (None, *DTYPES):
        raise InvalidOptionError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")
    if isinstance(model, InferenceOnly):
        if dtype not in (None, "int8"):
            raise InvalidOptionError(f"{getattr(model, 'name', 'the model')} is an int8 model; --dtype {dtype} "
                                     f"needs the float weights")
        return None
    if dtype == "int8":
        raise InvalidOptionError("--dtype int8 runs the int8 file that `cspnet export --dtype int8 --calib IMAGES` "
                                 "writes: give that .onnx file as --weights")
    return "bf16" if dtype == "bf16" else None


@torch.inference_mode()
def inference_model(model: ImageClassifier | str, images: ImageLike | Sequence[ImageLike],
                    device: str | torch.device | None = None, batch_size: int = 16, topk: int | None = None,
                    optimize: bool = True, num_workers: int | None = None, resize: str = "auto",
                    dtype: str | None = None,
                    progress: bool | None = False, **get_model_kwargs) -> dict[str, Any] | list[dict[str, Any]]:
    """Classify images.

    Args:
        model: an :class:`~cspnet.models.ImageClassifier`, or a model name (then built with
            ``get_model(name, pretrained=True, **get_model_kwargs)``).
        images: one image or a list. An image is a file path (any format Pillow opens), a ``PIL.Image``, or a
            NumPy array ``(H, W, 3)`` in **RGB** order, uint8 (mmpretrain assumes BGR for arrays; this does not).
        device: where to run (default: the model's device).
        batch_size: images per forward pass.
        topk: also return the ``topk`` best ``(label, score, class)`` triples under ``"topk"``.
        optimize: run a fast inference copy of the model (BatchNorm folded into the convolutions, channels_last:
            :func:`cspnet.optimize_for_inference`), which gives the same scores up to float rounding. ``model``
            itself is not changed; the copy is kept with it and made again only when its weights change.
        dtype: the fast copy's numerics: 'fp32' (default), 'bf16' (bf16 weights and activations; on a CPU only
            where it has bf16 instructions: :func:`cspnet.optimize.cpu_features`) or 'int8' (only to confirm that
            ``model`` is an int8 :class:`~cspnet.quantize.QuantizedModel`, which runs as it is).
        num_workers: processes that decode and resize images while the model runs. Default: with more images than
            one batch, one per CPU core (at most one per batch); else 0 (this process).
        resize: where the exact resize + centre crop runs: ``'loader'`` (with the decoding), ``'device'`` (on the
            model's device, :mod:`cspnet.data.resample`: the same pixels), ``'auto'`` (``'device'`` on CUDA).
        progress: a progress bar (images, img/s, ETA) on stderr: True, False, or None for only when stderr is a
            terminal (tqdm's ``disable=None``).

    Returns:
        For one image a dict, for a list a list of dicts, each with ``pred_label`` (int), ``pred_score`` (float,
        softmax probability), ``pred_scores`` (float32 array ``(num_classes,)``) and ``pred_class`` (str, when the
        model knows its class names).
    """
    if isinstance(model, str):
        get_model_kwargs.setdefault("pretrained", True)
        model = get_model(model, device=device, **get_model_kwargs)
    elif device is not None:
        model = model.to(device)
    model.eval()
    transform = model.transform or zoo.get_transform(model.backbone.arch.name)
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    net, inp, loader, dev = _pipeline(model, transform, items, batch_size, num_workers, resize, optimize, dtype)
    results = []
    with tqdm(total=len(items), unit="img", desc="predict", disable=None if progress is None else not progress,
              dynamic_ncols=True, leave=False) as bar:
        for _, batch, _, bad in loader:
            if bad:  # the first unreadable image, named by its ImageError
                raise ImageError(bad[0][1])
            batch = inp.on_device(batch) if inp.on_device else batch.to(dev, non_blocking=True)
            scores = net(transform.normalize(batch)).float().softmax(dim=1).cpu()
            bar.update(len(scores))
            results += [_result(row, model.classes, topk) for row in scores]
    return results[0] if single else results


def _result(scores: torch.Tensor, classes: Sequence[str] | None, topk: int | None) -> dict[str, Any]:
    """One image's softmax scores ``(num_classes,)`` -> :func:`inference_model`'s dict."""
    label = int(scores.argmax())
    res = {"pred_label": label, "pred_score": float(scores[label]), "pred_scores": scores.numpy().astype(np.float32)}
    if classes is not None:
        res["pred_class"] = classes[label]
    if topk:
        vals, idx = scores.topk(min(topk, scores.numel()))
        res["topk"] = [(int(i), float(v), classes[int(i)] if classes is not None else None) for v, i in zip(vals, idx)]
    return res


# --------------------------------------------------------------------------------------------- many files at once
def expand_inputs(inputs: Sequence[str | os.PathLike], stdin: TextIO | None = None) -> list[str]:
    """The image paths that ``cspnet predict``'s arguments name, in argument order, each argument expanded once:

    - a folder: its images (the dataset's :data:`~cspnet.data.datasets.IMG_EXTENSIONS`, any case), recursively,
      sorted (a linked folder listed once, as a dataset's);
    - a glob pattern that is not itself a path (``*``, ``?``, ``[...]``; ``**`` crosses folders): the images it
      matches, sorted, a matched folder expanded as above;
    - ``@FILE``: its lines, one path each, as written (blank lines skipped; a relative path is relative to the working
      folder, as ``find``'s output is); ``-``: the lines of ``stdin`` (default ``sys.stdin``) likewise;
    - anything else: itself (a file of any extension Pillow reads, or a path the reader names when it comes to it:
      missing, a URL, a FIFO; with ``skip_bad`` it gets an error row).

    A path given twice (compared after ``os.path.normpath``) is kept once, at its first place: every image gets one
    row, and a resumed run can go by path.

    Raises:
        InvalidOptionError: a glob or folder without images, an unreadable ``@FILE``, no image at all.
    """
    found: list[str] = []
    for given in inputs:
        arg = os.fspath(given)
        if arg == "-" or (arg.startswith("@") and len(arg) > 1):
            if arg == "-":
                lines = (line.rstrip("\r\n") for line in (stdin or sys.stdin))
            else:
                try:
                    lines = iter(read_lines(Path(arg[1:]), "list file"))  # the encodings and line ends people use
                except DatasetError as e:
                    raise InvalidOptionError(f"{arg}: {e}") from None
            found += [line for line in lines if line.strip()]
        elif os.path.isdir(arg):
            images = image_files(Path(arg), {_folder_id(arg)})
            if not images:
                raise InvalidOptionError(f"folder {arg!r} holds no images ({', '.join(IMG_EXTENSIONS)}, any case, "
                                         f"in any subfolder)")
            found += images
        elif not os.path.lexists(arg) and glob.has_magic(arg) and "://" not in arg:
            images, listed = set(), set()
            for match in glob.glob(arg, recursive=True):
                if os.path.isdir(match):
                    # 'top/**' matches top and every folder and file below it: each folder is listed once, and an
                    # image both matched and listed is one image
                    if _folder_id(match) not in listed:
                        listed.add(_folder_id(match))
                        images.update(image_files(Path(match), listed))
                elif is_image_file(match):
                    images.add(match)
            if not images:
                raise InvalidOptionError(f"{arg!r} matches no image ({', '.join(IMG_EXTENSIONS)}, any case); name a "
                                         f"file of another kind by its path")
            found += sorted(images)
        else:
            found.append(arg)
    paths, seen = [], set()
    for path in found:
        key = os.path.normpath(path)
        if key not in seen:
            seen.add(key)
            paths.append(path)
    if len(paths) < len(found):
        log.warning("%d path(s) named more than once: each is predicted once, at its first place",
                    len(found) - len(paths))
    if not paths:
        raise InvalidOptionError(f"no images in {' '.join(map(str, inputs)) or 'the arguments'}: give files, folders, "
                                 f"globs, @LIST files or - (paths on stdin)")
    return paths


def _folder_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class PredictPlan:
    """What a :func:`predict_files` run will do, resolved once (on rank 0, and sent to the others): ``paths``, the
    expanded inputs (a row's ``index`` is its place here); ``todo``, the indices still to predict; ``output``, the
    rows file (None: rows returned); ``resumed``, rows already in the output or its parts; ``parts``, part files of a
    killed run whose rows are not in the output yet (merged into it first), ``stale``, those whose rows are (the run
    was killed between its merge and their removal: removed)."""
    paths: list[str]
    todo: list[int]
    output: Path | None = None
    resumed: int = 0
    parts: tuple[Path, ...] = ()
    stale: tuple[Path, ...] = ()


def _done_indices(file: Path, paths: Sequence[str], output: Path) -> set[int]:
    """The indices of the rows in ``file``, each checked to be that of its path in ``paths``."""
    done: set[int] = set()
    for row in rows.iter_rows(file):
        i = row["index"]
        if not isinstance(i, int) or not 0 <= i < len(paths) or paths[i] != row["path"]:
            here = f"this run's inputs have {paths[i]!r} there" if isinstance(i, int) and 0 <= i < len(paths) else \
                f"this run has {len(paths)} inputs"
            raise InvalidOptionError(f"--output {str(output)!r}: {str(file)!r} has {row['path']!r} at index {i}, but "
                                     f"{here}: it was written for other inputs (or from another folder); give the "
                                     f"same inputs from the same folder, or another --output")
        if i in done:
            raise InvalidOptionError(f"--output {str(output)!r}: {str(file)!r} holds index {i} twice; it was not "
                                     f"written by cspnet predict: give another --output")
        done.add(i)
    return done


def plan_predict(inputs: Sequence[str | os.PathLike], output: str | os.PathLike | None = None, *,
                 resume: bool = False, stdin: TextIO | None = None) -> PredictPlan:
    """Expand ``inputs`` (:func:`expand_inputs`) and read what an earlier run left in ``output`` (with ``resume``),
    before any model work. Under torchrun rank 0 does it (stdin reaches one process; every rank must shard the
    same list) and the others receive the plan; an error there is raised on every rank.

    Raises:
        InvalidOptionError: bad inputs (:func:`expand_inputs`), an unknown output format, an existing output (or
            parts of one) without ``resume``, rows of other inputs with it.
    """
    return _on_rank0(lambda: _plan(inputs, output, resume, stdin))


def _on_rank0(work: Callable[[], T]) -> T:
    """``work()`` on rank 0, its result sent to every rank; an error there is raised on every rank (the same class),
    where the others would wait for rank 0 until the timeout. In one process: ``work()``."""
    if get_world_size() == 1:
        return work()
    if get_rank() == 0:
        try:
            result = work()
        except Exception as e:
            broadcast_object(("error", type(e), str(e)))
            raise
        broadcast_object(("ok", result, None))
        return result
    kind, value, message = broadcast_object(None)
    if kind == "error":
        raise (value if issubclass(value, CSPNetError) else InvalidOptionError)(f"rank 0: {message}")
    return value


def _plan(inputs: Sequence[str | os.PathLike], output: str | os.PathLike | None, resume: bool,
          stdin: TextIO | None) -> PredictPlan:
    if output is None:
        if resume:
            raise InvalidOptionError("--resume continues an --output file: give --output")
        paths = expand_inputs(inputs, stdin)
        return PredictPlan(paths, list(range(len(paths))))
    rows.check_format(output, "--output")
    paths = expand_inputs(inputs, stdin)
    # never over an input: only an input with a rows file's extension can be the output (a stat per path would cost
    # minutes on a network file system for a million)
    output_path(output, "--output", [p for p in paths if Path(p).suffix.lower() in rows.FORMATS])
    out = Path(output)
    parts = rows.part_files(out)
    exists = out.is_file() and out.stat().st_size > 0
    if (exists or parts) and not resume:
        what = "exists" if exists else f"has the parts of a killed run ({', '.join(p.name for p in parts)})"
        raise InvalidOptionError(f"--output {str(out)!r} {what}: continue it with --resume, or give another name "
                                 f"(a partial result is never overwritten)")
    done = _done_indices(out, paths, out) if exists else set()
    live, stale = [], []
    for part in parts:
        got = _done_indices(part, paths, out)
        if got <= done:
            stale.append(part)
        elif got & done:
            raise InvalidOptionError(f"--output {str(out)!r}: {part.name} holds some of its rows, not all; remove "
                                     f"whichever is wrong, or give another --output")
        else:
            live.append(part)
            done |= got
    return PredictPlan(paths, [i for i in range(len(paths)) if i not in done], out, len(done), tuple(live),
                       tuple(stale))


@dataclass
class PredictResult:
    """What :func:`predict_files` did, over every rank: ``written`` rows this call added to ``output`` (``resumed``
    were there already) out of ``num_inputs``; ``errors``, the ``(path, reason)`` of the images written as error rows
    (``skip_bad``); ``rows``, every row in input order when there was no output file (else None)."""
    output: Path | None
    num_inputs: int
    resumed: int
    written: int
    errors: list[tuple[str, str]]
    seconds: float
    rows: list[dict[str, Any]] | None = None

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("nan")


def predict_files(model: ImageClassifier | str, inputs: Sequence[str | os.PathLike] | PredictPlan,
                  output: str | os.PathLike | None = None, *, batch_size: int = 32, num_workers: int | None = None,
                  topk: int = 5, skip_bad: bool = False, resume: bool = False, device: str | torch.device | None = None,
                  resize: str = "auto", optimize: bool = True, progress: bool | None = None, dtype: str | None = None,
                  stdin: TextIO | None = None) -> PredictResult:
    """Classify many image files into a rows file (:mod:`cspnet.rows`: one row per image, ``index`` its place in
    the expanded inputs), in one process or under torchrun (each rank a disjoint shard; call it on every rank).

    Args:
        model: an :class:`~cspnet.models.ImageClassifier`, or a name (``get_model(name, pretrained=True)``).
        inputs: files, folders, globs, ``@LIST`` files, ``-`` (:func:`expand_inputs`), or a :func:`plan_predict`.
        output: ``.jsonl``, ``.csv`` or ``.parquet`` (pyarrow). In one process a ``.jsonl``/``.csv`` receives the rows
            in input order as they come, flushed per batch; under torchrun (and for parquet, which cannot be read
            until closed) each rank writes :func:`cspnet.rows.part_path`, and rank 0 merges the parts into
            ``output`` in index order at the end, atomically, and removes them. None: the rows are returned in ``rows``.
        resume: continue an output (and parts) that a killed or failed run left: its rows' paths are skipped, the
            rest appended; without it an existing output is an error. The rows must be of the same inputs (each
            row's path at its index), model, classes, top-k and preprocessing (the ``<output>.meta.json`` sidecar).
        skip_bad: an unreadable image gets a row with ``error`` (its prediction fields None) instead of stopping.
        topk: best classes per row (at most the model's number of classes).
        batch_size, num_workers, device, resize, optimize, dtype, progress: as :func:`inference_model`'s (the bar,
            on rank 0: images/s and ETA of its shard).

    Raises:
        ImageError: an unreadable image without ``skip_bad``, naming it: the rows written before it are complete
            and kept (in one process, every row before it; under torchrun the ranks finish their shards and rank 0
            merges), so ``resume`` continues once it is fixed, or with ``skip_bad`` gives it an error row.
        InvalidOptionError: see :func:`plan_predict`; a resume with another model, class names, top-k or eval.
    """
    if isinstance(inputs, PredictPlan):
        if output is not None or resume or stdin is not None:
            raise InvalidOptionError("predict_files(model, plan): the plan has its output and resume; give them to "
                                     "plan_predict")
        plan = inputs
    else:
        plan = plan_predict(inputs, output, resume=resume, stdin=stdin)
    return run_predict(model, plan, batch_size=batch_size, num_workers=num_workers, topk=topk, skip_bad=skip_bad,
                       device=device, resize=resize, optimize=optimize, dtype=dtype, progress=progress)


@torch.inference_mode()
def run_predict(model: ImageClassifier | str, plan: PredictPlan, *, batch_size: int = 32,
                num_workers: int | None = None, topk: int = 5, skip_bad: bool = False,
                device: str | torch.device | None = None, resize: str = "auto", optimize: bool = True,
                dtype: str | None = None,
                progress: bool | None = None) -> PredictResult:
    """The work of :func:`predict_files` for a ``plan`` made before the model was loaded (``cspnet predict``'s
    order: bad inputs fail in a second, not after a download)."""
    start = time.perf_counter()
    if isinstance(model, str):
        model = get_model(model, pretrained=True, device=device)
    elif device is not None:
        model = model.to(device)
    model.eval()
    transform = model.transform or zoo.get_transform(model.backbone.arch.name)
    if not getattr(model, "num_classes", 0):
        raise InvalidOptionError(f"{getattr(model, 'name', 'the model')} has no classifier head (num_classes=0): "
                                 f"there is nothing to predict; load a classifier")
    classes = list(model.classes) if model.classes is not None else None
    k = min(topk, model.num_classes)
    rank, world, out = get_rank(), get_world_size(), plan.output
    meta = json.loads(json.dumps({"command": "predict", "model": getattr(model, "name", None), "classes": classes,
                                  "topk": k, "eval": dataclasses.asdict(transform.preset),
                                  "dtype": "int8" if isinstance(model, InferenceOnly) else dtype or "fp32"}))
    if out is not None:  # every rank waits for it: a part left by a killed run may have this run's part's name
        _on_rank0(lambda: _start_output(plan, meta))
    mine = plan.todo[rank::world]
    direct = out is not None and world == 1 and out.suffix.lower() != ".parquet"
    target = None if out is None else out if direct else rows.part_path(out, rank, world)
    net, inp, loader, dev = _pipeline(model, transform, [plan.paths[i] for i in mine], batch_size, num_workers,
                                      resize, optimize, dtype)
    kept: list[dict[str, Any]] | None = [] if out is None else None
    errors: list[tuple[str, str]] = []
    failed: tuple[int, str] | None = None
    written = 0
    with contextlib.ExitStack() as stack:
        writer = None if target is None else stack.enter_context(
            rows.open_writer(target, append=direct and target.exists()))
        # rank 0's bar: its shard is 1/world of the work, so its ETA is the run's
        bar = stack.enter_context(tqdm(total=len(mine), unit="img", desc="predict" if world == 1 else
                                       f"predict (rank 0 of {world})", dynamic_ncols=True, mininterval=1.0,
                                       disable=True if rank != 0 else None if progress is None else not progress))
        for pos, batch, _, bad in loader:
            batch_rows = []
            if batch is not None:
                batch = inp.on_device(batch) if inp.on_device else batch.to(dev, non_blocking=True)
                vals, idx = net(transform.normalize(batch)).float().softmax(dim=1).topk(k, dim=1)
                batch_rows = [rows.make_row(mine[p], plan.paths[mine[p]], i, v, classes)
                              for p, i, v in zip(pos.tolist(), idx.tolist(), vals.tolist())]
            for p, message in sorted(bad):
                if skip_bad:
                    batch_rows.append(rows.error_row(mine[p], plan.paths[mine[p]], message))
                    errors.append((plan.paths[mine[p]], message))
                elif failed is None:
                    failed = (mine[p], message)
            batch_rows.sort(key=lambda r: r["index"])
            if failed is not None:  # the rows before it: what is written is a complete prefix of this shard
                batch_rows = [r for r in batch_rows if r["index"] < failed[0]]
            if writer is not None:
                writer.write(batch_rows)
            else:
                kept += batch_rows  # type: ignore[operator]
            written += len(batch_rows)
            bar.update(len(pos) + len(bad))
            if failed is not None:
                break
    ranks = all_gather_object({"written": written, "errors": errors, "failed": failed, "rows": kept})
    if out is not None and not direct:
        _on_rank0(lambda: _merge_parts(out, world))
    result = PredictResult(out, len(plan.paths), plan.resumed, sum(r["written"] for r in ranks),
                           sorted(e for r in ranks for e in r["errors"]), time.perf_counter() - start,
                           None if out is not None else sorted((row for r in ranks for row in r["rows"]),
                                                               key=lambda row: row["index"]))
    failures = sorted(r["failed"] for r in ranks if r["failed"] is not None)
    if failures:
        index, message = failures[0]
        kept_note = "" if out is None else (
            f"; the {plan.resumed + result.written} rows in {str(out)!r} are complete: fix the image and continue "
            f"with --resume, or continue with --resume --skip-bad to give it an error row")
        raise ImageError(f"{message} (use --skip-bad to give unreadable images an error row){kept_note}")
    return result


def _start_output(plan: PredictPlan, meta: dict[str, Any]) -> None:
    """Before any row of this run (rank 0): an earlier run's rows must be this run's kind; its stale parts go, its
    other parts are merged into the output; the sidecar records what the rows are."""
    out = plan.output
    assert out is not None
    old = rows.read_meta(out)
    if plan.resumed and old is not None:
        changed = {key: (old.get(key), meta[key]) for key in ("model", "classes", "topk", "eval", "dtype")
                   if old.get(key) != meta[key]}
        if changed:
            said = "; ".join(f"{key}: {a!r} then, {b!r} now" for key, (a, b) in changed.items())
            raise InvalidOptionError(f"--output {str(out)!r} holds rows of another kind ({said}): resume with the "
                                     f"same model and --topk, or give another --output")
    for part in plan.stale:
        part.unlink(missing_ok=True)
    if plan.parts:
        _merge(out, list(plan.parts))
    rows.write_meta(out, {**meta, "inputs": len(plan.paths)})


def _merge_parts(out: Path, world: int) -> None:
    _merge(out, [p for p in (rows.part_path(out, r, world) for r in range(world)) if p.exists()])


def _merge(out: Path, parts: list[Path]) -> None:
    """The rows of ``out`` (if any) and ``parts`` into ``out``, in index order, atomically; then the parts go. A run
    killed between the two leaves parts whose rows ``out`` holds: the next plan finds them stale."""
    earlier = [out] if out.is_file() and out.stat().st_size > 0 else []
    rows.merge(earlier + parts, out)
    for part in parts:
        part.unlink()
