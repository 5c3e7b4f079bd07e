"""int8 inference on the CPU: :func:`quantize` calibrates a classifier on the user's images and returns a
:class:`QuantizedModel`; :meth:`QuantizedModel.save` writes it as one ONNX file and :func:`load_quantized` reads it.

The method is ONNX Runtime's static post-training quantization of the exported model: QDQ format, weights int8 per
output channel (symmetric), activations uint8 per tensor (asymmetric: LeakyReLU outputs are mostly positive), ranges
by min/max over the calibration images. ONNX Runtime rather than PyTorch's PT2E X86 quantizer because it measured
faster here, with less to install (``benchmarks/RESULTS.md``, "Low precision on CPU"). The calibration is stored with
the model: every activation's scale and zero point are constants of the int8 graph, and its metadata carries the
cspnet entries of :func:`cspnet.export.build_metadata` (the same preprocessing) plus ``quantization``: the settings,
the calibration images (their number and a SHA-256 of their names and crops) and the int8 model's agreement with
float32 on those images.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ._io import atomic_write, output_path
from .data.transforms import EvalTransform
from .errors import ExportError, ImageError, InvalidOptionError
from .export import INPUT_NAME, OUTPUT_NAME, _require, export_model, read_metadata
from .models import ImageClassifier
from .optimize import InferenceOnly, cpu_features
from .spec import ModelSpec

__all__ = ["MAX_CALIBRATION_IMAGES", "QuantizedModel", "load_quantized", "quantize"]

# Min/max ranges settle within a few hundred images; more only costs time (two passes over each). The bound keeps
# the work a caller asks for in proportion to what it gets.
MAX_CALIBRATION_IMAGES = 1024
QUANT_KEY = "quantization"
_FORMAT_VERSION = 1


class QuantizedModel(InferenceOnly):
    """An int8 classifier run by ONNX Runtime on the CPU. ``forward(x)``: float32 ``(N, 3, H, W)`` normalised as
    ``transform.normalize`` gives it, ``(H, W)`` the calibrated size (``image_size``) -> logits ``(N, num_classes)``
    float32. ``classes``, ``transform``, ``name``, ``num_classes`` and ``spec`` are those of the source model;
    ``metadata`` is the file's cspnet metadata (``metadata['quantization']``: how it was made and measured). It has no
    parameters and does not train; ``threads`` (default: ``torch.get_num_threads()``) is ONNX Runtime's thread
    count."""

    def __init__(self, data: bytes, metadata: dict, threads: int | None = None, source: str = "the int8 model"):
        super().__init__()
        ort = _require("onnxruntime", "int8 inference")
        self.data = data
        self.metadata = metadata
        try:
            self.spec = ModelSpec.from_meta(metadata["spec"], source)
            self.image_size = tuple(int(v) for v in metadata["model"]["input"]["shape"][2:])
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidOptionError(f"{source}: its cspnet metadata is incomplete ({type(e).__name__}: {e}); write "
                                     f"it again with `cspnet export --dtype int8`") from None
        self.classes = list(self.spec.classes) if self.spec.classes is not None else None
        self.transform = EvalTransform(self.spec.eval)
        self.name = self.spec.name
        options = ort.SessionOptions()
        # torch's count (OMP_NUM_THREADS, --threads) rather than ONNX Runtime's default of every core, which
        # oversubscribes a machine where the caller chose fewer
        options.intra_op_num_threads = max(1, threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a damaged graph
            raise InvalidOptionError(f"{source}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from None
        self.training = False

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def train(self, mode: bool = True) -> "QuantizedModel":
        if mode:
            raise InvalidOptionError("an int8 QuantizedModel is for inference only: train the float model and "
                                     "quantize it again")
        return super().train(False)

    def extra_repr(self) -> str:
        q = self.metadata.get(QUANT_KEY, {})
        return f"name={self.name!r}, image_size={self.image_size}, calibration_images={q.get('calibration', {})}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise InvalidOptionError(f"int8 inference runs on the CPU (ONNX Runtime); the input is on {x.device}")
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, *self.image_size):
            raise InvalidOptionError(f"input of shape {tuple(x.shape)}: this int8 model takes (N, 3, "
                                     f"{self.image_size[0]}, {self.image_size[1]}), its calibrated size")
        arr = x.detach().float().contiguous().numpy()
        return torch.from_numpy(self._session.run([OUTPUT_NAME], {INPUT_NAME: arr})[0])

    def save(self, path: str | os.PathLike, inputs: Sequence[str | os.PathLike] = ()) -> Path:
        """Write the int8 ONNX file atomically (never over one of ``inputs``); returns its path."""
        output_path(path, "path", inputs)
        atomic_write(path, lambda tmp: tmp.write_bytes(self.data), what="the int8 model", error=ExportError)
        return Path(path)


def _calibration_batches(calibration: Sequence[str | os.PathLike] | torch.Tensor, transform: EvalTransform,
                         batch_size: int) -> Iterator[torch.Tensor]:
    """Float32 ``(n, 3, H, W)`` batches of the calibration images, decoded as they are needed (bounded memory)."""
    if isinstance(calibration, torch.Tensor):
        for start in range(0, len(calibration), batch_size):
            yield calibration[start:start + batch_size].float()
        return
    for start in range(0, len(calibration), batch_size):
        yield torch.stack([transform(p) for p in calibration[start:start + batch_size]])


def _check_calibration(calibration, transform: EvalTransform | None) -> tuple[int, tuple[int, int]]:
    """The number of calibration images and their ``(H, W)``, or a clear error."""
    if isinstance(calibration, torch.Tensor):
        if calibration.ndim != 4 or calibration.shape[1] != 3 or not calibration.is_floating_point():
            raise InvalidOptionError(f"calibration tensor of shape {tuple(calibration.shape)} and dtype "
                                     f"{calibration.dtype}: give float (N, 3, H, W), normalised as the model's "
                                     f"transform.normalize gives it, or a list of image files")
        n, hw = len(calibration), (int(calibration.shape[2]), int(calibration.shape[3]))
    elif isinstance(calibration, (str, os.PathLike)) or not isinstance(calibration, Sequence):
        raise InvalidOptionError(f"calibration={calibration!r}: give a list of image files (or a float tensor)")
    else:
        if transform is None:
            raise InvalidOptionError("the model has no eval preprocessing (model.transform) to read the calibration "
                                     "images with: set model.transform = cspnet.get_transform(...)")
        n, hw = len(calibration), (transform.preset.crop, transform.preset.crop)
    if n == 0:
        raise InvalidOptionError("no calibration images: give some of the images the model will see (100-500 "
                                 "typical ones, e.g. from the training set)")
    if n > MAX_CALIBRATION_IMAGES:
        raise InvalidOptionError(f"{n:,} calibration images: at most {MAX_CALIBRATION_IMAGES:,} (the ranges settle "
                                 f"within a few hundred); give a random subset")
    return n, hw


class _Reader:
    """ONNX Runtime's calibration data reader over :func:`_calibration_batches` (``get_next``/``rewind``)."""

    def __init__(self, make: Callable[[], Iterator[torch.Tensor]]):
        self._make, self._it = make, make()

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x.numpy()}

    def rewind(self) -> None:
        self._it = self._make()


