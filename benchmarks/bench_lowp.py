#!/usr/bin/env python
"""Low precision on the CPU: bf16 (``optimize_for_inference(dtype='bf16')``) and int8 (``cspnet.quantize``) against
float32 and timm, for speed and for numbers, in one run. Run it with the timm venv (cspnet installed there)::

    /work/venv-timm/bin/python benchmarks/bench_lowp.py --results benchmarks/RESULTS.md \\
        --digits work_dirs/digits_example          # the output folder of examples/finetune_digits.py
    ... --compile          # also timm bf16 + channels_last + torch.compile (freezing): minutes per model here
    ... --pt2e             # also PyTorch's PT2E int8 (X86InductorQuantizer + torch.compile; needs torchao)

Speed (per model, batch 16 and batch 1; weights: timm's random init with randomised BatchNorm statistics copied into
cspnet, as benchmarks/bench_models.py): timm eager fp32, timm bf16 autocast + channels_last (and compiled), cspnet fast
fp32, bf16 and int8 (calibrated on generated images), interleaved rounds (``common.time_interleaved``). The share of
the peak: the model's multiply-adds per second over those of a 2048-square matrix product (bf16 for the bf16 and int8
rows, fp32 for the others) on the same threads, timed in the same rounds (per-round ratio, median).

Numbers: top-1 agreement and max relative logit difference with float32 on the golden recipe weights
(``tests/golden.py``: seeded, BatchNorm statistics away from identity) over the demo images and generated ones (int8
calibrated on other generated images); and, with ``--digits``, held-out accuracy of the fine-tuned digits model in
float32, bf16 and int8 (calibrated on its training images).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import common  # noqa: E402


def generated_images(folder: Path, n: int, seed: int, size: int = 320) -> list[Path]:
    """``n`` PNGs of ``size`` px: smooth random colour fields with a few flat discs and pixel noise (no dataset)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    paths = []
    for i in range(n):
        low = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8))
        a = np.asarray(low.resize((size, size), Image.BICUBIC)).astype(np.float32)
        for _ in range(4):
            cx, cy, r = int(rng.integers(0, size)), int(rng.integers(0, size)), int(rng.integers(10, size // 3))
            a[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.random(3) * 255
        a += rng.normal(0, 8, a.shape)
        paths.append(folder / f"gen{seed}_{i}.png")
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(paths[-1])
    return paths


def peak_runners(n: int = 2048) -> dict[str, Callable[[], torch.Tensor]]:
    """An ``n``-square matrix product in bf16 and in fp32 (oneDNN/MKL): the CPU's attainable multiply-add rate,
    timed in the same interleaved rounds as the models so that the machine's load is the same for both."""
    mats = {d: (torch.randn(n, n).to(d), torch.randn(n, n).to(d)) for d in (torch.bfloat16, torch.float32)}
    return {f"peak {str(d).split('.')[1]}": (lambda a=a, b=b: torch.mm(a, b)) for d, (a, b) in mats.items()}


def int8_runner(cm, calib: list[Path]):
    from cspnet.quantize import quantize

    return quantize(cm, calib)


def pt2e_runner(cm, calib_x: torch.Tensor, batch: int):
    """PT2E: export, X86InductorQuantizer (static, per-channel weights), convert, torch.compile with freezing."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError:
        from torch.ao.quantization.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torch.ao.quantization.quantizer import x86_inductor_quantizer as xiq
    import torch._inductor.config as inductor

    q = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(cm, (calib_x[:batch],)).module(), q)
        for i in range(0, len(calib_x), batch):
            prepared(calib_x[i:i + batch])
        converted = convert_pt2e(prepared)
    inductor.freezing = True
    return torch.compile(converted)


def speed(arch: str, args, calib: list[Path]) -> str:
    import cspnet
    from cspnet.analysis import analyze

    tm, cm = common.paired_models(arch)
    cm.transform = cspnet.get_transform(arch)
    g = torch.Generator().manual_seed(0)
    size = cm.transform.preset.crop
    x16 = torch.randn(16, 3, size, size, generator=g)
    x1 = x16[:1].clone()
    macs = analyze(cm, size).macs  # per image

    def timm_bf16(compiled: bool):
        m = copy.deepcopy(tm).to(memory_format=torch.channels_last)
        fn = torch.compile(m, dynamic=False) if compiled else m

        def run(x):
            import torch._inductor.config as inductor

            with torch.autocast("cpu", dtype=torch.bfloat16), inductor.patch(freezing=True):
                return fn(x.contiguous(memory_format=torch.channels_last))
        return run

    with torch.inference_mode():
        ref16 = cm(x16)
    builders = {"timm eager fp32": lambda: tm, "timm bf16 autocast + channels_last": lambda: timm_bf16(False)}
    if args.compile:
        builders["timm bf16 + channels_last + compile (freezing)"] = lambda: timm_bf16(True)
    builders["cspnet fast fp32"] = lambda: cspnet.optimize_for_inference(cm)
    builders["cspnet bf16"] = lambda: cspnet.optimize_for_inference(cm, dtype="bf16")
    builders["cspnet int8 (onnxruntime)"] = lambda: int8_runner(cm, calib)
    if args.pt2e:
        calib_x = torch.stack([cm.transform(p) for p in calib])
        builders["int8 PT2E + compile (freezing)"] = lambda: pt2e_runner(cm, calib_x, 16)
    runners, setup = {}, {}
    for name, make in builders.items():
        t0 = time.perf_counter()
        runners[name] = make()
        with torch.inference_mode():
            runners[name](x16)  # compiles where it compiles
        setup[name] = time.perf_counter() - t0
        print(f"  {arch}: {name} ready in {setup[name]:.1f} s", flush=True)
    peaks = peak_runners()
    with torch.inference_mode():
        fns = {**{n: (lambda f=f: f(x16)) for n, f in runners.items()}, **peaks}
        times = common.time_interleaved(fns, args.rounds, 1, torch.device("cpu"))
        peak_times = {n: times.pop(n) for n in peaks}
        outs = {n: f(x16).float() for n, f in runners.items()}
        lat = {}
        for n, f in runners.items():
            if "compile" in n:  # a compiled batch-1 graph is another compilation: not measured
                continue
            f(x1)
            ts = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                f(x1)
                ts.append(time.perf_counter() - t0)
            lat[n] = statistics.median(ts) * 1e3
    base, fp32 = times["timm eager fp32"], times["cspnet fast fp32"]
    rows = []
    for n, ts in times.items():
        ips = 16 / statistics.median(ts)
        gmacs = ips * macs / 1e9
        # per round: (model MACs / its time) / (2048^3 / the matrix product's time); int8 has no such reference
        kind = None if "int8" in n else "bfloat16" if "bf16" in n else "float32"
        share = f" ({100 * common.median_ratio(peak_times[f'peak {kind}'], ts) * 16 * macs / 2048 ** 3:.0f}% of " \
                f"{'bf16' if kind == 'bfloat16' else 'fp32'})" if kind else ""
        rows.append([n, f"{ips:.1f}", f"{common.median_ratio(base, ts):.2f}x", f"{common.median_ratio(fp32, ts):.2f}x",
                     f"{lat[n]:.0f}" if n in lat else "-", f"{gmacs:.0f}{share}",
                     f"{common.rel_diff(outs[n], ref16):.1e}", f"{setup[n]:.0f}"])
    head = ["path", "img/s batch 16 (median)", "vs timm eager fp32", "vs cspnet fast fp32", "latency batch 1 (ms)",
            "GMAC/s (share of the matrix-product peak)", "max rel diff vs fp32 (random input)",
            "setup + first call (s)"]
    peak = ", ".join(f"{k[5:]} {2048 ** 3 / statistics.median(v) / 1e9:.0f}" for k, v in peak_times.items())
    return (f"### {arch} ({size}x{size}, {macs / 1e9:.2f} GMACs per image; 2048-square matrix product in the same "
            f"rounds, GMAC/s: {peak})\n\n" + common.table(head, rows))


def agreement_golden(arch: str, calib: list[Path], evals: list[Path]) -> list[str]:
    import cspnet
    import golden
    from cspnet.quantize import quantize
    from cspnet.weights.convert import convert_state_dict

    model = cspnet.ImageClassifier(arch).eval()
    model.load_state_dict(convert_state_dict(golden.recipe_state_dict(arch), arch, "cspnet"))
    model.transform = cspnet.get_transform(arch)
    x = torch.stack([model.transform(p) for p in evals])
    with torch.inference_mode():
        ref = torch.cat([model(x[i:i + 16]) for i in range(0, len(x), 16)])
        bf = cspnet.optimize_for_inference(model, dtype="bf16")
        outs = {"bf16": torch.cat([bf(x[i:i + 16]) for i in range(0, len(x), 16)])}
    q = quantize(model, calib)
    outs["int8"] = torch.cat([q(x[i:i + 16]) for i in range(0, len(x), 16)])
    top2 = ref.topk(2, 1).values
    margin = float(((top2[:, 0] - top2[:, 1]) / top2[:, 0].abs()).median())
    rows = []
    for name, out in outs.items():
        agree = 100 * float((out.argmax(1) == ref.argmax(1)).float().mean())
        top5 = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in
                              zip(out.topk(5, 1).indices, ref.topk(5, 1).indices)])) * 100
        rows.append([arch, name, len(x), f"{agree:.1f}%", f"{top5:.1f}%", f"{common.rel_diff(out, ref):.1e}",
                     f"{margin:.3f}"])
    return rows


def agreement_digits(folder: Path) -> tuple[list[list[str]], int, Path]:
    import cspnet
    from cspnet.quantize import quantize

    runs = sorted((folder / "work").glob("*/best.pth"))
    if not runs:
        raise SystemExit(f"--digits {folder}: no work/<run>/best.pth (run examples/finetune_digits.py --out {folder})")
    model = cspnet.get_model(runs[-1], pretrained=True)
    val = sorted((folder / "data" / "val").glob("*/*.png"))
    train = sorted((folder / "data" / "train").glob("*/*.png"))
    rng = np.random.default_rng(0)
    calib = [train[i] for i in sorted(rng.choice(len(train), min(200, len(train)), replace=False))]
    labels = torch.tensor([model.classes.index(p.parent.name) for p in val])
    x = torch.stack([model.transform(p) for p in val])
    with torch.inference_mode():
        ref = model(x)
        bf16 = cspnet.optimize_for_inference(model, dtype="bf16")(x)
    int8 = quantize(model, calib)(x)
    acc = lambda o: 100 * float((o.argmax(1) == labels).float().mean())  # noqa: E731
    rows = [["float32", f"{acc(ref):.2f}%", "-", "-", "-"]]
    for name, out in (("bf16", bf16), ("int8 (calibrated on 200 training images)", int8)):
        agree = 100 * float((out.argmax(1) == ref.argmax(1)).float().mean())
        rows.append([name, f"{acc(out):.2f}%", f"{acc(out) - acc(ref):+.2f}", f"{agree:.2f}%",
                     f"{common.rel_diff(out, ref):.1e}"])
    return rows, len(val), runs[-1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(common.ARCHS), choices=common.ARCHS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also timm bf16 + channels_last + torch.compile")
    p.add_argument("--pt2e", action="store_true", help="also PT2E int8 (torch.export + X86InductorQuantizer)")
    p.add_argument("--digits", type=Path, default=None, help="examples/finetune_digits.py's --out folder")
    p.add_argument("--no-speed", action="store_true", help="numbers only")
    p.add_argument("--no-golden", action="store_true", help="skip the golden-weights agreement")
    p.add_argument("--eval-images", type=int, default=60, help="generated images for the golden agreement")
    p.add_argument("--results", type=Path, default=None, help="write the section into this file (RESULTS.md)")
    p.add_argument("--section", default="lowp-cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import cspnet.optimize

    info = common.machine(torch.device("cpu"))
    cpu = cspnet.optimize.cpu_features()
    info["bf16/int8 instructions"] = cpu.describe()
    parts = []
    with tempfile.TemporaryDirectory(prefix="bench-lowp-") as tmp:
        calib = generated_images(Path(tmp) / "calib", 32, seed=2)
        demo = sorted(p for p in (common.REPO / "demo").iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        evals = demo + generated_images(Path(tmp) / "eval", args.eval_images, seed=1)
        if not args.no_speed:
            for arch in args.models:
                parts.append(speed(arch, args, calib))
        rows = []
        for arch in args.models if not args.no_golden else ():
            rows += agreement_golden(arch, calib, evals)
        if rows:
            parts.append(f"### Agreement with float32: golden recipe weights, {len(demo)} demo + {args.eval_images} "
                         f"generated images (int8 calibrated on 32 other generated images)\n\n" + common.table(
                             ["model", "path", "images", "top-1 agreement", "top-5 overlap", "max rel diff",
                              "median top-1/top-2 margin (fp32, relative)"], rows))
    if args.digits:
        rows, n, run = agreement_digits(args.digits)
        parts.append(f"### Digits model (examples/finetune_digits.py, {run.parent.name}): held-out accuracy, {n} "
                     f"images\n\n" + common.table(["path", "top-1", "delta (points)", "top-1 agreement with fp32",
                                                    "max rel diff"], rows))
    info["load average at end (1/5/15 min)"] = common.load_average()
    body = "\n".join(common.header_lines(info)) + "\n\n" + "\n\n".join(parts) + "\n"
    print(body)
    common.write_section(args.results, args.section, "Low precision on CPU: bf16 and int8", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
