#!/usr/bin/env python
"""Model throughput, batch-1 latency, peak memory and numerics: cspnet's fast paths vs timm, in one run.

Both libraries get the same weights (timm's random init with randomised BatchNorm statistics, copied into cspnet by
its converter), the same input and the same timing loop (see ``benchmarks/common.py``). Run it with the timm venv
(cspnet installed there with ``pip install --no-deps -e .``)::

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /work/venv-timm/bin/python benchmarks/bench_models.py
    python benchmarks/bench_models.py --device cuda --dtype bf16 --batch-size 256 --compile --cuda-graph

Candidates: timm eager (NCHW, as ``timm.create_model`` gives it), timm eager channels_last, timm compiled
(channels_last + ``torch.compile``, with ``--compile``); cspnet as built (unfused), cspnet fast
(``optimize_for_inference``: folded BN + channels_last), and with ``--cuda-graph``/``--compile`` those variants.
bf16 is autocast for timm (``timm/benchmark.py --amp``) and bf16 weights for cspnet fast (``dtype='bf16'``).
Writes/updates the section ``models-<device>-<dtype>`` of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
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
    make: Callable[[], Callable[[torch.Tensor], torch.Tensor]]  # builds the runner (compiles lazily, on first call)
    fixed_batch: bool = False  # tied to one batch size (CUDA graph / compile): batch 1 needs its own instance
    compiled: bool = False


def build_candidates(tm, cm, device: torch.device, dtype: str, args) -> list[Candidate]:
    import cspnet
    import cspnet.optimize

    bf16 = dtype == "bf16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def timm_runner(model, channels_last: bool, compile_: bool = False):
        def make():
            m = copy.deepcopy(model).to(memory_format=torch.channels_last) if channels_last else model
            fn = torch.compile(m) if compile_ else m
            fmt = torch.channels_last if channels_last else torch.contiguous_format

            def run(x):
                with autocast():
                    return fn(x.contiguous(memory_format=fmt))
            return run
        return make

    def plain_runner():
        def run(x):
            with autocast():
                return cm(x)
        return run

    def fast(**kw):
        return lambda: cspnet.optimize_for_inference(cm, dtype="bf16" if bf16 else None, **kw)

    cands = [
        Candidate("timm eager", timm_runner(tm, False)),
        Candidate("timm eager channels_last", timm_runner(tm, True)),
    ]
    if args.compile:
        cands.append(Candidate("timm compiled (channels_last)", timm_runner(tm, True, True), True, True))
    cands += [Candidate("cspnet as built (unfused)", plain_runner), Candidate("cspnet fast", fast())]
    if bf16:  # the float32 fast path beside it: its speed, and its numbers against the plain model on this device
        cands.append(Candidate("cspnet fast fp32", lambda: cspnet.optimize_for_inference(cm)))
    if args.cuda_graph:
        cands.append(Candidate("cspnet fast + CUDA graph", fast(cuda_graph=True), True))
    if args.compile:
        made = {}

        def compiled():
            made["c"] = fast(compile=True)()
            return made["c"]

        def compiled_graph():
            # graph-capture the module compiled just above (already compiled for this batch), not a second compile
            c = made["c"]
            return cspnet.optimize.InferenceModel(c._run, channels_last=c.channels_last, dtype=c.dtype, cuda_graph=True)

        cands.append(Candidate("cspnet fast + compile", compiled, True, True))
        if args.cuda_graph:
            cands.append(Candidate("cspnet fast + compile + CUDA graph", compiled_graph, True, True))
    return cands


def probe_memory(args) -> None:
    """In a fresh process: peak RSS of building one candidate and running one batch, above the RSS after the
    source models and the input exist (``--probe`` mode; the parent reads the printed MB)."""
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    tm, cm = common.paired_models(args.models[0])
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    cand = {c.name: c for c in build_candidates(tm, cm, device, args.dtype, args)}[args.probe]
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


def cpu_peak_mb(arch: str, name: str, args) -> str:
    cmd = [sys.executable, __file__, "--probe", name, "--models", arch, "--batch-size", str(args.batch_size),
           "--img-size", str(args.img_size), "--dtype", args.dtype, "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_MB"):
            return line.split()[1]
    return "n/a"


def bench_arch(arch: str, args, device: torch.device) -> dict:
    tm, cm = common.paired_models(arch)
    tm, cm = tm.to(device), cm.to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(device)
    x1 = x[:1].clone()
    cands = build_candidates(tm, cm, device, args.dtype, args)
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
            setup_s[c.name] = time.perf_counter() - t0
            if device.type == "cuda":
                mem[c.name] = f"{(torch.cuda.max_memory_allocated() - base) / 2**20:.0f}"
            numerics[c.name] = (common.rel_diff(out, ref), float((out.float().argmax(1) == ref.argmax(1)).float().mean()) * 100)
            runners[c.name] = run
            print(f"  {arch} {c.name}: ready in {setup_s[c.name]:.1f} s, rel diff {numerics[c.name][0]:.2e}", flush=True)
        times = common.time_interleaved({n: (lambda r=r: r(x)) for n, r in runners.items()}, args.rounds, args.iters, device)

        lat = {}
        if args.latency:
            lat_runners = {}
            for c in cands:
                if c.compiled and not args.compile_latency:
                    continue  # a compiled runner recompiles for batch 1: minutes on CPU, skipped unless asked
                run = c.make() if c.fixed_batch else runners[c.name]
                for _ in range(args.warmup):
                    run(x1)
                lat_runners[c.name] = run
            lat = common.time_interleaved({n: (lambda r=r: r(x1)) for n, r in lat_runners.items()},
                                          args.rounds, args.iters * args.latency_iters, device)
    if device.type == "cpu" and args.memory:
        for c in cands:
            if not c.compiled:
                mem[c.name] = cpu_peak_mb(arch, c.name, args)
    return dict(arch=arch, times=times, latency=lat, numerics=numerics, setup_s=setup_s, memory=mem,
                names=[c.name for c in cands])


def report(res: dict, args) -> tuple[str, dict]:
    times, lat = res["times"], res["latency"]
    base = times["timm eager"]
    rows, summary = [], {}
    for n in res["names"]:
        t = times[n]
        thr = args.batch_size / statistics.median(t)
        best = args.batch_size / min(t)
        lat_ms = 1000 * statistics.median(lat[n]) if n in lat else None
        d, agree = res["numerics"][n]
        rows.append([n, f"{thr:,.1f}", f"{best:,.1f}", f"{common.median_ratio(base, t):.2f}x",
                     f"{lat_ms:.1f}" if lat_ms is not None else "-",
                     res["memory"].get(n, "-"), f"{d:.1e}", f"{agree:.1f}%", f"{res['setup_s'][n]:.1f}"])
        summary[n] = dict(img_s=thr, best_img_s=best, vs_timm_eager=common.median_ratio(base, t),
                          latency_ms=lat_ms, rel_diff=d, top1_agree=agree)
    mem_note = ("peak RSS (MB) of a fresh process while it builds the path and runs one batch, above its RSS once "
                "the source models and the input exist (Linux VmHWM, reset first)" if args.device == "cpu" else
                "peak GPU memory (MB) allocated while building the path and running its warm-up, above what was "
                "allocated before (the path's own weight copy, activations, CUDA-graph pool)")
    text = (f"### {res['arch']} (batch {args.batch_size}, {args.img_size}x{args.img_size}, {args.dtype})\n\n"
            + common.table(["path", "img/s (median)", "img/s (best)", "vs timm eager (per-round median)",
                            "latency batch 1 (ms)", "peak mem (MB)", "max rel diff vs fp32 plain",
                            "top-1 agree", "setup+warm-up (s)"], rows)
            + f"\n\nmemory: {mem_note}. rel diff: max |logit - plain fp32 logit| / max |plain fp32 logit| on the "
              f"timed batch; top-1 agree: share of its rows with the same argmax.\n")
    return text, summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(common.ARCHS), choices=common.ARCHS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 on CPU, 256 on CUDA")
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU (default %(default)s)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7 on CPU, 10 on CUDA)")
    p.add_argument("--iters", type=int, default=None, help="calls per round and candidate (default 1 CPU, 10 CUDA)")
    p.add_argument("--latency-iters", type=int, default=5, help="batch-1 calls per timed call (x iters)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 2 CPU, 5 CUDA)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd timm and cspnet")
    p.add_argument("--compile-latency", action="store_true", help="also compile for batch 1 (slow)")
    p.add_argument("--cuda-graph", action="store_true", help="also time cspnet with CUDA graphs")
    p.add_argument("--no-latency", dest="latency", action="store_false")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="CPU: skip the peak-RSS subprocesses")
    p.add_argument("--quick", action="store_true", help="a smoke run: 128 px, batch 2, 2 rounds, no memory")
    p.add_argument("--results", type=Path, default=None,
                   help="the results file to update (default benchmarks/RESULTS.md; --quick: none)")
    p.add_argument("--section", default=None, help="RESULTS.md section key (default models-<device>-<dtype>)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.batch_size = args.batch_size or (256 if gpu else 16)
    args.rounds = args.rounds or (10 if gpu else 7)
    args.iters = args.iters or (10 if gpu else 1)
    args.warmup = args.warmup or (5 if gpu else 2)
    if args.quick:
        args.img_size, args.batch_size, args.rounds, args.memory = 128, min(args.batch_size, 2), 2, False
    if args.cuda_graph and not gpu:
        p.error("--cuda-graph needs --device cuda")
    if args.probe:
        probe_memory(args)
        return 0
    torch.set_num_threads(args.threads) if not gpu else None
    torch.backends.cudnn.benchmark = True  # as timm's benchmark.py: both libraries get autotuned cuDNN kernels

    info = common.machine(device)
    print("\n".join(common.header_lines(info)), flush=True)
    sections, summaries = [], {}
    for arch in args.models:
        res = bench_arch(arch, args, device)
        text, summaries[arch] = report(res, args)
        print(text, flush=True)
        sections.append(text)
    info["load average at end (1/5/15 min)"] = common.load_average()

    best = {}
    for arch, s in summaries.items():
        fast = {n: v for n, v in s.items() if n.startswith("cspnet fast") and n != "cspnet fast fp32"}
        name = max(fast, key=lambda n: fast[n]["img_s"])
        best[arch] = (name, fast[name])
    lines = ["### Summary: the fastest cspnet path vs timm (same run)", ""]
    for arch, (name, v) in best.items():
        s = summaries[arch]
        vs = [f"{v['img_s'] / s[t]['img_s']:.2f}x {t}" for t in s if t.startswith("timm")]
        lines.append(f"- {arch}: {name} {v['img_s']:,.1f} img/s = {v['vs_timm_eager']:.2f}x timm eager "
                     f"(per-round median); by median throughput: {', '.join(vs)}; max rel diff {v['rel_diff']:.1e}")
    body = "\n".join(common.header_lines(info)) + "\n\n" + "\n".join(sections) + "\n" + "\n".join(lines) + "\n"
    print("\n".join(lines))
    key = args.section or f"models-{device.type}-{args.dtype}"
    title = f"Models on {'GPU: ' + info['gpu'] if gpu else 'CPU'}, {args.dtype}, batch {args.batch_size}"
    common.write_section(args.results or (None if args.quick else common.RESULTS), key, title, body)
    if args.json:
        args.json.write_text(json.dumps(dict(machine=info, results=summaries), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
