#!/usr/bin/env python
"""Model throughput (batch 16 and 1), share of the machine's measured peak, peak memory and numerics: cspnet's
paths vs timm's, in one run.

Both libraries get the same weights (timm's random init with randomised BatchNorm statistics, copied into cspnet by
its converter), the same input and the same timing loop (see ``benchmarks/common.py``). Run it with the timm venv
(cspnet installed there with ``pip install --no-deps -e .``)::

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /work/venv-timm/bin/python benchmarks/bench_models.py
    python benchmarks/bench_models.py --models cspresnet50 --quick          # a smoke run, minutes on 2 cores
    python benchmarks/bench_models.py --device cuda --dtype bf16 --batch-size 256 --compile --cuda-graph

Paths (``--dtype both``, the CPU default; bf16 rows only where the CPU has native bf16, else skipped, with why):

- timm eager (NCHW, as ``timm.create_model`` gives it) and timm eager channels_last, fp32;
- timm compiled: channels_last + ``torch.compile``, fp32; and in bf16 with autocast and, on CPU, inductor's
  ``freezing`` (weights constant-folded and prepacked for oneDNN, as PyTorch recommends for CPU inference);
- cspnet as built (``get_model``'s eval module, unfused), cspnet fast (``optimize_for_inference``: folded BN +
  channels_last) in fp32 and with ``dtype='bf16'``; with ``--compile``/``--cuda-graph`` those variants too.

With one ``--dtype`` every path runs in it (bf16: autocast for timm, as ``timm/benchmark.py --amp``, bf16 weights
for cspnet fast) plus cspnet fast fp32 as a reference. Each row's share of peak is ``img/s x MACs x 2`` over the
FLOP/s of a 4096^3 product in the row's dtype timed in the same run (``common.matmul_peak``: as a matmul and as a
1x1 convolution, before and after the models; the fastest counts), MACs being the convolutions' and the classifier's
(``cspnet.analysis``; BatchNorm and pooling are not dense work). Compiled paths get a batch-1 figure with
``--compile-latency`` (one more compile each: 30 s to minutes on 2 cores; the default run of the three models stays
near 15 minutes). Writes/updates the section ``models-<device>-<dtype>`` of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


@dataclass
class Candidate:
    name: str
    dtype: str  # 'fp32' or 'bf16': what it computes in, and so which measured peak its share is of
    make: Callable[[], Callable[[torch.Tensor], torch.Tensor]]  # builds the runner (compiles lazily, on first call)
    fixed_batch: bool = False  # tied to one batch size (CUDA graph / compile): batch 1 needs its own instance
    compiled: bool = False

    @property
    def key(self) -> str:
        return f"{self.name}, {self.dtype}"


TIMM_EAGER, TIMM_COMPILED = "timm eager", "timm compiled (channels_last)"


def run_dtypes(args) -> list[str]:
    """The dtypes this run's rows compute in: ``--dtype``, less bf16 where it is unsupported."""
    want = ["fp32", "bf16"] if args.dtype == "both" else [args.dtype]
    return [d for d in want if d == "fp32" or args.bf16_skip is None] or ["fp32"]


