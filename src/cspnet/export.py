"""Export a classifier to ONNX, TorchScript or a ``torch.export`` program, check it against PyTorch, write it:
:func:`export_model`, what mmpretrain needs mmdeploy for, with no backend config (README, "Export"). Every file
carries the :data:`METADATA_KEYS` entries as JSON strings (ONNX ``metadata_props``; the extra files of a TorchScript
or ``.pt2`` archive): ``model`` (name, format, input/output names, dtype, layout and shape), ``classes`` (or null),
``preprocessing`` (the eval resize/crop/interpolation/mean/std; whether normalisation is inside the graph) and
``spec`` (the :class:`~cspnet.models.ModelSpec`, as checkpoints record it); :func:`read_metadata` reads them back."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ._io import atomic_write, output_path
from ._version import __version__
from .analysis import resolution
from .data.presets import MAX_SIDE
from .data.transforms import EvalTransform
from .errors import ExportError, InvalidOptionError
from .models import ARCHS, ImageClassifier
from .spec import ModelSpec
from .zoo import get_transform

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported-program": ".pt2"}
INPUT_NAME, OUTPUT_NAME = "input", "logits"
METADATA_KEYS = ("model", "classes", "preprocessing", "spec")
OPTIONAL_KEYS = ("quantization",)  # an int8 file's settings and calibration (cspnet.quantize)


def _newest_opset() -> int:
    try:  # what the installed TorchScript-based exporter writes (20 in torch 2.5 to 2.13)
        from torch.onnx import _constants

        return int(_constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
    except (ImportError, AttributeError):  # a private constant: if it moves, the newest opset torch 2.13 writes
        return 20


# 11 is mmdeploy's default and the oldest that TensorRT 7 reads; the newest is the installed exporter's. 17 (default)
# is read by onnxruntime >= 1.11, TensorRT >= 8.6 and OpenVINO >= 2022.3.
OPSETS = range(11, _newest_opset() + 1)
DEFAULT_OPSET = 17
DYNAMIC_CHECK_BATCHES = (1, 3)  # mmpretrain#1273: dynamic-batch ONNX that was right at batch 1 only
# The export runs the model on a seeded batch of this size (and the check on up to 3 with a dynamic batch), so the
# size is bounded before any work: --image-size 1000000 would otherwise try to allocate 12 TB. 4096 x 4096 pixels
# (batch 1 at 4096x4096, or batch 256 at 256x256) is ~200 MB of input and a few GB of activations.
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # MAX_SIDE: the library's one bound on an image side (data/presets.py)


def check_size(hw: tuple[int, int], batch_size: int, dynamic_batch: bool,
               names: tuple[str, str] = ("image_size", "batch_size")) -> None:
    """Refuse an export whose largest batch (``batch_size``; 3 with ``dynamic_batch``) times ``H x W`` is over
    :data:`MAX_PIXELS` (each side is bounded by :data:`MAX_SIDE` where ``hw`` is read); ``names`` name the options.

    Raises:
        InvalidOptionError: naming both options and the bound.
    """
    batch = max(DYNAMIC_CHECK_BATCHES) if dynamic_batch else batch_size
    if batch * hw[0] * hw[1] > MAX_PIXELS:
        which = "the dynamic-batch check's batch 3" if dynamic_batch else f"{names[1]} {batch}"
        raise InvalidOptionError(f"{names[0]} {hw[0]}x{hw[1]} with {which} is {batch * hw[0] * hw[1]:,} pixels per "
                                 f"batch; the export runs at most {MAX_PIXELS:,} (e.g. batch 1 at {MAX_SIDE}x{MAX_SIDE}"
                                 f" or 256 at 256x256): lower {names[0]} or {names[1]}")


def check_atol(atol: float, name: str = "atol") -> float:
    """``atol`` as a float, if a number >= 0; else :class:`~cspnet.errors.InvalidOptionError` naming ``name``."""
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not 0 <= atol < math.inf:
        raise InvalidOptionError(f"{name}={atol!r}: the largest accepted difference must be a finite number >= 0")
    return float(atol)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote: ``max_abs_diff`` over ``checked_batches`` (None when not verified)."""

    path: Path
    format: str
    metadata: dict
    max_abs_diff: float | None
    checked_batches: tuple[int, ...]
    verified_with: str | None


class WithPreprocessing(nn.Module):
    """``model`` behind the eval normalisation: uint8 ``(N, 3, H, W)`` RGB 0-255 -> logits ``(N, num_classes)``. Resize
    and crop stay outside (they depend on each image's size); this is exactly
    ``model(model.transform.normalize(x))``."""

    def __init__(self, model: nn.Module, transform: EvalTransform):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(transform.preset.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(transform.preset.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x.float() - self.mean) / self.std)


