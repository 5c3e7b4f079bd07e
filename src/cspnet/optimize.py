"""Fast inference: ``optimize_for_inference(model)``, a fast, inference-only copy of a model.

Each speed-up is an option (``fuse``, ``channels_last``, ``dtype``, ``compile``, ``cuda_graph``; the README's "Speed"
table says what each does), and each one's effect on the numbers is measured (``tests/test_fast.py``,
``benchmarks/RESULTS.md``): bf16 ~1e-2 relative with the same top-1 on the golden images, fp16 tighter, CUDA graphs
none, the others float rounding. The default, ``optimize_for_inference(model)`` (fold + channels_last, float32), changes
no result beyond float rounding; :func:`cspnet.inference_model` and :func:`cspnet.engine.evaluate.evaluate` use it.

bf16 on a CPU is fast only where the CPU multiplies bf16 itself (Intel AMX, or AVX512-BF16 on Intel Cooper Lake and
AMD Zen 4/5); elsewhere oneDNN emulates it in float32 arithmetic, slower than float32 and less exact, so
:func:`optimize_for_inference` refuses it there unless ``emulated_bf16=True``. :func:`cpu_features` is the probe.
int8 needs calibration images: :func:`cspnet.quantize.quantize`.
"""

from __future__ import annotations

import copy
import functools
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import InvalidOptionError
from .models.cspnet import ConvNormAct
from .models.fuse import FusedConvAct, fuse_bn

__all__ = ["CpuFeatures", "InferenceModel", "cpu_features", "optimize_for_inference", "fuse_bn", "FusedConvAct"]

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}


def _resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or dtype in (torch.float32, torch.bfloat16, torch.float16):
        return None if dtype is torch.float32 else dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _resolve_dtype(_DTYPES[dtype.lower()])
    if dtype in ("int8", torch.int8, torch.qint8):
        raise InvalidOptionError(f"dtype={dtype!r}: int8 needs calibration images; use cspnet.quantize.quantize(model, "
                                 f"images) (or `cspnet export --dtype int8 --calib IMAGES`)")
    raise InvalidOptionError(f"dtype={dtype!r}: use None (float32), 'bf16'/torch.bfloat16 or 'fp16'/torch.float16")


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU offers low-precision inference, from its instruction-set flags (``/proc/cpuinfo``; empty where
    that cannot be read). ``bf16``: the native bf16 instructions oneDNN uses (``'amx'``, ``'avx512_bf16'``,
    ``'arm_bf16'``) or None; ``int8``: the int8 dot-product ones (``'amx'``, ``'avx512_vnni'``, ``'avx_vnni'``,
    ``'arm_i8mm'``) or None. ``onednn_bf16`` is PyTorch's own check, which is also true where bf16 is only emulated
    (any AVX-512 CPU), so it does not decide alone."""

    model: str
    flags: frozenset[str]
    torch_capability: str
    onednn_bf16: bool

    @property
    def known(self) -> bool:
        return bool(self.flags)

    @property
    def bf16(self) -> str | None:
        for flag, name in (("amx_bf16", "amx"), ("avx512_bf16", "avx512_bf16"), ("bf16", "arm_bf16")):
            if flag in self.flags and self.onednn_bf16:
                return name
        return None

    @property
    def int8(self) -> str | None:
        for flag, name in (("amx_int8", "amx"), ("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni"),
                           ("i8mm", "arm_i8mm")):
            if flag in self.flags:
                return name
        return None

    def describe(self) -> str:
        if not self.known:
            return f"{self.model} (instruction-set flags unreadable; PyTorch kernels: {self.torch_capability})"
        return (f"{self.model}: bf16 {self.bf16 or 'emulated (no AMX or AVX512-BF16)'}, int8 "
                f"{self.int8 or 'no VNNI'}; PyTorch kernels: {self.torch_capability}")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, frozenset[str]]:
    """The CPU's model name and its flags (x86 ``flags``, Arm ``Features``) from ``/proc/cpuinfo``."""
    try:
        text = path.read_text(errors="replace")
    except OSError:  # not Linux: the flags are not known
        return platform.processor() or platform.machine(), frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model or platform.machine(), flags


@functools.lru_cache(maxsize=None)
def cpu_features() -> CpuFeatures:
    """This machine's :class:`CpuFeatures` (read once)."""
    model, flags = _cpuinfo()
    try:
        onednn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN, or an op renamed
        onednn = False
    return CpuFeatures(model, flags, torch.backends.cpu.get_cpu_capability(), onednn)