def build_candidates(tm, cm, device: torch.device, args) -> list[Candidate]:
    import cspnet
    import cspnet.optimize

    dtypes = run_dtypes(args)
    eager_dtype = dtypes[0] if args.dtype != "both" else "fp32"  # "as returned": the models as they come, fp32
    cpu = device.type == "cpu"

    def autocast(dtype: str):
        return torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()

    def timm_runner(dtype: str, channels_last: bool, compile_: bool = False, freezing: bool = False):
        def make():
            m = copy.deepcopy(tm).to(memory_format=torch.channels_last) if channels_last else tm
            # dynamic=False: one static graph per batch size (the batch-1 row compiles its own), as timm's benchmark
            fn = torch.compile(m, dynamic=False) if compile_ else m
            fmt = torch.channels_last if channels_last else torch.contiguous_format

            def run(x):
                # inductor reads its config when it compiles, on the first call of each shape: set it for every call
                with autocast(dtype), freeze() if freezing else nullcontext():
                    return fn(x.contiguous(memory_format=fmt))
            return run
        return make

    def plain_runner():
        def run(x):
            with autocast(eager_dtype):
                return cm(x)
        return run

    def fast(dtype: str, **kw):
        return lambda: cspnet.optimize_for_inference(cm, dtype="bf16" if dtype == "bf16" else None, **kw)

    cands = [Candidate(TIMM_EAGER, eager_dtype, timm_runner(eager_dtype, False)),
             Candidate("timm eager channels_last", eager_dtype, timm_runner(eager_dtype, True))]
    if args.timm_compile:
        for d in dtypes:
            freezing = cpu and d == "bf16"
            name = TIMM_COMPILED if not freezing else "timm compiled (channels_last, freezing)"
            cands.append(Candidate(name, d, timm_runner(d, True, True, freezing), True, True))
    cands.append(Candidate("cspnet as built (unfused)", eager_dtype, plain_runner))
    for d in dtypes:
        cands.append(Candidate("cspnet fast", d, fast(d)))
    if dtypes == ["bf16"]:  # the float32 fast path beside it: its speed, and its numbers against the plain model
        cands.append(Candidate("cspnet fast", "fp32", fast("fp32")))
    for d in dtypes:
        if args.cuda_graph:
            cands.append(Candidate("cspnet fast + CUDA graph", d, fast(d, cuda_graph=True), True))
        if args.compile:
            made = {}

            def compiled(d=d, made=made):
                made["c"] = fast(d, compile=True)()
                return made["c"]

            def compiled_graph(made=made):
                # graph-capture the module compiled just above (already compiled for this batch), not a second one
                c = made["c"]
                return cspnet.optimize.InferenceModel(c._run, channels_last=c.channels_last, dtype=c.dtype,
                                                      cuda_graph=True)

            cands.append(Candidate("cspnet fast + compile", d, compiled, True, True))
            if args.cuda_graph:
                cands.append(Candidate("cspnet fast + compile + CUDA graph", d, compiled_graph, True, True))
    return cands


def freeze():
    """Inductor's ``freezing`` for the compile this call may trigger (a config patch: nothing else changes)."""
    import torch._inductor.config

    return torch._inductor.config.patch(freezing=True)


def probe_memory(args) -> None:
    """In a fresh process: peak RSS of building one candidate and running one batch, above the RSS after the
    source models and the input exist (``--probe`` mode; the parent reads the printed MB)."""
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    tm, cm = common.paired_models(args.models[0])
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    cand = {c.key: c for c in build_candidates(tm, cm, device, args)}[args.probe]
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS mark (VmHWM) to the current RSS
    base = _status_mb("VmRSS")
    with torch.inference_mode():
        cand.make()(x)
    print(f"PEAK_MB {_status_mb('VmHWM') - base:.0f}")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_peak_mb(arch: str, key: str, args) -> str:
    cmd = [sys.executable, __file__, "--probe", key, "--models", arch, "--batch-size", str(args.batch_size),
           "--img-size", str(args.img_size), "--dtype", args.dtype, "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_MB"):
            return line.split()[1]
    return "n/a"


def dense_macs(arch: str, img_size: int) -> int:
    """Multiply-accumulates per image of the dense products (convolutions + classifier) at ``img_size``: the work a
    matmul's peak measures; BatchNorm (folded by the fast paths) and pooling are left out."""
    from cspnet.analysis import analyze

    a = analyze(arch, img_size)
    return a.macs_conv + a.macs_head