def build_metadata(spec: ModelSpec, fmt: str, image_size: tuple[int, int], dynamic_batch: bool, batch_size: int,
                   with_preprocessing: bool, opset: int | None = None) -> dict[str, str]:
    """The metadata entries (``model``, ``classes``, ``preprocessing``, ``spec``) as JSON strings."""
    batch = "batch" if dynamic_batch else batch_size
    values = ("uint8 RGB 0-255 after resize and centre crop; normalised inside the graph" if with_preprocessing
              else "float32 (x - mean) / std of RGB 0-255 after resize and centre crop")
    info = {
        "name": spec.name, "format": fmt, **({"opset": opset} if opset is not None else {}),
        "input": {"name": INPUT_NAME, "dtype": "uint8" if with_preprocessing else "float32", "layout": "NCHW",
                  "shape": [batch, 3, *image_size], "values": values},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [batch, spec.num_classes],
                   "values": "unnormalised class scores (apply softmax for probabilities)"},
        "cspnet_version": __version__,
    }
    preset = spec.eval
    prep = {"resize_short_edge": preset.resize, "center_crop": preset.crop,
            "interpolation": f"Pillow {preset.interpolation}", "mean": list(preset.mean), "std": list(preset.std),
            "channel_order": "RGB", "normalization_in_graph": with_preprocessing, "description": preset.describe()}
    classes = list(spec.classes) if spec.classes is not None else None
    return {"model": json.dumps(info), "classes": json.dumps(classes), "preprocessing": json.dumps(prep),
            "spec": json.dumps(spec.to_meta())}


def _serialize(net: nn.Module, example: torch.Tensor, fmt: str, dynamic_batch: bool, opset: int,
               metadata: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # torch 2.13 marks torch.jit.trace and the TorchScript-based ONNX exporter (dynamo=False) deprecated; they
        # need no extra package (the default dynamo=True exporter needs onnxscript), the ONNX one matches PyTorch
        # (~1e-6) at any batch size, and the verification in export_model is what vouches for their output.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        if fmt == "onnx":
            onnx = _require("onnx", "ONNX export")
            axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(net, (example,), buf, dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=opset)
            proto = onnx.load_model_from_string(buf.getvalue())
            for key, value in metadata.items():
                proto.metadata_props.add(key=key, value=value)
            return proto.SerializeToString()
        if fmt == "torchscript":
            # a trace of this conv net accepts any batch and image size; check_trace would run it twice more
            traced = torch.jit.trace(net, example, check_trace=False)
            torch.jit.save(traced, buf, _extra_files=metadata)
        else:
            # example batch 2, not 1: torch.export specialises a size-1 dimension to a constant
            shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
            torch.export.save(torch.export.export(net, (example,), dynamic_shapes=shapes), buf, extra_files=metadata)
    return buf.getvalue()


def _runner(data: bytes, fmt: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], str] | None:
    """A function running the serialised model on the CPU, and its runtime's name; None if the runtime is missing."""
    if fmt == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            return None
        import onnxruntime as ort

        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        run = lambda x: torch.from_numpy(sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])  # noqa: E731
        return run, f"onnxruntime {ort.__version__}"
    if fmt == "torchscript":
        scripted = torch.jit.load(io.BytesIO(data), map_location="cpu")

        def run_scripted(x: torch.Tensor) -> torch.Tensor:
            # the profiling executor would spend seconds optimising a graph that runs twice here
            with torch.jit.optimized_execution(False):
                return scripted(x)

        return run_scripted, "torch.jit.load"
    return torch.export.load(io.BytesIO(data)).module(), "torch.export.load"


def _require(module: str, what: str):
    if importlib.util.find_spec(module) is None:
        raise ExportError(f"{what} needs the {module!r} package: pip install 'cspnet[export]'")
    return importlib.import_module(module)


