"""Fine-tune CSPResNet-50 on real data, scikit-learn's handwritten digits, end to end through the ``cspnet`` CLI.

The data: ``sklearn.datasets.load_digits()``, bundled with scikit-learn (no download): 1,797 handwritten digits,
10 classes, the test part of the UCI optical-recognition set (written by 13 people on NIST forms; each 8x8 value
0-16 counts the ink pixels of a 4x4 block of a 32x32 scan). This script writes them as an ImageNet-style folder,
writes a small config inheriting ``configs/cspnet/cspresnet50_finetune_custom.py``, then runs the CLI as a user
would (each command a subprocess)::

    cspnet train OUT/digits.py --work-dir OUT/work                  # -> OUT/work/<YYYYmmdd_HHMMSS>/best.pth ...
    cspnet test OUT/digits.py OUT/work/<run>/best.pth               # prints accuracy/top1 on the held-out 20%
    cspnet predict OUT/data/val/3/17.png ... --weights OUT/work/<run>/best.safetensors --json
    cspnet export --weights OUT/work/<run>/best.safetensors --output OUT/digits.onnx

Usage (needs scikit-learn, and onnx + onnxruntime for the export)::

    python examples/finetune_digits.py                        # from the published ImageNet weights: needs the
                                                              # Hugging Face Hub, or the file in $CSPNET_WEIGHTS_DIR
    python examples/finetune_digits.py --load-from FILE.pth   # any checkpoint file (timm, mmpretrain or cspnet)
    python examples/finetune_digits.py --load-from none       # random initialisation
    python examples/finetune_digits.py --limit 40 --epochs 3  # 40 images per class: the quick run the tests make

Measured on a 2-core AMD EPYC VM (KVM) that other jobs shared (load average 2-3), one thread per command, from
seeded random weights in timm's layout (``tests/golden.py``'s ``recipe_state_dict('cspresnet50')``: not trained,
so these numbers say nothing about ImageNet transfer), 32 px, batch 16, lr 0.01, seed 0:

- all 1,797 images (1,437 train / 360 held out), 5 epochs: held-out top-1 99.44% (358 of 360; epoch 1 88.1%),
  ``cspnet train`` 152 s, all five steps 170 s;
- ``--limit 40 --epochs 3`` (320 / 80): held-out top-1 85.0% (seeds 1-3: 92.5, 93.75, 91.25%; ``--load-from none``
  87.5%), all five steps 37-47 s, of which ``cspnet train`` 25-32 s.

A busier machine is much slower: with two more busy processes the quick run took 166 s. Threads matter more: on the
busy machine 2 threads per command trained at 5-7 images/s, 1 thread at 52-68 (hence ``--threads``).

Files: ``OUT/data/{train,val}/<digit>/<index>.png`` (RGB, the 8x8 grey image scaled to 0-255 and upscaled with
Pillow's bicubic filter; ``index``: its position in ``load_digits()``), ``OUT/digits.py``, ``OUT/work/<run>/``
(``best.pth``, ``best.safetensors``, ``log.jsonl``, ``curves.png``, ...), ``OUT/digits.onnx`` and
``OUT/summary.json`` (what the summary prints). The split is stratified and seeded, 80% train and 20% held out. The
held-out images pick the best epoch and are what ``cspnet test`` reads, so its top-1 is the chosen epoch's, a little
optimistic; and the split cannot keep writers apart (the data does not say who wrote which digit).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FINETUNE_CONFIG = REPO / "configs" / "cspnet" / "cspresnet50_finetune_custom.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("work_dirs/digits_example"),
                   help="folder for the data, the config, the runs and the ONNX file (default %(default)s)")
    p.add_argument("--load-from", default="True",
                   help="weights to start from: 'True' the published ImageNet ones (default), a checkpoint file, or "
                        "'none' (random initialisation)")
    p.add_argument("--image-size", type=int, default=32, help="side of the written PNGs and of the crops the model "
                                                               "sees (default %(default)s)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default %(default)s)")
    # 16 rather than 32: twice the steps per epoch, which a few-epoch run needs more than a smoother gradient
    p.add_argument("--batch-size", type=int, default=16, help="images per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.01, help="peak SGD learning rate (default %(default)s)")
    p.add_argument("--limit", type=int, default=None,
                   help="use only N images per class, N >= 5 (each class then has a held-out image): a quick run")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the subset and the training run")
    p.add_argument("--threads", type=int, default=None,
                   help="compute threads of each cspnet command (OMP_NUM_THREADS; default: $OMP_NUM_THREADS when set, "
                        "else half the CPU cores)")
    p.add_argument("--workers", type=int, default=0,
                   help="data loading processes (default 0: the 8x8 PNGs decode faster than a process starts)")
    p.add_argument("--device", default=None, help="for test/predict/export: cpu, cuda (default: cuda if available)")
    p.add_argument("--predict", type=int, default=5, help="held-out images to classify with `cspnet predict`")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 5:
        p.error("--limit: at least 5 images per class")
    return args


# --- data ------------------------------------------------------------------------------------------------------
def write_digits(root: Path, image_size: int, limit: int | None, seed: int) -> dict[str, list[Path]]:
    """``root/{train,val}/<digit>/<index>.png`` from ``load_digits()``; returns the written paths per split."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    if limit is not None:  # the same N images per class for every run with this seed
        rng = np.random.default_rng(seed)
        index = np.sort(np.concatenate([rng.permutation(index[digits.target == c])[:limit] for c in range(10)]))
    train, val = train_test_split(index, test_size=0.2, stratify=digits.target[index], random_state=seed)
    written: dict[str, list[Path]] = {}
    for split, ids in (("train", train), ("val", val)):
        written[split] = []
        for i in sorted(ids):
            # 0-16 ink levels to 0-255; bicubic upscaling keeps strokes smooth (nearest would give 8x8 blocks)
            grey = np.round(digits.images[i] * (255 / 16)).astype(np.uint8)
            img = Image.fromarray(grey, "L").resize((image_size, image_size), Image.BICUBIC).convert("RGB")
            path = root / split / str(digits.target[i]) / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path)
            written[split].append(path)
    return written