def bench_arch(arch: str, args, device: torch.device) -> dict:
    # dynamo keeps at most 8 graphs per code object (then runs it eager): the three timm models share CspNet's code,
    # and each compiles up to 4 (2 dtypes x batch 16 and 1); the previous model's are of no further use
    torch._dynamo.reset()
    tm, cm = common.paired_models(arch)
    tm, cm = tm.to(device), cm.to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(device)
    x1 = x[:1].clone()
    cands = build_candidates(tm, cm, device, args)
    runners, setup_s, mem = {}, {}, {}
    with torch.inference_mode():
        ref = cm(x)  # the plain float32 model: every candidate's numbers are compared with this
        numerics = {}
        for c in cands:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            run = c.make()
            for _ in range(args.warmup):
                out = run(x)
            common.sync(device)
            setup_s[c.key] = time.perf_counter() - t0
            if device.type == "cuda":
                mem[c.key] = f"{(torch.cuda.max_memory_allocated() - base) / 2**20:.0f}"
            agree = float((out.float().argmax(1) == ref.argmax(1)).float().mean()) * 100
            numerics[c.key] = (common.rel_diff(out, ref), agree)
            runners[c.key] = run
            print(f"  {arch} {c.key}: ready in {setup_s[c.key]:.1f} s, rel diff {numerics[c.key][0]:.2e}", flush=True)
        times = common.time_interleaved({n: (lambda r=r: r(x)) for n, r in runners.items()}, args.rounds, args.iters,
                                        device)

        lat = {}
        if args.latency:
            lat_runners = {}
            for c in cands:
                if c.compiled and not args.compile_latency:
                    continue  # a compiled runner compiles again for batch 1: minutes on CPU, skipped unless asked
                t0 = time.perf_counter()
                run = c.make() if c.fixed_batch else runners[c.key]
                for _ in range(args.warmup):
                    run(x1)
                if c.fixed_batch:
                    print(f"  {arch} {c.key}: batch 1 ready in {time.perf_counter() - t0:.1f} s", flush=True)
                lat_runners[c.key] = run
            lat = common.time_interleaved({n: (lambda r=r: r(x1)) for n, r in lat_runners.items()},
                                          args.rounds, args.iters * args.latency_iters, device)
    if device.type == "cpu" and args.memory:
        for c in cands:
            if not c.compiled:
                mem[c.key] = cpu_peak_mb(arch, c.key, args)
    return dict(arch=arch, times=times, latency=lat, numerics=numerics, setup_s=setup_s, memory=mem,
                cands=cands, macs=dense_macs(arch, args.img_size))


def _ratio(times: dict, base: str | None, key: str) -> float | None:
    return common.median_ratio(times[base], times[key]) if base in times else None


def report(res: dict, args, peak: dict[str, float]) -> tuple[str, dict]:
    times, lat, macs = res["times"], res["latency"], res["macs"]
    base = next(c.key for c in res["cands"] if c.name == TIMM_EAGER)
    compiled = {c.dtype: c.key for c in res["cands"] if c.name.startswith("timm compiled")}
    fmt = lambda v, spec, unit="": "-" if v is None else f"{v:{spec}}{unit}"  # noqa: E731
    rows, summary = [], {}
    for c in res["cands"]:
        n = c.key
        thr = args.batch_size / statistics.median(times[n])
        thr1 = 1 / statistics.median(lat[n]) if n in lat else None
        vs_eager, vs_compiled = _ratio(times, base, n), _ratio(times, compiled.get(c.dtype), n)
        vs_eager1 = _ratio(lat, base, n) if n in lat else None
        share = thr * macs * 2 / peak[c.dtype] * 100 if c.dtype in peak else None
        d, agree = res["numerics"][n]
        rows.append([c.name, c.dtype, f"{thr:,.1f}", fmt(vs_eager, ".2f", "x"), fmt(vs_compiled, ".2f", "x"),
                     fmt(share, ".1f", "%"), fmt(thr1, ",.1f"), fmt(vs_eager1, ".2f", "x"),
                     res["memory"].get(n, "-"), f"{d:.1e}", f"{agree:.1f}%", f"{res['setup_s'][n]:.1f}"])
        summary[n] = dict(name=c.name, dtype=c.dtype, img_s=thr, best_img_s=args.batch_size / min(times[n]),
                          vs_timm_eager=vs_eager, vs_timm_compiled_same_dtype=vs_compiled, share_of_peak_pct=share,
                          batch1_img_s=thr1, batch1_vs_timm_eager=vs_eager1,
                          latency_ms=1000 / thr1 if thr1 else None, rel_diff=d, top1_agree=agree)
    mem_note = ("peak RSS (MB) of a fresh process while it builds the path and runs one batch, above its RSS once "
                "the source models and the input exist (Linux VmHWM, reset first)" if args.device == "cpu" else
                "peak GPU memory (MB) allocated while building the path and running its warm-up, above what was "
                "allocated before (the path's own weight copy, activations, CUDA-graph pool)")
    text = (f"### {res['arch']} (batch {args.batch_size}, {args.img_size}x{args.img_size}, "
            f"{macs / 1e9:.3f} GMACs/image dense)\n\n"
            + common.table(["path", "dtype", f"img/s batch {args.batch_size} (median)",
                            "vs timm eager (per-round median)", "vs timm compiled, same dtype", "share of peak",
                            "img/s batch 1", "batch 1 vs timm eager", "peak mem (MB)", "max rel diff vs fp32 plain",
                            "top-1 agree", "setup+warm-up (s)"], rows)
            + f"\n\nratios: median over rounds of the per-round ratio (same input, interleaved). share of peak: "
              f"img/s x {macs / 1e9:.3f} G dense MACs x 2 / the measured matmul FLOP/s of the row's dtype. memory: "
              f"{mem_note}. rel diff: max |logit - plain fp32 logit| / max |plain fp32 logit| on the timed batch; "
              f"top-1 agree: share of its rows with the same argmax.\n")
    return text, summary


