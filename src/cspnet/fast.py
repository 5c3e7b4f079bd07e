"""Fast inference: ``optimize_for_inference(model)`` and a GPU JPEG input path for evaluation.

Each speed-up is an option, and each one's effect on the numbers is measured (``tests/test_fast.py``,
``benchmarks/RESULTS.md``):

==================  =======================================================  ==========================================
option              what it does                                             numbers vs the plain float32 model
==================  =======================================================  ==========================================
``fuse``            BatchNorm folded into the convs (:func:`fuse_bn`); on    float rounding (~1e-6 relative)
                    CPU conv+bias+LeakyReLU(+residual) as one oneDNN op
``channels_last``   NHWC activations and weights (oneDNN and cuDNN run       float rounding
                    their fastest kernels in NHWC)
``dtype``           run in bfloat16/float16: weights cast once after         bf16: ~1e-2 relative, same top-1 on the
                    folding, input cast on entry, output back to float32     golden images; fp16 tighter
                    (autocast's numbers, without its per-call weight cast)
``compile``         ``torch.compile`` (inductor)                             float rounding
``cuda_graph``      the forward captured once per batch shape and replayed   none (same kernels)
==================  =======================================================  ==========================================

The default, ``optimize_for_inference(model)`` (fold + channels_last, float32), changes no result beyond float
rounding; :func:`cspnet.inference_model` and :func:`cspnet.engine.evaluate.evaluate` use it.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import nn

from .data.resample import ResizeBatch, check_device_resize, crop_taps, resize_crop
from .data.transforms import EvalPreset, EvalTransform, read_plain_jpeg
from .errors import InvalidOptionError
from .models.cspnet import ConvNormAct
from .models.fuse import FusedConvAct, fuse_bn

__all__ = ["InferenceModel", "optimize_for_inference", "fuse_bn", "FusedConvAct", "JpegReader", "GpuJpegDecoder"]

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or dtype in (torch.float32, torch.bfloat16, torch.float16):
        return None if dtype is torch.float32 else dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _resolve_dtype(_DTYPES[dtype.lower()])
    raise InvalidOptionError(f"dtype={dtype!r}: use None (float32), 'bf16'/torch.bfloat16 or 'fp16'/torch.float16")


def _cast_floats(out: Any, dtype: torch.dtype) -> Any:
    """Cast every floating tensor in ``out`` (a tensor, or a tuple/list of them) to ``dtype``."""
    if isinstance(out, torch.Tensor):
        return out.to(dtype) if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_cast_floats(o, dtype) for o in out)
    return out


class _CudaGraph:
    """``fn`` captured in a CUDA graph for one input shape, replayed on each call (no per-kernel launch cost).

    ``__call__(x)`` copies ``x`` into the captured input and returns a clone of the captured output, so results of
    earlier calls stay valid.
    """

    def __init__(self, fn: Callable[[torch.Tensor], Any], example: torch.Tensor, warmup: int = 3):
        self.input = example.clone()
        side = torch.cuda.Stream(example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires (cuDNN autotuning etc.)
            for _ in range(warmup):
                fn(self.input)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the DataLoader's pin-memory thread may call CUDA while this thread captures
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.output = fn(self.input)

    def __call__(self, x: torch.Tensor) -> Any:
        self.input.copy_(x)
        self.graph.replay()
        if isinstance(self.output, torch.Tensor):
            return self.output.clone()
        return type(self.output)(o.clone() for o in self.output)


class InferenceModel(nn.Module):
    """What :func:`optimize_for_inference` returns: ``forward(x)`` takes the usual float32 ``(N, 3, H, W)`` input
    and returns what the wrapped model returns (logits ``(N, num_classes)``), in float32, computed under
    ``torch.inference_mode()``.

    ``.model`` is the converted module (folded, channels_last, cast). ``classes``, ``transform``, ``weights`` and
    ``num_classes`` are those of the source model. With ``fixed_batch`` (default: on with ``compile`` or
    ``cuda_graph``) the batch size of the first call is fixed: smaller batches are zero-padded to it and larger ones
    split, so nothing is recompiled or recaptured for a last, partial batch (samples do not interact in eval mode,
    so padding changes no result).
    Inference only: ``train()`` raises for a folded model.
    """

    def __init__(self, model: nn.Module, *, channels_last: bool, dtype: torch.dtype | None,
                 compile: bool | str = False, cuda_graph: bool = False, source: nn.Module | None = None,
                 fixed_batch: bool | None = None):
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.dtype = dtype
        self.cuda_graph = cuda_graph
        self.compiled = compile
        src = source if source is not None else model
        for name in ("classes", "transform", "weights"):
            setattr(self, name, getattr(src, name, None))
        self._run: Callable[[torch.Tensor], Any] = model
        if compile:
            mode = compile if isinstance(compile, str) else None
            self._run = torch.compile(model, mode=mode, dynamic=False)
        self.fixed_batch = bool(compile or cuda_graph) if fixed_batch is None else fixed_batch
        self._batch: int | None = None
        self._graphs: dict[tuple, _CudaGraph] = {}

    @property
    def num_classes(self) -> int | None:
        return getattr(self.model, "num_classes", None)

    def extra_repr(self) -> str:
        return (f"channels_last={self.channels_last}, dtype={self.dtype}, compile={self.compiled}, "
                f"cuda_graph={self.cuda_graph}")

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last and x.ndim == 4 else torch.contiguous_format
        return x.to(dtype=self.dtype or x.dtype, memory_format=fmt)

    def _forward_fixed(self, x: torch.Tensor) -> Any:
        if self.cuda_graph:
            key = (tuple(x.shape), x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last))
            graph = self._graphs.get(key)
            if graph is None:
                graph = self._graphs[key] = _CudaGraph(self._run, x)
            return graph(x)
        return self._run(x)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> Any:
        x = self._prepare(x)
        if not self.fixed_batch:
            out = self._run(x)
        else:
            n = x.shape[0]
            if self._batch is None:
                self._batch = n
            b = self._batch
            if n == b:
                out = self._forward_fixed(x)
            else:
                outs = []
                for start in range(0, n, b):
                    chunk = x[start : start + b]
                    k = chunk.shape[0]
                    if k < b:
                        pad = chunk.new_zeros((b - k, *chunk.shape[1:])).to(memory_format=_format_of(chunk))
                        chunk = torch.cat([chunk, pad])
                    o = self._forward_fixed(chunk)
                    outs.append(o[:k] if isinstance(o, torch.Tensor) else type(o)(t[:k] for t in o))
                out = torch.cat(outs) if isinstance(outs[0], torch.Tensor) else type(outs[0])(
                    torch.cat(parts) for parts in zip(*outs))
        return _cast_floats(out, torch.float32) if self.dtype is not None else out


def _format_of(x: torch.Tensor) -> torch.memory_format:
    nhwc = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc else torch.contiguous_format


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def optimize_for_inference(
    model: nn.Module,
    fuse: bool = True,
    channels_last: bool | None = None,
    dtype: torch.dtype | str | None = None,
    compile: bool | str = False,
    cuda_graph: bool = False,
) -> InferenceModel:
    """A fast, inference-only copy of ``model`` (an ``ImageClassifier`` or ``CSPNet``); ``model`` is not changed.

    Args:
        model: the model, on the device it should run on.
        fuse: fold BatchNorm into the convolutions (:func:`fuse_bn`). Models with nothing to fold are left as
            they are.
        channels_last: NHWC memory format; ``None`` (default): on for CPU and CUDA, where it measured faster.
        dtype: ``None`` (float32), ``torch.bfloat16``/``'bf16'`` or ``torch.float16``/``'fp16'``.
        compile: ``torch.compile`` the converted model (``True``, or an inductor mode such as
            ``'max-autotune'``). The first call compiles (tens of seconds).
        cuda_graph: capture the forward as a CUDA graph per input shape (CUDA only).

    Returns:
        An :class:`InferenceModel`: ``(N, 3, H, W)`` float -> logits ``(N, num_classes)`` float32 (or the
        backbone's tuple of maps), to be called under ``torch.inference_mode()`` / ``torch.no_grad()``.
    """
    dtype = _resolve_dtype(dtype)
    device = _device_of(model)
    if cuda_graph and device.type != "cuda":
        raise InvalidOptionError(f"cuda_graph=True needs the model on a CUDA device; it is on {device}")
    if channels_last is None:
        channels_last = device.type in ("cpu", "cuda")
    can_fold = any(isinstance(m, ConvNormAct) for m in model.modules())
    if fuse and can_fold:
        net = fuse_bn(model)
    else:
        net = copy.deepcopy(model).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if dtype is not None:
        net = net.to(dtype)
    return InferenceModel(net, channels_last=channels_last, dtype=dtype, compile=compile, cuda_graph=cuda_graph,
                          source=model).eval()


# --------------------------------------------------------------------------------------------------------------
# GPU JPEG decoding for evaluation: the loader workers only read file bytes, the GPU decodes (nvJPEG) and resizes.
# --------------------------------------------------------------------------------------------------------------
class EncodedImage(NamedTuple):
    """One image as the loader workers hand it over: a JPEG's bytes for the GPU, or a crop Pillow made already."""

    # The file's bytes, for an RGB/greyscale JPEG. ``bytes``, not a tensor: a batch of bytes crosses from a loader
    # worker in one pickled message, while every tensor would cross as its own shared-memory segment (measured
    # ~1 ms per image, which capped the whole input path near 2,000 images/s on 2 workers).
    data: bytes | None
    orientation: int  # EXIF orientation 1..8 (1: as stored); nvJPEG ignores EXIF, so it is applied after decoding
    decoded: torch.Tensor | None  # uint8 (3, crop, crop) for anything else (PNG, CMYK JPEG, ...), via Pillow


class JpegReader:
    """The dataset transform of the GPU input path: ``path -> EncodedImage`` (runs in the loader workers).

    A file Pillow cannot read raises :class:`~cspnet.errors.ImageError` here, in the worker, so ``--skip-bad``
    works as with the CPU path. Non-JPEG files, CMYK JPEGs and JPEGs over Pillow's pixel limit go through the exact
    Pillow pipeline instead (:func:`~cspnet.data.transforms.read_plain_jpeg`).
    """

    def __init__(self, preset: EvalPreset):
        self.transform = EvalTransform(preset)

    def __call__(self, path: str) -> EncodedImage:
        jpeg = read_plain_jpeg(path)
        if jpeg is not None:
            return EncodedImage(*jpeg, None)
        return EncodedImage(None, 1, self.transform.to_uint8(path))  # raises the precise ImageError, naming the file


def apply_exif_orientation(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """``(C, H, W)`` as stored -> as displayed, for EXIF orientation 1..8 (Pillow's ``ImageOps.exif_transpose``)."""
    ops = {
        1: lambda t: t,
        2: lambda t: t.flip(-1),
        3: lambda t: t.flip(-2, -1),
        4: lambda t: t.flip(-2),
        5: lambda t: t.transpose(-2, -1),
        6: lambda t: torch.rot90(t, -1, (-2, -1)),
        7: lambda t: t.transpose(-2, -1).flip(-2, -1),
        8: lambda t: torch.rot90(t, 1, (-2, -1)),
    }
    return ops[orientation](img)


class GpuJpegDecoder:
    """Decode a batch of :class:`EncodedImage` on ``device`` (nvJPEG via torchvision), then resize and crop it
    exactly as :class:`~cspnet.data.transforms.EvalTransform` does (:func:`cspnet.data.resample.resize_crop`):
    ``list[EncodedImage] -> uint8 (N, 3, crop, crop)`` (channels-last in memory).

    A JPEG nvJPEG rejects is decoded by Pillow instead. Not exact: nvJPEG's IDCT and chroma upsampling differ from
    libjpeg-turbo's by a few levels per pixel (the resize after it is Pillow's own); ``benchmarks/RESULTS.md``
    gives the measured differences and the top-1 agreement. torchvision is needed for this path only.
    """

    def __init__(self, preset: EvalPreset, device: str | torch.device = "cuda"):
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            raise InvalidOptionError(
                "GPU JPEG decoding (--decode gpu) needs torchvision, which cspnet does not install: "
                "pip install torchvision (the build matching your torch), or use --decode cpu"
            ) from None
        self.preset = preset
        self.device = torch.device(device)
        check_device_resize(preset)
        self.transform = EvalTransform(preset)
        self._decode_jpeg, self._rgb = decode_jpeg, ImageReadMode.RGB

    def _decode(self, raw: list[bytes]) -> list[torch.Tensor | None]:
        with warnings.catch_warnings():
            # torchvision 0.29+ flags its image I/O as deprecated on every call; frombuffer warns that bytes are
            # read-only (nvJPEG only reads them)
            warnings.simplefilter("ignore")
            datas = [torch.frombuffer(r, dtype=torch.uint8) for r in raw]
            try:
                return list(self._decode_jpeg(datas, mode=self._rgb, device=self.device))
            except RuntimeError:  # one bad file fails the whole batch: decode one by one, Pillow as a fallback
                out = []
                for d in datas:
                    try:
                        out.append(self._decode_jpeg(d, mode=self._rgb, device=self.device))
                    except RuntimeError:
                        out.append(None)
                return out

    def __call__(self, items: Sequence[EncodedImage]) -> torch.Tensor:
        from PIL import Image

        crop = self.preset.crop
        out = torch.empty((len(items), crop, crop, 3), dtype=torch.uint8, device=self.device).permute(0, 3, 1, 2)
        jpegs = [i for i, it in enumerate(items) if it.data is not None]
        decoded = self._decode([items[i].data for i in jpegs]) if jpegs else []
        done, images = [], []
        for i, img in zip(jpegs, decoded):
            if img is None:  # nvJPEG refused it: the exact Pillow pipeline, from the bytes in hand
                out[i] = self.transform.to_uint8(Image.open(io.BytesIO(items[i].data))).to(self.device)
                continue
            done.append(i)
            images.append(apply_exif_orientation(img, items[i].orientation).permute(1, 2, 0))  # (H, W, 3)
        for i, it in enumerate(items):
            if it.decoded is not None:
                out[i] = it.decoded.to(self.device, non_blocking=True)
        if images:
            shapes = [tuple(im.shape[:2]) for im in images]
            batch = ResizeBatch.from_parts(torch.cat([im.reshape(-1, 3) for im in images]), shapes,
                                           [crop_taps(h, w, self.preset) for h, w in shapes])
            out[torch.tensor(done, device=self.device)] = resize_crop(batch, self.device)
        return out