@contextlib.contextmanager
def _quiet_preprocess_advice():
    """Drop onnxruntime's root-logger advice to run its shape-inference pre-pass, twice per call: measured on
    cspresnet50, the pre-pass changed neither the int8 graph ONNX Runtime runs nor its numbers."""
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize(model: ImageClassifier, calibration: Sequence[str | os.PathLike] | torch.Tensor, *,
             per_channel: bool = True, reduce_range: bool | None = None, batch_size: int = 8,
             threads: int | None = None) -> QuantizedModel:
    """``model`` quantized to int8, calibrated on ``calibration``; ``model`` is not changed.

    Args:
        model: a float classifier with its eval preprocessing (``model.transform``), as :func:`cspnet.get_model`
            gives it; exported from a CPU copy.
        calibration: image files the model will see (typical ones: 100-500 from the training set), read with
            ``model.transform``; or a float tensor ``(N, 3, H, W)``, already normalised. At most
            :data:`MAX_CALIBRATION_IMAGES`. The int8 model takes their size (the eval crop for files).
        per_channel: one weight scale per output channel (default) rather than per tensor (worse accuracy).
        reduce_range: 7-bit weights, which CPUs without VNNI need against int16 overflow in their uint8 x int8
            dot products; default: on where this CPU has no VNNI (:func:`cspnet.optimize.cpu_features`).
        batch_size: images per calibration batch (memory, not results).
        threads: ONNX Runtime's thread count for the returned model (default ``torch.get_num_threads()``).

    Returns:
        A :class:`QuantizedModel`: float32 ``(N, 3, H, W)`` -> logits ``(N, num_classes)``; its
        ``metadata['quantization']['check']`` holds its top-1 agreement with float32 (and the max relative logit
        difference) on the calibration images.

    Raises:
        InvalidOptionError: not a classifier, no or too many calibration images, a bad tensor or ``batch_size``.
        ImageError: an unreadable calibration image (named).
        ExportError: ``onnx``/``onnxruntime`` missing, or the quantizer failing.
    """
    if not isinstance(model, ImageClassifier):
        raise InvalidOptionError(f"quantize() takes an ImageClassifier (from cspnet.get_model), not "
                                 f"{type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidOptionError(f"batch_size={batch_size!r} must be a positive integer")
    _require("onnx", "int8 quantization")
    _require("onnxruntime", "int8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    transform = model.transform
    n, hw = _check_calibration(calibration, transform)
    if not isinstance(calibration, torch.Tensor):
        calibration = [os.fspath(p) for p in calibration]
    if reduce_range is None:
        reduce_range = cpu_features().int8 is None
    source = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    batches = lambda: _calibration_batches(calibration, transform, batch_size)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="cspnet-int8-") as tmp, _quiet_preprocess_advice():
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        # verified below, end to end: the int8 file against the PyTorch model
        exported = export_model(source, fp32, "onnx", dynamic_batch=True, image_size=hw, verify=False)
        try:
            # uint8 activations: 100% top-1 agreement on cspresnet50's golden weights where int8 ones gave 98.4%, at
            # the same speed. Min/max keeps each batch's per-tensor min and max only, so memory stays small without
            # CalibMaxIntermediateOutputs (with which onnxruntime 1.32 drops the ranges it collected).
            quantize_static(str(fp32), str(int8), _Reader(batches), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        except ImageError:  # an unreadable calibration image, raised by the reader: named already
            raise
        except Exception as e:  # onnxruntime's quantizer raises assorted types
            raise ExportError(f"ONNX Runtime's quantizer failed ({type(e).__name__}: {e})") from e
        import onnx

        proto = onnx.load(str(int8))
    settings = {"format_version": _FORMAT_VERSION, "dtype": "int8", "method": "onnxruntime quantize_static",
                "format": "QDQ", "weights": "int8 symmetric, " + ("per channel" if per_channel else "per tensor"),
                "activations": "uint8 asymmetric, per tensor", "calibrate_method": "minmax",
                "reduce_range": reduce_range, "calibration": {"images": n, "image_size": list(hw)}}
    meta = {**exported.metadata, QUANT_KEY: settings}

    def serialized() -> bytes:
        del proto.metadata_props[:]  # the exported file's entries, with the settings added
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=json.dumps(value))
        return proto.SerializeToString()

    qmodel = QuantizedModel(serialized(), meta, threads)
    digest, settings["check"] = _measure(source, qmodel, calibration, batches())
    settings["calibration"]["sha256"] = digest
    qmodel.data = serialized()  # the session runs the same graph: only the metadata gained the check
    return qmodel


def _measure(model: nn.Module, qmodel: QuantizedModel, calibration,
             batches: Iterator[torch.Tensor]) -> tuple[str, dict]:
    """The calibration's SHA-256 (file names and crops) and int8 vs float32 (``model`` in eval mode) on it: top-1
    agreement (%) and max relative logit difference."""
    digest = hashlib.sha256()
    if not isinstance(calibration, torch.Tensor):
        digest.update(json.dumps(calibration).encode())
    was_training, same, total, diff = model.training, 0, 0, 0.0
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                digest.update(x.contiguous().numpy().tobytes())
                ref, out = model(x), qmodel(x)
                same += int((ref.argmax(1) == out.argmax(1)).sum())
                total += len(x)
                diff = max(diff, float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)))
    finally:
        model.train(was_training)
    return digest.hexdigest(), {"on": "the calibration images", "images": total,
                                "top1_agreement": round(100 * same / total, 2), "max_rel_diff": diff}


def load_quantized(path: str | os.PathLike, threads: int | None = None) -> QuantizedModel:
    """The :class:`QuantizedModel` in ``path``, an int8 ONNX file written by :meth:`QuantizedModel.save`
    (``cspnet export --dtype int8``).

    Raises:
        InvalidOptionError: a missing file, one without cspnet metadata, or a float (not int8) export.
    """
    meta = read_metadata(path)
    if QUANT_KEY not in meta:
        raise InvalidOptionError(f"{str(path)!r} is a float export, not an int8 one: write one with `cspnet export "
                                 f"--dtype int8 --calib IMAGES...`")
    return QuantizedModel(Path(path).read_bytes(), meta, threads, source=repr(str(path)))