def summary_lines(summaries: dict) -> list[str]:
    lines = ["### Summary: the fastest cspnet path vs timm, per dtype (same run)", ""]
    for arch, s in summaries.items():
        for dtype in dict.fromkeys(v["dtype"] for v in s.values()):
            fast = {n: v for n, v in s.items() if v["name"].startswith("cspnet fast") and v["dtype"] == dtype}
            if not fast:
                continue
            n = max(fast, key=lambda k: fast[k]["img_s"])
            v = fast[n]
            vs = [f"{v['img_s'] / t['img_s']:.2f}x {t['name']} {t['dtype']}" for t in s.values()
                  if t["name"].startswith("timm")]
            share = "" if v["share_of_peak_pct"] is None else f", {v['share_of_peak_pct']:.1f}% of the {dtype} peak"
            lines.append(f"- {arch}, {dtype}: {v['name']} {v['img_s']:,.1f} img/s{share}; by median throughput: "
                         f"{', '.join(vs)}; max rel diff {v['rel_diff']:.1e}")
    return lines


def measure_peak(dtypes: list[str], device: torch.device, n: int) -> dict[str, tuple[float, dict[str, float]]]:
    peaks = {d: common.matmul_peak(d, device, n) for d in dtypes}
    for d, (v, ways) in peaks.items():
        print(f"  peak {d}: {v / 1e9:,.0f} GFLOP/s (" + ", ".join(f"{w} {f / 1e9:,.0f}" for w, f in ways.items()) + ")",
              flush=True)
    return peaks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(common.ARCHS), choices=common.ARCHS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "both"], default=None,
                   help="the paths' arithmetic (default: both on CPU, fp32 on CUDA)")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 on CPU, 256 on CUDA")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch threads on CPU, for the models and the peak matmul (default: all cores, %(default)s)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5 on CPU, 10 on CUDA)")
    p.add_argument("--iters", type=int, default=None, help="calls per round and candidate (default 1 CPU, 10 CUDA)")
    p.add_argument("--latency-iters", type=int, default=None, help="batch-1 calls per timed call (x iters; "
                   "default 3 on CPU, 5 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 2 CPU, 5 CUDA)")
    p.add_argument("--peak-size", type=int, default=4096, help="side of the peak matmul (default %(default)s)")
    p.add_argument("--timm-compile", action=argparse.BooleanOptionalAction, default=None,
                   help="time timm + torch.compile (default: on CPU; on CUDA with --compile)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd cspnet (and timm, on CUDA)")
    p.add_argument("--compile-latency", action="store_true",
                   help="also compile the compiled paths for batch 1 (each compile: 30 s to minutes on 2 cores)")
    p.add_argument("--cuda-graph", action="store_true", help="also time cspnet with CUDA graphs")
    p.add_argument("--no-latency", dest="latency", action="store_false")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="CPU: skip the peak-RSS subprocesses")
    p.add_argument("--quick", action="store_true", help="a smoke run: 128 px, batch 2, 2 rounds, no memory, "
                   "2048 peak matmul")
    p.add_argument("--results", type=Path, default=None,
                   help="the results file to update (default benchmarks/RESULTS.md; --quick: none)")
    p.add_argument("--section", default=None, help="RESULTS.md section key (default models-<device>-<dtype>)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.dtype = args.dtype or ("fp32" if gpu else "both")
    args.batch_size = args.batch_size or (256 if gpu else 16)
    args.rounds = args.rounds or (10 if gpu else 5)
    args.iters = args.iters or (10 if gpu else 1)
    args.latency_iters = args.latency_iters or (5 if gpu else 3)
    args.warmup = args.warmup or (5 if gpu else 2)
    args.timm_compile = (args.compile if gpu else True) if args.timm_compile is None else args.timm_compile
    if args.quick:
        args.img_size, args.batch_size, args.rounds, args.memory = 128, min(args.batch_size, 2), 2, False
        args.peak_size = min(args.peak_size, 2048)
    if args.cuda_graph and not gpu:
        p.error("--cuda-graph needs --device cuda")
    if not gpu:
        torch.set_num_threads(args.threads)
    args.bf16_skip = common.bf16_unsupported(device) if args.dtype != "fp32" else None
    if args.probe:
        probe_memory(args)
        return 0
    torch.backends.cudnn.benchmark = True  # as timm's benchmark.py: both libraries get autotuned cuDNN kernels

    info = common.machine(device)
    dtypes = run_dtypes(args)
    if args.bf16_skip:
        info["bf16"] = f"rows skipped: {args.bf16_skip}"
        if args.dtype == "bf16":
            p.error(f"--dtype bf16: {args.bf16_skip}")
    print("\n".join(common.header_lines(info)), flush=True)
    peaks = [measure_peak(dtypes, device, args.peak_size)]
    results = [bench_arch(arch, args, device) for arch in args.models]
    peaks.append(measure_peak(dtypes, device, args.peak_size))
    peak = {d: max(pk[d][0] for pk in peaks) for d in dtypes}  # the machine is shared: the faster is nearer its own
    threads = "the GPU" if gpu else f"{torch.get_num_threads()} threads"
    info["peak (dense)"] = "; ".join(
        f"{d} {peak[d] / 1e9:,.0f} GFLOP/s" + " (" + " / ".join(
            ", ".join(f"{w} {f / 1e9:,.0f}" for w, f in pk[d][1].items()) for pk in peaks)
        + f" before / after the models; {args.peak_size}^3, {threads})" for d in dtypes)
    info["load average at end (1/5/15 min)"] = common.load_average()
    sections, summaries = [], {}
    for res in results:
        text, summaries[res["arch"]] = report(res, args, peak)
        print(text, flush=True)
        sections.append(text)

    lines = summary_lines(summaries)
    body = "\n".join(common.header_lines(info)) + "\n\n" + "\n".join(sections) + "\n" + "\n".join(lines) + "\n"
    print("\n".join(common.header_lines(info)[-3:]))
    print("\n".join(lines))
    key = args.section or f"models-{device.type}-{args.dtype}"
    title = f"Models on {'GPU: ' + info['gpu'] if gpu else 'CPU'}, {args.dtype}, batch {args.batch_size}"
    common.write_section(args.results or (None if args.quick else common.RESULTS), key, title, body)
    if args.json:
        args.json.write_text(json.dumps(dict(machine=info, peak_flops=peak, results=summaries), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
