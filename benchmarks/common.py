"""Helpers shared by the benchmark scripts: the machine's description, identical timm/cspnet model pairs,
interleaved timing, and writing a script's section of ``benchmarks/RESULTS.md``.

Timing protocol (every script): warm-up calls first, then ``rounds`` rounds; in each round every candidate runs
``iters`` times back to back (order rotated each round, so none always follows another), synchronised on CUDA.
Throughput is batch / median seconds per call. The ratio of two candidates is the median over rounds of their
per-round ratio, which cancels slow drifts in machine load (the 2-core CI machine is shared).
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
ARCHS = ("cspdarknet53", "cspresnet50", "cspresnext50")
CONFIGS = {  # the mmpretrain config of each architecture (tools/test.py's CONFIG)
    "cspdarknet53": "configs/cspnet/cspdarknet50_8xb32_in1k.py",
    "cspresnet50": "configs/cspnet/cspresnet50_8xb32_in1k.py",
    "cspresnext50": "configs/cspnet/cspresnext50_8xb32_in1k.py",
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("timm", "torchvision", "PIL"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni")  # what fp32/bf16 kernels use
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products; without them oneDNN converts (slower than fp32)


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``lscpu``'s ``Flags``, from /proc/cpuinfo); empty where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_unsupported(device: torch.device) -> str | None:
    """``None`` when bf16 runs natively on ``device``; else why not, in words (the bf16 rows are then skipped)."""
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else f"{torch.cuda.get_device_name(device)} has no bf16"
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (torch.backends.mkldnn), which runs CPU bf16 convolutions"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "oneDNN reports no bf16 support on this CPU"
    if not set(BF16_FLAGS) & cpu_flags():
        return (f"the CPU has none of {', '.join(BF16_FLAGS)}: oneDNN would convert to fp32 and back, slower than "
                "fp32")
    return None


def matmul_peak(dtype: str, device: torch.device, n: int = 4096, reps: int = 3) -> tuple[float, dict[str, float]]:
    """This machine's measured dense ceiling in ``dtype`` ('fp32' or 'bf16'), with the threads the models get:
    ``(best FLOP/s, {way: FLOP/s})``, ``2 n^3`` flops per ``(n, n) @ (n, n)`` product, the fastest of ``reps`` timed
    reps per way. Two ways: ``torch.mm`` (on CPU, fp32 goes to MKL, bf16 to oneDNN) and the same product as a 1x1
    convolution (oneDNN, the library that runs the models' convolutions; on CPU only): the ceiling is the faster,
    so no path's share is taken of a slower library's figure. Each timed rep runs enough products to last >= 0.2 s
    (one on a 2-core CPU; hundreds on a GPU)."""
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dt) for _ in range(2))
    ways = {"matmul": lambda: torch.mm(a, b)}
    if device.type == "cpu":  # (1, n, n, 1) NCHW input times n x n x 1 x 1 weights: n^3 MACs, oneDNN's GEMM
        x, w = a.view(1, n, n, 1), b.view(n, n, 1, 1)
        ways["1x1 conv"] = lambda: torch.nn.functional.conv2d(x, w)
    got = {}
    with torch.inference_mode():
        for way, fn in ways.items():
            fn()  # warm-up: the library picks and prepares its kernel
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            calls = max(1, int(0.2 / max(time.perf_counter() - t0, 1e-6)))
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                sync(device)
                best = min(best, (time.perf_counter() - t0) / calls)
            got[way] = 2 * n**3 / best
    return max(got.values()), got


def machine(device: torch.device) -> dict[str, str]:
    """What a figure depends on: CPU (``lscpu``'s model name) and its flags that matter, cores and threads, GPU,
    allocator, versions, load."""
    flags = cpu_flags()
    info = {
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "cpu flags": ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS) if flags else "n/a",
        "allocator": "jemalloc (LD_PRELOAD)" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "default (glibc)",
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none used",
        "versions": ", ".join(f"{k} {v}" for k, v in versions().items()),
        "load average at start (1/5/15 min)": load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if device.type == "cuda":
        info["cuda"] = f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    return info


def command_line() -> str:
    env = " ".join(f"{k}={shlex.quote(os.environ[k])}" for k in ("LD_PRELOAD",) if os.environ.get(k))
    script = os.path.relpath(sys.argv[0], REPO) if Path(sys.argv[0]).is_absolute() else sys.argv[0]
    argv = [Path(sys.executable).name, script, *sys.argv[1:]]
    return (env + " " if env else "") + " ".join(shlex.quote(a) for a in argv)


def header_lines(info: dict[str, str]) -> list[str]:
    lines = [f"- command: `{command_line()}`"]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    return lines


def rel_diff(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|: the logits' difference as the RESULTS tables report it."""
    return float((a.float() - ref.float()).abs().max() / ref.float().abs().max())


def paired_models(arch: str, seed: int = 0):
    """``(timm model, cspnet model)`` with identical weights, both eval, on CPU.

    timm's random init leaves BatchNorm at identity statistics (and zero scales in the last BN of each block), which
    would make BN folding trivially exact; the statistics are randomised first, so the fast paths are tested on
    numbers like a trained net's. The weights go timm -> cspnet through cspnet's converter.
    """
    import timm

    from cspnet.models import ImageClassifier
    from cspnet.weights.convert import convert_state_dict

    torch.manual_seed(seed)
    tm = timm.create_model(arch, pretrained=False).eval()
    g = torch.Generator().manual_seed(seed)
    for mod in tm.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(1 + torch.randn(n, generator=g) * 0.1)
            mod.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    cm = ImageClassifier(arch).eval()
    cm.load_state_dict(convert_state_dict(tm.state_dict(), arch, "cspnet"))
    return tm, cm


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]], rounds: int, iters: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each ``fns[name]()``, one entry per round (see the module docstring)."""
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                fns[name]()
            sync(device)
            out[name].append((time.perf_counter() - t0) / iters)
    return out


def median_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of ``slow[r] / fast[r]``: how many times faster ``fast`` ran, round by round."""
    return statistics.median(s / f for s, f in zip(slow, fast))


def write_section(results: Path | None, key: str, title: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- key:start -->`` and ``<!-- key:end -->`` atomically; None (a
    ``--quick`` smoke run without ``--results``) writes nothing, so a smoke run never replaces measured results."""
    from cspnet._io import atomic_write

    if results is None:
        print(f"section {key!r} not written (a --quick run; give --results FILE to keep it)")
        return

    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    block = f"<!-- {key}:start -->\n## {title}\n\n{body.rstrip()}\n<!-- {key}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(key)}:start -->.*?<!-- {re.escape(key)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write(results, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    print(f"wrote section {key!r} of {results}")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