def clear(root: Path) -> None:
    """Remove the PNGs of an earlier call, so a smaller --limit or another --seed does not mix with them."""
    for png in root.glob("*/*/*.png"):
        png.unlink()


# --- config ----------------------------------------------------------------------------------------------------
def load_from_value(arg: str) -> bool | str | None:
    if arg.lower() == "true":
        return True
    if arg.lower() == "none":
        return None
    path = Path(arg).expanduser()
    if not path.is_file():
        raise SystemExit(f"--load-from {arg}: no such file (give a checkpoint file, 'True' or 'none')")
    return str(path.resolve())


def write_config(path: Path, data: Path, args: argparse.Namespace, load_from: bool | str | None) -> Path:
    size, epochs = args.image_size, args.epochs
    imagenet = load_from is True
    # ImageNet's first stages (edge and blob filters) suit any images and stay frozen, as the base config has it;
    # other weights have nothing to keep there, so every stage trains
    frozen = ("# the stem and stages 0-1 stay frozen (the base's frozen_stages=1): ImageNet's low-level filters suit "
              "digits too" if imagenet else "# every stage trains: the starting weights are not ImageNet's\n"
                               "model = dict(backbone=dict(frozen_stages=-1))")
    cosine = (f"    dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end={epochs}, eta_min=0.0),\n"
              if epochs > 1 else "")  # after the 1-epoch warmup
    path.write_text(f"""\
# Written by examples/finetune_digits.py: CSPResNet-50 on scikit-learn's 8x8 digits, upscaled to {size} px.
_base_ = [{str(FINETUNE_CONFIG)!r}]

data_root = {str(data.resolve())!r}
# start from {"the published ImageNet weights" if imagenet else "random weights" if load_from is None else "this file"}
load_from = {load_from!r}

{frozen}

# Small crops instead of the base's 224/288->256. No horizontal flip (a mirrored 2 is no digit) and mild crops: a
# digit fills its 8x8 box, and the base's default crops down to 8% of the area would cut most of it away.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale={size}, crop_ratio_range=(0.6, 1.0), backend='pillow',
         interpolation='bicubic'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale={size * 9 // 8}, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size={size}),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size={args.batch_size}, num_workers={args.workers}, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=64, num_workers={args.workers}, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr={args.lr}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
{cosine}]
train_cfg = dict(max_epochs={epochs})

# No EMA: at momentum 1e-3 it averages over ~1000 steps, more than a quick run has, so it stays near the starting
# weights (measured: EMA 10%, raw weights 85%); best.pth takes the better of the two, so it would only cost time.
# One checkpoint at the end (plus best.pth); no optimizer state: smaller and faster to write.
custom_hooks = []
default_hooks = dict(logger=dict(interval=10),
                     checkpoint=dict(interval={epochs}, max_keep_ckpts=1, save_optimizer=False))
env_cfg = dict(channels_last=False)  # NCHW: the base's NHWC pays off on GPUs, not on CPUs
randomness = dict(seed={args.seed})
""")
    return path


