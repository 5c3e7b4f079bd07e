#!/usr/bin/env python
"""End-to-end evaluation speed over a folder of JPEGs: ``tools/test.py`` vs a timm-style loop, in one run.

Generates ImageNet-sized JPEGs (500x375 and 375x500) in the ImageNet folder layout (``val/<synset>/*.JPEG``),
saves one checkpoint (timm's random init with randomised BatchNorm statistics), then times:

- ``tools/test.py CONFIG CKPT`` (cspnet's evaluator, fast model path) with each input path asked for:
  ``loader`` (``--resize loader``: Pillow decode, resize and crop in the loader workers), ``device``
  (``--resize device``: Pillow decode in the workers, the exact resize on the device), ``nvjpeg``
  (``--decode gpu``), and ``--no-optimize`` / ``--cuda-graph`` / ``--compile`` variants of the last one;
- a timm-style loop: ``torchvision.datasets.ImageFolder`` + ``timm.data.create_transform`` (timm's eval preset
  for the model) + ``DataLoader`` + the timm model (channels_last and bf16 autocast with ``--amp``, as
  ``timm/validate.py --amp --channels-last``), same batch size and workers;
- with ``--stages``: each stage alone (the loader with the whole Pillow pipeline, the loader with Pillow decode
  only, that + the resize on the device, the loader + GPU decode, the model on ready uint8 batches), to show
  what bounds the end-to-end figure.

Each pass runs in its own process; "loop img/s" counts from the first batch request to the last result (as the
evaluator prints it), "wall" includes start-up. Writes/updates the section ``eval-<device>`` of RESULTS.md::

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /work/venv-timm/bin/python benchmarks/bench_eval.py
    python benchmarks/bench_eval.py --device cuda --amp --num-images 10000 --inputs loader device nvjpeg --stages
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# The input paths of tools/test.py, by name: where decoding and the (exact) resize run.
INPUTS = {"loader": ["--resize", "loader"], "device": ["--resize", "device"], "nvjpeg": ["--decode", "gpu"]}
_DONE = re.compile(r"over (\d+) of (\d+) images, ([\d.]+) s \(([\d.]+) images/s\)")
_TOP1 = re.compile(r"accuracy/top1: ([\d.]+)")


def _make_jpeg(job: tuple[Path, int]) -> None:
    """One photo-like JPEG: a smooth random colour field plus fine texture (JPEG sizes like ImageNet's)."""
    from PIL import Image

    path, seed = job
    rng = np.random.default_rng(seed)
    w, h = (500, 375) if seed % 4 else (375, 500)  # a quarter portrait, as in ImageNet val
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(coarse).astype(np.int16) + rng.integers(-25, 26, (h, w, 1), dtype=np.int16)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_dataset(root: Path, num_images: int, num_classes: int = 10) -> Path:
    """``root/val/<synset>/bench_XXXXXX.JPEG``, ``num_images`` in all (reused when already there)."""
    from cspnet.data.classes import imagenet_synsets

    marker = root / f".complete-{num_images}-{num_classes}"
    for m in root.glob(f".complete-*-{num_classes}") if root.is_dir() else []:
        if int(m.name.split("-")[1]) >= num_images:  # a larger set holds this one (same names, same seeds)
            return root
    synsets = imagenet_synsets()[:: 1000 // num_classes][:num_classes]
    jobs = []
    for i in range(num_images):
        d = root / "val" / synsets[i % num_classes]
        d.mkdir(parents=True, exist_ok=True)
        jobs.append((d / f"bench_{i:06d}.JPEG", i))
    t0 = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        pool.map(_make_jpeg, jobs, chunksize=64)
    marker.write_text("")
    size = sum(p.stat().st_size for p, _ in jobs) / len(jobs) / 1024
    print(f"generated {num_images} JPEGs ({size:.0f} KB each on average) in {time.perf_counter() - t0:.1f} s")
    return root


def make_checkpoint(root: Path, arch: str) -> Path:
    from cspnet.weights.files import save_state_dict

    path = root / f"{arch}_bench_timm.pth"
    if not path.exists():
        tm, _ = common.paired_models(arch)
        save_state_dict(tm.state_dict(), path, "timm")
    return path


def run_pass(name: str, cmd: list[str], env: dict | None = None) -> dict:
    print(f"$ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    m, top1 = _DONE.search(out), _TOP1.search(out)
    if proc.returncode != 0 or not m:
        print(out[-3000:], flush=True)
        return dict(name=name, ok=False, wall=wall, error=out.strip().splitlines()[-1] if out.strip() else "?")
    res = dict(name=name, ok=True, wall=wall, n=int(m.group(1)), seconds=float(m.group(3)), img_s=float(m.group(4)),
               top1=float(top1.group(1)) if top1 else None)
    print(f"  {name}: {res['img_s']:.1f} img/s in the loop, {wall:.1f} s wall", flush=True)
    return res


def timm_loop(args) -> int:
    """``--timm-loop`` mode: the timm-style evaluation loop, printing the same summary line as the evaluator."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    from cspnet.data.classes import imagenet_synsets
    from cspnet.weights.files import read_weights

    torch.set_num_threads(args.threads) if args.device == "cpu" else None
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    model = timm.create_model(args.arch, pretrained=False)
    model.load_state_dict(read_weights(args.checkpoint).state_dict)
    model = model.eval().to(dev)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    transform = create_transform(**resolve_data_config({}, model=model))
    ds = ImageFolder(str(Path(args.data) / "val"), transform=transform)
    to_imagenet = torch.tensor([imagenet_synsets().index(c) for c in ds.classes])
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers,
                                         pin_memory=dev.type == "cuda")
    correct, n = 0, 0
    start = time.perf_counter()
    with torch.inference_mode():
        for x, y in loader:
            x = x.to(dev, non_blocking=True)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp):
                pred = model(x).argmax(1)
            correct += int((pred.cpu() == to_imagenet[y]).sum())
            n += len(y)
    seconds = time.perf_counter() - start
    print(f"accuracy/top1: {100 * correct / n:.4f}")
    print(f"over {n} of {len(ds)} images, {seconds:.1f} s ({n / seconds:.1f} images/s)")
    return 0


def stages(args, data: Path, device: torch.device) -> list[list[str]]:
    """Each stage alone, in this process: the loader with each input path's worker half (and its device half),
    the model on ready batches."""
    import cspnet
    from cspnet import config as C
    from cspnet.data.loader import DecodeForResize, build_eval_loader
    from cspnet.data.resample import DeviceResize, ResizeBatch, resize_crop
    from cspnet.data.transforms import EvalTransform, _libjpeg_decoder

    spec = C.eval_spec(C.load_config(str(common.REPO / common.CONFIGS[args.arch]),
                                     [f"test_dataloader.dataset.data_root={data}"]))
    transform = EvalTransform(spec.model.eval)
    rows = []

    def drain(loader, fn=lambda imgs: imgs) -> float:
        """Images/s from the first batch on: the workers' start-up (a second or so) is left out, as it is spread
        over 50,000 images in a real evaluation."""
        t0, n = None, 0
        for indices, images, _, _ in loader:
            fn(images)
            if t0 is None:
                common.sync(device)
                t0 = time.perf_counter()
            else:
                n += len(indices)
        common.sync(device)
        return n / (time.perf_counter() - t0)

    pin = device.type == "cuda"

    def loader(read):
        return build_eval_loader(spec.data.build(transform=read), args.batch_size, args.workers, 0, 1,
                                 pin_memory=pin)

    where = f"{args.workers} workers"
    rate = drain(loader(transform.to_uint8))
    rows.append(["loader alone: Pillow decode + resize + crop (--resize loader)", where, f"{rate:,.0f}"])
    # DecodeForResize decodes plain JPEGs with torchvision's libjpeg-turbo where that gives Pillow's pixels
    decoder = "torchvision's libjpeg-turbo (Pillow's pixels)" if _libjpeg_decoder() else "Pillow"
    rate = drain(loader(DecodeForResize(transform.preset)))
    rows.append([f"loader alone: decode only, by {decoder}", where, f"{rate:,.0f}"])
    rate = drain(loader(DecodeForResize(transform.preset)), DeviceResize(device))
    rows.append([f"loader (decode only) + exact resize + crop on {device.type} (--resize device)", where,
                 f"{rate:,.0f}"])
    if device.type == "cuda":
        from cspnet.data.gpu_decode import GpuJpegDecoder, JpegReader

        rate = drain(loader(JpegReader(transform.preset)), GpuJpegDecoder(transform.preset, device))
        rows.append(["loader (file bytes) + nvJPEG decode + exact resize + crop (--decode gpu)", where,
                     f"{rate:,.0f}"])
    # The device's share of --resize device: one decoded batch, its pixels already on the device
    files = [str(path) for path, _ in spec.data.build().samples[: args.batch_size]]
    batch = ResizeBatch.pack([DecodeForResize(transform.preset)(f) for f in files])
    batch = batch._replace(pixels=batch.pixels.to(device))
    reps = 20 if device.type == "cuda" else 2
    resize_crop(batch, device)
    common.sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        resize_crop(batch, device)
    common.sync(device)
    rate = reps * len(files) / (time.perf_counter() - t0)
    rows.append([f"exact resize + crop alone on {device.type} (decoded pixels already there)",
                 f"batch {len(files)}", f"{rate:,.0f}"])
    _, cm = common.paired_models(args.arch)
    net = cspnet.optimize_for_inference(cm.to(device), dtype="bf16" if args.amp else None)
    crop = transform.preset.crop
    x = torch.randint(0, 256, (args.batch_size, 3, crop, crop), dtype=torch.uint8, device=device)
    with torch.inference_mode():
        for _ in range(3):
            net(transform.normalize(x))
        common.sync(device)
        reps = 20 if device.type == "cuda" else 3
        t0 = time.perf_counter()
        for _ in range(reps):
            net(transform.normalize(x)).float().softmax(1).topk(5)
        common.sync(device)
    rate = reps * args.batch_size / (time.perf_counter() - t0)
    rows.append([f"model alone: normalize + cspnet fast{' bf16' if args.amp else ''} + softmax/top-5",
                 f"batch {args.batch_size}", f"{rate:,.0f}"])
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="cspdarknet53", choices=common.ARCHS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", type=Path, default=Path("/tmp/cspnet-bench-jpegs"))
    p.add_argument("--num-images", type=int, default=None, help="default 96 on CPU, 10000 on CUDA")
    p.add_argument("--batch-size", type=int, default=None, help="default 16 on CPU, 256 on CUDA")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="loader workers for both (default: cores)")
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    p.add_argument("--amp", action="store_true", help="bf16 for both (timm: autocast; cspnet: --amp)")
    p.add_argument("--inputs", nargs="+", default=None, choices=list(INPUTS),
                   help="cspnet input paths to time (default: loader device, + nvjpeg on CUDA)")
    p.add_argument("--variants", nargs="*", default=[], choices=["no-optimize", "cuda-graph", "compile"],
                   help="extra cspnet passes, with the last of --inputs")
    p.add_argument("--stages", action="store_true", help="also time each stage alone")
    p.add_argument("--quick", action="store_true", help="smoke run: 24 images, batch 8")
    p.add_argument("--results", type=Path, default=None,
                   help="the results file to update (default benchmarks/RESULTS.md; --quick: none)")
    p.add_argument("--section", default=None)
    p.add_argument("--timm-loop", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    p.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.timm_loop:
        return timm_loop(args)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.num_images = args.num_images or (10000 if gpu else 96)
    args.batch_size = args.batch_size or (256 if gpu else 16)
    if args.quick:
        args.num_images, args.batch_size = 24, 8
    torch.set_num_threads(args.threads) if not gpu else None

    info = common.machine(device)
    print("\n".join(common.header_lines(info)), flush=True)
    data = make_dataset(args.data, args.num_images)
    ckpt = make_checkpoint(args.data, args.arch)
    env = dict(os.environ)
    if not gpu:
        env["OMP_NUM_THREADS"] = str(args.threads)  # the evaluator's torch threads, as the timm loop's
    common_args = ["--cfg-options", f"test_dataloader.dataset.data_root={data}", "--batch-size", str(args.batch_size),
                   "--num-workers", str(args.workers), "--device", args.device] + (["--amp"] if args.amp else [])
    test = [sys.executable, "tools/test.py", common.CONFIGS[args.arch], str(ckpt)]
    passes = []
    inputs = args.inputs or (["loader", "device", "nvjpeg"] if gpu else ["loader", "device"])
    for name in inputs:
        passes.append(run_pass(f"cspnet tools/test.py {' '.join(INPUTS[name])}", test + common_args + INPUTS[name], env))
    for v in args.variants:
        passes.append(run_pass(f"cspnet tools/test.py {' '.join(INPUTS[inputs[-1]])} --{v}",
                               test + common_args + INPUTS[inputs[-1]] + [f"--{v}"], env))
    timm_cmd = [sys.executable, __file__, "--timm-loop", "--arch", args.arch, "--checkpoint", str(ckpt),
                "--data", str(data), "--device", args.device, "--batch-size", str(args.batch_size),
                "--workers", str(args.workers), "--threads", str(args.threads)]
    timm_cmd += (["--amp", "--channels-last"] if args.amp else []) + (["--channels-last"] if gpu and not args.amp else [])
    timm_name = "timm-style loop (ImageFolder + timm transforms" + (", channels_last, bf16 autocast)" if args.amp else ")")
    timm_res = run_pass(timm_name, timm_cmd, env)
    passes.append(timm_res)
    info["load average at end (1/5/15 min)"] = common.load_average()

    rows = []
    for r in passes:
        if not r["ok"]:
            rows.append([r["name"], "failed", "-", f"{r['wall']:.1f}", "-", r["error"][:120]])
            continue
        ratio = f"{r['img_s'] / timm_res['img_s']:.2f}x" if timm_res["ok"] else "-"
        rows.append([r["name"], f"{r['img_s']:,.1f}", ratio, f"{r['wall']:.1f}", f"{r['top1']:.2f}" if r["top1"] is not None else "-", ""])
    body = "\n".join(common.header_lines(info)) + "\n\n"
    body += (f"{args.num_images} JPEGs (500x375 / 375x500, quality 90) in {args.data}/val/<synset>/, {args.arch}, "
             f"batch {args.batch_size}, {args.workers} loader workers, {'bf16' if args.amp else 'fp32'}.\n\n")
    body += common.table(["pass", "loop img/s", "vs timm-style", "wall s (incl. start-up)", "top-1 (random weights)", "note"], rows)
    body += ("\n\ntop-1 is of random weights on generated images (~0): it only shows both passes ran the whole set; "
             "the two differ by design in preprocessing (cspnet: mmpretrain's bicubic 288; timm: its bilinear "
             "crop_pct 0.887 preset).\n")
    if args.stages:
        srows = stages(args, data, device)
        body += "\nEach stage alone (same images, batch and workers):\n\n" + common.table(["stage", "setting", "img/s"], srows) + "\n"
        print(common.table(["stage", "setting", "img/s"], srows))
    key = args.section or f"eval-{device.type}"
    title = f"End to end: tools/test.py over JPEGs on {'GPU: ' + info['gpu'] if gpu else 'CPU'}"
    common.write_section(args.results or (None if args.quick else common.RESULTS), key, title, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