def _check_cpu_bf16(emulated_ok: bool) -> None:
    """Refuse bf16 on a CPU that only emulates it (unless ``emulated_ok``); warn where the flags are unknown."""
    cpu = cpu_features()
    if cpu.bf16 is not None or emulated_ok:
        return
    if not cpu.known:
        warnings.warn(f"dtype='bf16' on {cpu.describe()}: whether this CPU has bf16 instructions (AMX, AVX512-BF16) is "
                      f"unknown; without them bf16 is emulated, slower than float32 and less exact", stacklevel=3)
        return
    raise InvalidOptionError(f"dtype='bf16' on a CPU without bf16 instructions ({cpu.describe()}): oneDNN would "
                             f"emulate bf16 in float32 arithmetic, slower than float32 and less exact. Use float32 "
                             f"(the default; or int8 via cspnet.quantize), or pass emulated_bf16=True to run it anyway")


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
    earlier calls stay valid."""

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
        out = self.output
        return out.clone() if isinstance(out, torch.Tensor) else type(out)(o.clone() for o in out)


class InferenceModel(nn.Module):
    """What :func:`optimize_for_inference` returns: ``forward(x)`` takes the usual float32 ``(N, 3, H, W)`` input and
    returns what the wrapped model returns (logits ``(N, num_classes)``), in float32, computed under
    ``torch.inference_mode()``. ``.model`` is the converted module (folded, channels_last, cast). ``classes``,
    ``transform``, ``name`` and ``num_classes`` are those of the source model. With ``fixed_batch`` (default: on with
    ``compile`` or ``cuda_graph``) the batch size of the first call is fixed: smaller batches are zero-padded to it and
    larger ones split, so nothing is recompiled or recaptured for a last, partial batch (samples do not interact in eval
    mode, so padding changes no result). Inference only: ``train()`` raises for a folded model."""

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
        for name in ("classes", "transform", "name"):
            setattr(self, name, getattr(src, name, None))
        mode = compile if isinstance(compile, str) else None
        self._run: Callable[[torch.Tensor], Any] = torch.compile(model, mode=mode, dynamic=False) if compile else model
        self.fixed_batch = bool(compile or cuda_graph) if fixed_batch is None else fixed_batch
        self._batch: int | None = None
        self._graphs: dict[tuple, _CudaGraph] = {}

    @property
    def num_classes(self) -> int | None:
        return getattr(self.model, "num_classes", None)

    def extra_repr(self) -> str:
        return (f"channels_last={self.channels_last}, dtype={self.dtype}, compile={self.compiled}, "
                f"cuda_graph={self.cuda_graph}")

    def _forward_fixed(self, x: torch.Tensor) -> Any:
        if self.cuda_graph:
            key = (tuple(x.shape), x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last))
            if key not in self._graphs:
                self._graphs[key] = _CudaGraph(self._run, x)
            return self._graphs[key](x)
        return self._run(x)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> Any:
        fmt = torch.channels_last if self.channels_last and x.ndim == 4 else torch.contiguous_format
        x = x.to(dtype=self.dtype or x.dtype, memory_format=fmt)
        if self.fixed_batch and self._batch is None:
            self._batch = x.shape[0]
        n, b = x.shape[0], self._batch
        if not self.fixed_batch:
            out = self._run(x)
        elif n == b:
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


class InferenceOnly(nn.Module):
    """A model that is already its own fast inference form, run on the CPU by another engine (an int8 ONNX Runtime
    session: :class:`cspnet.quantize.QuantizedModel`): :func:`optimize_for_inference` returns it as it is."""


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` runs: its parameters' device; a model without parameters (:class:`InferenceOnly`): the CPU."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def optimize_for_inference(model: nn.Module, fuse: bool = True, channels_last: bool | None = None,
                           dtype: torch.dtype | str | None = None, compile: bool | str = False,
                           cuda_graph: bool = False, emulated_bf16: bool = False) -> InferenceModel:
    """A fast, inference-only copy of ``model`` (an ``ImageClassifier`` or ``CSPNet``); ``model`` is not changed.

    Args:
        model: the model, on the device it should run on.
        fuse: fold BatchNorm into the convolutions (:func:`fuse_bn`). Models with nothing to fold are left as they are.
        channels_last: NHWC memory format; ``None`` (default): on for CPU and CUDA, where it measured faster.
        dtype: ``None`` (float32), ``torch.bfloat16``/``'bf16'`` or ``torch.float16``/``'fp16'``. bf16 on a CPU
            needs its bf16 instructions (:func:`cpu_features`: AMX or AVX512-BF16); int8 is
            :func:`cspnet.quantize.quantize`.
        compile: ``torch.compile`` the converted model (``True``, or an inductor mode such as
            ``'max-autotune'``). The first call compiles (tens of seconds).
        cuda_graph: capture the forward as a CUDA graph per input shape (CUDA only).
        emulated_bf16: allow bf16 on a CPU without bf16 instructions, where oneDNN emulates it (slower than
            float32).

    Raises:
        InvalidOptionError: an unknown ``dtype`` (also ``'int8'``), ``cuda_graph`` off CUDA, or bf16 on a CPU that
            would only emulate it (a warning instead where the CPU's flags cannot be read).

    Returns:
        An :class:`InferenceModel`: ``(N, 3, H, W)`` float -> logits ``(N, num_classes)`` float32 (or the
        backbone's tuple of maps), to be called under ``torch.inference_mode()`` / ``torch.no_grad()``.
    """
    if isinstance(model, InferenceOnly):
        # (a float32 dtype, however spelt, is no change; int8 is what it already is)
        cast = dtype not in ("int8", torch.int8) and _resolve_dtype(dtype) is not None
        if cast or compile or cuda_graph:
            raise InvalidOptionError(f"{getattr(model, 'name', 'the model')} is an int8 model that runs as it was "
                                     f"quantized: no dtype, compile or cuda_graph for it")
        return model
    dtype = _resolve_dtype(dtype)
    device = model_device(model)
    if cuda_graph and device.type != "cuda":
        raise InvalidOptionError(f"cuda_graph=True needs the model on a CUDA device; it is on {device}")
    if dtype is torch.bfloat16 and device.type == "cpu":
        _check_cpu_bf16(emulated_bf16)
    if channels_last is None:
        channels_last = device.type in ("cpu", "cuda")
    if fuse and any(isinstance(m, ConvNormAct) for m in model.modules()):
        # folded straight into NHWC: the .to(channels_last) below then copies nothing
        net = fuse_bn(model, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    else:
        net = copy.deepcopy(model).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if dtype is not None:
        net = net.to(dtype)
    return InferenceModel(net, channels_last=channels_last, dtype=dtype, compile=compile, cuda_graph=cuda_graph,
                          source=model).eval()