# --- running the CLI -------------------------------------------------------------------------------------------
def thread_count(arg: int | None) -> int:
    """Half the cores by default, not all (torch's default): an OpenMP thread that waits for a core another job holds
    stalls its whole team at every barrier. On this 2-core machine, busy with other jobs, 2 threads trained at 5-7
    images/s and 1 thread at 52-68."""
    if arg is not None:
        return max(1, arg)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, (os.cpu_count() or 2) // 2)


def cspnet(*args: str, timings: dict, name: str, hint: str = "") -> str:
    """Run ``python -m cspnet ARGS`` as a user would; echo and return its stdout; stop on a failure."""
    cmd = [sys.executable, "-m", "cspnet", *map(str, args)]
    print("$ cspnet " + " ".join(map(str, args)), flush=True)
    start = time.perf_counter()
    # stderr (the training log) goes to the terminal; OMP_NUM_THREADS is set in main()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    timings[name] = (time.perf_counter() - start, "cspnet " + " ".join(map(str, args)))
    print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"cspnet {args[0]} failed with exit status {proc.returncode}{hint}")
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = thread_count(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by torch in each cspnet subprocess, before it starts
    load_from = load_from_value(args.load_from)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, tuple[float, str]] = {}

    start = time.perf_counter()
    clear(out / "data")
    written = write_digits(out / "data", args.image_size, args.limit, args.seed)
    timings["data"] = (time.perf_counter() - start, "load_digits() -> PNG folders")
    cfg = write_config(out / "digits.py", out / "data", args, load_from)
    print(f"wrote {len(written['train'])} train / {len(written['val'])} held-out images to {out / 'data'} and {cfg}",
          flush=True)
    device = ["--device", args.device] if args.device else []

    hint = "; without the Hub: --load-from FILE or --load-from none" if load_from is True else ""
    train_out = cspnet("train", cfg, "--work-dir", out / "work", timings=timings, name="train", hint=hint)
    found = re.search(r"^best (\S+) ([\d.]+) at epoch (\d+); checkpoints in (.+)$", train_out, re.M)
    if not found:
        raise SystemExit("cspnet train printed no best epoch (did it validate?)")
    run = Path(found.group(4))
    test_out = cspnet("test", cfg, run / "best.pth", *device, timings=timings, name="test")
    top1 = float(re.search(r"accuracy/top1: ([\d.]+)", test_out).group(1))
    images = written["val"][:: max(1, len(written["val"]) // args.predict)][: args.predict]
    pred = json.loads(cspnet("predict", *images, "--weights", run / "best.safetensors", "--topk", "1", "--json",
                             *device, timings=timings, name="predict"))
    cspnet("export", "--weights", run / "best.safetensors", "--output", out / "digits.onnx", *device,
           timings=timings, name="export")

    start_from = {True: "the published ImageNet weights", None: "random initialisation"}.get(load_from, load_from)
    print(f"\n=== summary (started from {start_from}) ===")
    print(f"data: {len(written['train'])} train / {len(written['val'])} held-out digits at {args.image_size} px; "
          f"{args.epochs} epochs, batch {args.batch_size}, {threads} thread(s) per command")
    print(f"held-out top-1: {top1:.2f}% (best epoch {found.group(3)}; chance 10%)")
    right = sum(Path(r["image"]).parent.name == r["topk"][0]["class"] for r in pred)
    print(f"predict: {right} of {len(pred)} held-out images right: "
          + ", ".join(f"{Path(r['image']).parent.name}->{r['topk'][0]['class']}" for r in pred))
    print(f"run folder: {run}\nONNX: {out / 'digits.onnx'}")
    for name, (seconds, command) in timings.items():
        print(f"{name:>8} {seconds:7.1f} s  {command}")
    print(f"   total {sum(s for s, _ in timings.values()):7.1f} s")
    summary = {"start_from": start_from, "top1": top1,
               "best": {"metric": found.group(1), "top1": float(found.group(2)), "epoch": int(found.group(3))},
               "threads": threads, "train_images": len(written["train"]), "val_images": len(written["val"]),
               "run": str(run), "onnx": str(out / "digits.onnx"), "predictions": pred,
               "steps": {name: {"seconds": round(sec, 2), "command": cmd} for name, (sec, cmd) in timings.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