def _check_inputs(batches: Sequence[int], image_size: tuple[int, int], uint8: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if uint8:
        return [torch.randint(0, 256, (b, 3, *image_size), generator=g, dtype=torch.uint8) for b in batches]
    return [torch.randn(b, 3, *image_size, generator=g) for b in batches]


def export_model(model: ImageClassifier, path: str | os.PathLike, format: str = "onnx", *, dynamic_batch: bool = False,
                 with_preprocessing: bool = False, opset: int = DEFAULT_OPSET,
                 image_size: int | Sequence[int] | None = None, batch_size: int = 1, verify: bool = True,
                 atol: float = 1e-3) -> ExportResult:
    """Export ``model`` to ``path``, check the file against PyTorch, and write it atomically; returns an
    :class:`ExportResult` with the measured max abs difference (None when not verified).

    Args:
        model: a classifier (its name, classes and eval preprocessing go into the metadata). It is exported
            in eval mode from the CPU (a copy if it lives on a GPU), and left as it was.
        path: the output file (its folder is created).
        format: ``"onnx"``, ``"torchscript"`` or ``"exported-program"`` (``torch.export``, a ``.pt2`` archive).
        dynamic_batch: a batch dimension named ``batch`` of any size; otherwise fixed at ``batch_size``.
            (TorchScript traces accept any batch either way.)
        with_preprocessing: input uint8 ``(N, 3, H, W)`` RGB 0-255 (the resized, centre-cropped image) with the
            mean/std normalisation inside the graph; otherwise float32, already normalised.
        opset: ONNX opset, 11 to the newest the installed exporter writes (:data:`OPSETS`; 20 with torch 2.13).
        image_size: ``H`` or ``(H, W)``, each side 32 to :data:`MAX_SIDE`; default the model's eval crop. The largest
            batch run (``batch_size``; 3 with ``dynamic_batch``) times ``H x W`` is at most :data:`MAX_PIXELS`.
        verify: run the file with its runtime (onnxruntime only when installed) and compare with PyTorch on seeded
            random inputs of batch 1 and 3 (dynamic) or ``batch_size``.
        atol: the largest max-abs logit difference accepted by ``verify``.

    Raises:
        InvalidOptionError: bad format, opset, size, batch or ``atol``, or a ``path`` that cannot be written (a
            folder, a device, a read-only folder: :func:`cspnet._io.output_path`), all before any work.
        ExportError: a missing package (``onnx``), a file that disagrees with PyTorch by more than ``atol``, or a
            disk that is full; nothing is written then.
    """
    if format not in FORMATS:
        raise InvalidOptionError(f"format={format!r}; choose from {sorted(FORMATS)}")
    if not isinstance(model, ImageClassifier):
        raise InvalidOptionError(f"export_model() takes an ImageClassifier (from cspnet.get_model), not "
                                 f"{type(model).__name__}")
    if format == "onnx" and opset not in OPSETS:
        raise InvalidOptionError(f"opset={opset}: the ONNX exporter writes opsets {OPSETS.start} to {OPSETS.stop - 1}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidOptionError(f"batch_size={batch_size!r} must be a positive integer")
    check_atol(atol)
    output_path(path, "path")
    arch = model.backbone.arch.name  # a model without eval preprocessing of its own: its architecture's published one
    transform = model.transform or (get_transform(arch) if arch in ARCHS else None)
    spec = ModelSpec.of(model, transform)
    hw = resolution(image_size if image_size is not None else spec.eval.crop, "image_size", minimum=32,
                    maximum=MAX_SIDE)
    check_size(hw, batch_size, dynamic_batch)
    # Export from the CPU (a copy when the model lives elsewhere): the file is then device-neutral, and the check
    # compares fp32 with fp32 (a CUDA reference runs TF32 convolutions, ~1e-2 away from any fp32 runtime).
    source = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    net: nn.Module = WithPreprocessing(source, transform) if with_preprocessing else source
    metadata = build_metadata(spec, format, hw, dynamic_batch, batch_size, with_preprocessing,
                              opset if format == "onnx" else None)
    batches = DYNAMIC_CHECK_BATCHES if dynamic_batch else (batch_size,)
    was_training = model.training
    net.eval()  # the wrapper too: the ONNX exporter restores the mode it found, which would put model in train mode
    try:
        example = _check_inputs([2 if dynamic_batch else batch_size], hw, with_preprocessing)[0]
        data = _serialize(net, example, format, dynamic_batch, opset, metadata)
        diff, runtime = None, None
        runner = _runner(data, format) if verify else None
        if runner is not None:
            run, runtime = runner
            with torch.no_grad():  # a tensor's max keeps a NaN, where Python's max(0.0, nan) would drop it
                diff = float(torch.stack([(run(x).float() - net(x).float()).abs().max()
                                          for x in _check_inputs(batches, hw, with_preprocessing)]).max())
            if not diff <= atol:  # also catches NaN
                raise ExportError(f"the exported {format} model differs from PyTorch by {diff:.3g} (> atol {atol:g}) "
                                  f"on batches {list(batches)}; {str(path)!r} was not written")
    finally:
        model.train(was_training)
    atomic_write(path, lambda tmp: tmp.write_bytes(data), what="the exported model", error=ExportError)
    return ExportResult(Path(path), format, {k: json.loads(v) for k, v in metadata.items()}, diff,
                        tuple(batches) if diff is not None else (), runtime)


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``model``, ``classes``, ``preprocessing`` and ``spec`` entries of an exported file (and ``quantization``,
    an int8 file's), parsed from JSON."""
    path = Path(path)
    if not path.is_file():
        raise InvalidOptionError(f"exported model {str(path)!r} does not exist")
    if zipfile.is_zipfile(path):  # TorchScript and .pt2 archives keep extra files at <archive>/extra/<name>
        with zipfile.ZipFile(path) as z:
            extra = {n.rsplit("/", 1)[-1]: n for n in z.namelist() if n.rsplit("/", 2)[-2:-1] == ["extra"]}
            raw = {k: z.read(extra[k]).decode() for k in METADATA_KEYS + OPTIONAL_KEYS if k in extra}
    else:
        onnx = _require("onnx", "reading ONNX metadata")
        proto = onnx.load(str(path), load_external_data=False)
        raw = {p.key: p.value for p in proto.metadata_props if p.key in METADATA_KEYS + OPTIONAL_KEYS}
    if not raw:
        raise InvalidOptionError(f"{str(path)!r} has no cspnet metadata; was it written by `cspnet export`?")
    return {k: json.loads(v) for k, v in raw.items()}
