#!/usr/bin/env python
"""Cold start, as a user feels it: whole processes, timed from outside, paired with timm in the same run.

* ``cspnet predict IMG --weights F`` (the cspnet venv) against the equivalent timm script (``create_model`` + load +
  its eval transform + one forward; the timm venv), and the same ``cspnet predict`` run with the timm venv's python
  (one torch for both: the import of torch, the larger part of either, is then the same work);
* ``cspnet --help``, and ``python -c 'import torch'`` in each venv (the floor that no change of cspnet moves);
* in one process of the timm venv: ``get_model(...)`` as returned (eval mode, unfused) against timm eager, batch 1
  and 16, the same weights; and what folding costs (``optimize_for_inference``, then its first call).

Every command runs ``--runs`` times after one warm-up run (which also caches the bytecode of both sides, in a
folder of its own, as installed packages have it), in turn (A B, then B A: neither always goes first); each
run's wall seconds and its CPU seconds (user + sys, the kernel's accounting of the finished child) are kept, and a
pair's ratio is the median of the per-round ratios, which cancels slow drifts of a shared machine. Run it with the
cspnet venv (``timm`` is found through ``--timm-python``)::

    python benchmarks/bench_cold_start.py                    # cspdarknet53, demo/dog.jpg, 5 runs each
    python benchmarks/bench_cold_start.py --runs 9 --threads 1 --results benchmarks/RESULTS.md

The weights are made here (random, BatchNorm statistics randomised as a trained net's): the cspnet file records its
model (``cspnet.weights.files.save_state_dict`` with the published spec), the timm file is timm's flat state dict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

TIMM_PREDICT = '''\
"""timm's `predict IMG --weights F`: create_model + load + its eval transform + one forward, the top 5 printed."""
import sys

import timm
import torch
from PIL import Image

arch, image, weights = sys.argv[1:4]
model = timm.create_model(arch, pretrained=False)
model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
model.eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
with torch.inference_mode():
    probs = model(transform(Image.open(image).convert("RGB")).unsqueeze(0)).softmax(-1)[0]
for p, i in zip(*probs.topk(5)):
    print(f"{100 * float(p):6.2f}%  [{int(i)}]")
'''


def make_weights(arch: str, folder: Path) -> tuple[Path, Path]:
    """``(cspnet file with its spec, timm flat file)`` of the same random weights (BN statistics randomised)."""
    import torch

    from cspnet.models import ImageClassifier
    from cspnet.weights.convert import convert_state_dict
    from cspnet.weights.files import save_state_dict
    from cspnet.weights.records import get_weights_info

    torch.manual_seed(0)
    model = ImageClassifier(arch).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    sd = model.state_dict()
    ours = save_state_dict(sd, folder / f"{arch}.cspnet.pth", "cspnet", get_weights_info(arch).spec())
    theirs = save_state_dict(convert_state_dict(sd, arch, "timm"), folder / f"{arch}.timm.pth", "timm")
    return ours, theirs


def run_once(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """``(wall s, cpu s)`` of one run of ``cmd``, from its start to its exit; its output goes to ``log``. (No peak
    memory: a child's ``ru_maxrss`` counts this process's memory from before the exec.)"""
    with open(log, "ab") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # the kernel's accounting of the finished child
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited with {proc.returncode}; its output: {log}\n{log.read_text()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def time_commands(cmds: dict[str, list[str]], runs: int, env: dict[str, str], logs: Path) -> dict[str, dict]:
    """Each command once unrecorded, then ``runs`` rounds, the order rotated each round."""
    names = list(cmds)
    res = {n: {"wall": [], "cpu": []} for n in names}
    for n in names:
        run_once(cmds[n], env, logs / f"{n}.log")
    for r in range(runs):
        for n in names[r % len(names):] + names[: r % len(names)]:
            wall, cpu = run_once(cmds[n], env, logs / f"{n}.log")
            res[n]["wall"].append(wall)
            res[n]["cpu"].append(cpu)
    return res


def model_speed(args: argparse.Namespace) -> dict:
    """In this process (the timm venv): seconds per call of timm eager and of get_model's model as returned, at each
    batch size; and the cost of folding. Printed as JSON for the parent."""
    import torch

    import cspnet
    from cspnet.weights.files import save_state_dict

    if args.threads:
        torch.set_num_threads(args.threads)
    tm, _ = common.paired_models(args.arch)  # timm eager, BatchNorm statistics randomised
    with tempfile.TemporaryDirectory() as tmp:
        path = save_state_dict(tm.state_dict(), Path(tmp) / "w.pth", "timm")
        cm = cspnet.get_model(args.arch, str(path))  # as returned: eval mode, unfused
    out: dict = {"threads": torch.get_num_threads(), "batches": {}}
    with torch.inference_mode():
        for batch in args.batch_sizes:
            x = torch.randn(batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
            ref = tm(x)
            diff = common.rel_diff(cm(x), ref)
            fns = {"timm eager": lambda: tm(x), "cspnet get_model": lambda: cm(x)}
            iters = 3 if batch == 1 else 1
            for f in fns.values():
                f()
            t = common.time_interleaved(fns, args.rounds, iters, torch.device("cpu"))
            out["batches"][batch] = {"times": t, "rel_diff": diff}
        folds, firsts = [], []
        x = torch.randn(1, 3, args.image_size, args.image_size)
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            fast = cspnet.optimize_for_inference(cm)
            t1 = time.perf_counter()
            fast(x)
            folds.append(t1 - t0)
            firsts.append(time.perf_counter() - t1)
        out["fold"] = {"fold": folds, "first call": firsts}
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def report_processes(res: dict[str, dict], pairs: list[tuple[str, str]]) -> str:
    rows = [[f"`{n}`", f"{med(r['wall']):.2f}", f"{min(r['wall']):.2f}-{max(r['wall']):.2f}", f"{med(r['cpu']):.2f}"]
            for n, r in res.items()]
    lines = [common.table(["command", "wall s (median)", "wall s (min-max)", "cpu s (median)"], rows), ""]
    for a, b in pairs:
        wall = common.median_ratio(res[b]["wall"], res[a]["wall"])
        cpu = common.median_ratio(res[b]["cpu"], res[a]["cpu"])
        lines.append(f"- `{a}` vs `{b}`: {wall:.2f}x faster by wall time, {cpu:.2f}x by CPU time (median of the "
                     f"per-round ratios)")
    return "\n".join(lines)


def report_models(speed: dict, arch: str, size: int) -> str:
    rows = []
    for batch, r in speed["batches"].items():
        t = r["times"]
        ratio = common.median_ratio(t["timm eager"], t["cspnet get_model"])
        rows.append([batch, f"{1e3 * med(t['timm eager']):.1f}", f"{1e3 * med(t['cspnet get_model']):.1f}",
                     f"{ratio:.3f}x", f"{r['rel_diff']:.1e}"])
    fold = speed["fold"]
    return "\n".join([
        f"{arch}, {size}x{size}, fp32, torch threads {speed['threads']}, one process of the timm venv:", "",
        common.table(["batch", "timm eager ms/call", "cspnet get_model ms/call", "cspnet vs timm (x faster)",
                      "max rel diff"], rows), "",
        f"- folding (`optimize_for_inference`, made once per model and kept): {med(fold['fold']):.3f} s median; "
        f"its first call at batch 1: {med(fold['first call']):.3f} s",
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="cspdarknet53", choices=common.ARCHS)
    p.add_argument("--image", default=str(common.REPO / "demo" / "dog.jpg"))
    p.add_argument("--runs", type=int, default=5, help="counted runs of each command (after one warm-up)")
    p.add_argument("--rounds", type=int, default=7, help="rounds of the in-process model timing")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS / torch threads for every process (default: each one's own)")
    p.add_argument("--timm-python", default=os.environ.get("CSPNET_TIMM_PYTHON", "/work/venv-timm/bin/python"))
    p.add_argument("--skip-models", action="store_true", help="only the whole-process timings")
    p.add_argument("--model-speed-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--results", type=Path, default=None, help="also write the section cold-start of this file")
    args = p.parse_args()
    if args.model_speed_child:
        print(json.dumps(model_speed(args)))
        return 0

    ours_python = sys.executable
    cspnet_exe = str(Path(ours_python).with_name("cspnet"))
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    info = common.machine(__import__("torch").device("cpu"))
    info["cpu"] += f"; the timed processes: OMP_NUM_THREADS={args.threads or 'unset'}"
    theirs_versions = subprocess.run([args.timm_python, "-c", "import torch, timm, torchvision; print(f'torch "
                                      "{torch.__version__}, timm {timm.__version__}, torchvision "
                                      "{torchvision.__version__}')"], capture_output=True, text=True)
    info["timm venv"] = f"{args.timm_python}: {theirs_versions.stdout.strip() or theirs_versions.stderr[-300:]}"
    with tempfile.TemporaryDirectory(prefix="bench_cold_start.") as tmp:
        tmp_path = Path(tmp)
        # Bytecode cached, as for installed packages, for both sides alike: the warm-up runs write it here (where
        # PYTHONDONTWRITEBYTECODE is set, a source checkout would otherwise compile cspnet in every run).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(tmp_path / "pycache")
        ours, theirs = make_weights(args.arch, tmp_path)
        script = tmp_path / "timm_predict.py"
        script.write_text(TIMM_PREDICT)
        predict = ["predict", args.image, "--weights", str(ours)]
        cmds = {
            "cspnet predict": [cspnet_exe, *predict],
            "timm script": [args.timm_python, str(script), args.arch, args.image, str(theirs)],
            "cspnet predict (timm venv's torch)": [args.timm_python, "-m", "cspnet", *predict],
            "cspnet --help": [cspnet_exe, "--help"],
            "import torch (cspnet venv)": [ours_python, "-c", "import torch"],
            "import torch (timm venv)": [args.timm_python, "-c", "import torch"],
        }
        res = time_commands(cmds, args.runs, env, tmp_path)
        body = [f"`cspnet predict IMG --weights F` cold, {args.arch}, {Path(args.image).name}, {args.runs} runs each "
                f"after a warm-up, in turn; OMP_NUM_THREADS {args.threads or 'unset (torch default)'}", "",
                report_processes(res, [("cspnet predict", "timm script"),
                                       ("cspnet predict (timm venv's torch)", "timm script")])]
        if not args.skip_models:
            child = [args.timm_python, __file__, "--model-speed-child", "--arch", args.arch, "--rounds",
                     str(args.rounds), "--image-size", str(args.image_size), "--batch-sizes",
                     *map(str, args.batch_sizes), *(["--threads", str(args.threads)] if args.threads else [])]
            done = subprocess.run(child, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                sys.exit(f"the model timing failed:\n{done.stderr[-3000:]}")
            speed = json.loads(done.stdout.strip().splitlines()[-1])
            body += ["", report_models(speed, args.arch, args.image_size)]
    text = "\n".join([*common.header_lines(info), "", *body])
    print(text)
    if args.results is not None:
        common.write_section(args.results, "cold-start", "Cold start: whole processes vs timm (same run)", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
