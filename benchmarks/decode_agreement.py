#!/usr/bin/env python
"""How far the GPU input paths are from the exact Pillow pipeline: ``--resize device`` (Pillow decode in the
workers, Pillow's resize re-done on the device: must be 0 everywhere) and ``--decode gpu`` (nvJPEG decode, then the
same resize: nvJPEG's own IDCT differs).

Pixels: every demo image and every generated JPEG through both paths; for the demo images also against the golden
arrays (mmpretrain's own preprocessing, which the Pillow path reproduces exactly) when ``../shared/data/golden`` (or
``$CSPNET_SHARED``) is there. Predictions: top-1 agreement and the largest logit difference of the model on both
inputs: the golden-recipe cspdarknet53 on the demo images (the benchmarks' random-weight one without the golden
data), and the benchmarks' random-weight cspdarknet53 on the generated JPEGs. Writes the section ``decode-<device>`` of
RESULTS.md. ``--device cpu`` runs the same code with torchvision's CPU decoder (a smoke test of the script)::

    python benchmarks/decode_agreement.py --device cuda --data /tmp/cspnet-bench-jpegs --num-images 2000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import common  # noqa: E402


def pixel_stats(a: torch.Tensor, b: torch.Tensor) -> tuple[int, float, float]:
    d = (a.int() - b.int()).abs()
    return int(d.max()), float(d.float().mean()), float((d > 0).float().mean() * 100)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--data", type=Path, default=Path("/tmp/cspnet-bench-jpegs"))
    p.add_argument("--num-images", type=int, default=2000, help="generated JPEGs to compare (made if missing)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--results", type=Path, default=common.RESULTS)
    p.add_argument("--section", default=None)
    args = p.parse_args()
    device = torch.device(args.device)

    import golden
    from bench_eval import make_dataset

    import cspnet
    from cspnet.data.loader import DecodeForResize
    from cspnet.data.resample import DeviceResize, ResizeBatch
    from cspnet.data.transforms import EvalPreset, EvalTransform
    from cspnet.data.gpu_decode import GpuJpegDecoder, JpegReader
    from cspnet.weights.convert import convert_state_dict

    info = common.machine(device)
    print("\n".join(common.header_lines(info)), flush=True)
    rows, model_rows = [], []
    demo = sorted(golden.DEMO.iterdir())
    have_golden = (golden.GOLDEN / "keys").is_dir()  # the shared folder does not travel to a lent GPU machine
    _, bench = common.paired_models("cspdarknet53")  # the benchmarks' random-weight model (timm init, BN randomised)
    if have_golden:
        recipe = cspnet.models.ImageClassifier("cspdarknet53").eval()
        recipe.load_state_dict(convert_state_dict(golden.recipe_state_dict("cspdarknet53"), "cspdarknet53", "cspnet"))
        weights = "golden-recipe weights"
    else:
        recipe, weights = bench, "random weights (bench model; no golden data here)"
    recipe = cspnet.optimize_for_inference(recipe.to(device))
    for resize, crop in ((288, 256), (256, 224)):
        preset = EvalPreset(resize, crop)
        t, reader, dec = EvalTransform(preset), JpegReader(preset), GpuJpegDecoder(preset, device)
        encoded = [reader(str(f)) for f in demo]
        gpu = dec(encoded).cpu()
        cpu = torch.stack([t.to_uint8(f) for f in demo])
        for f, e, g, c in zip(demo, encoded, gpu, cpu):
            # Without the golden arrays the Pillow path stands in for them (tests/test_transforms.py: they are equal)
            gold = torch.from_numpy(golden.golden_uint8(f.stem, f"{resize}-{crop}")) if have_golden else c
            how = ("Pillow: not a JPEG" if e.data is None else
                   "nvJPEG + GPU resize" if device.type == "cuda" else "torchvision CPU decode + resize")
            m, mean, share = pixel_stats(g, gold)
            rows.append([f"{f.name} ({how})", f"{resize}->{crop}", str(pixel_stats(c, gold)[0]) if have_golden else "n/a",
                         str(m), f"{mean:.4f}", f"{share:.2f}%"])
        if crop == 256:
            with torch.inference_mode():
                a, b = recipe(t.normalize(cpu.to(device))), recipe(t.normalize(gpu.to(device)))
            agree = int((a.argmax(1) == b.argmax(1)).sum())
            rel = common.rel_diff(b, a)
            model_rows.append([f"demo images, cspdarknet53 {weights}", f"{agree}/{len(demo)}", f"{rel:.1e}"])

    # --resize device on images of many sizes (enlarged, shrunk a lot, tall ones Pillow 13 resizes vertical pass
    # first): every pixel must equal the Pillow path's
    rng = np.random.default_rng(0)
    sizes = [(int(w), int(h)) for w, h in rng.integers(16, 1600, (60, 2))] + [(257, 1000), (300, 1200), (4000, 300)]
    noise = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    for preset in (EvalPreset(288, 256), EvalPreset(256, 224), EvalPreset(72, 64, "bilinear")):
        t, d = EvalTransform(preset), DecodeForResize(preset)
        got = DeviceResize(device)(ResizeBatch.pack([d(im) for im in noise + demo])).cpu()
        want = torch.stack([t.to_uint8(im) for im in noise + demo])
        m, mean, share = pixel_stats(got, want)
        rows.append([f"{len(sizes)} noise images of random sizes + the demo images (exact resize on {device.type}, "
                     f"--resize device) vs the Pillow path", f"{preset.resize}->{preset.crop} {preset.interpolation}",
                     "-", str(m), f"{mean:.4f}", f"{share:.2f}%"])

    # The generated set: all pixels, and predictions of the benchmarks' model
    data = make_dataset(args.data, args.num_images)
    files = sorted((data / "val").rglob("*.JPEG"))[: args.num_images]
    preset = EvalPreset(288, 256)
    t, reader, dec = EvalTransform(preset), JpegReader(preset), GpuJpegDecoder(preset, device)
    exact, on_device, device_worst = DecodeForResize(preset), DeviceResize(device), 0
    net = cspnet.optimize_for_inference(bench.to(device))
    worst, total_abs, total_diff, npix, agree, relmax = 0, 0.0, 0.0, 0, 0, 0.0
    for s in range(0, len(files), args.batch_size):
        chunk = files[s : s + args.batch_size]
        g = dec([reader(str(f)) for f in chunk])
        c = torch.stack([t.to_uint8(f) for f in chunk]).to(device)
        device_worst = max(device_worst, int((on_device(ResizeBatch.pack([exact(str(f)) for f in chunk])).int()
                                              - c.int()).abs().max()))
        d = (g.int() - c.int()).abs()
        worst, npix = max(worst, int(d.max())), npix + d.numel()
        total_abs, total_diff = total_abs + float(d.sum()), total_diff + float((d > 0).sum())
        with torch.inference_mode():
            a, b = net(t.normalize(c)), net(t.normalize(g))
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        relmax = max(relmax, common.rel_diff(b, a))
    rows.append([f"{len(files)} generated JPEGs, --decode gpu path vs the Pillow path", "288->256", "-", str(worst),
                 f"{total_abs / npix:.4f}", f"{100 * total_diff / npix:.2f}%"])
    rows.append([f"{len(files)} generated JPEGs, exact resize on {device.type} (--resize device) vs the Pillow path",
                 "288->256", "-", str(device_worst), "-", "-"])
    model_rows.append([f"{len(files)} generated JPEGs, cspdarknet53 random weights (bench model)",
                       f"{agree}/{len(files)} ({100 * agree / len(files):.2f}%)", f"{relmax:.1e}"])
    info["load average at end (1/5/15 min)"] = common.load_average()

    body = "\n".join(common.header_lines(info)) + "\n\n"
    body += ("Pixels of the uint8 crop, each GPU input path vs the golden arrays (mmpretrain's preprocessing; the "
             "Pillow path equals them: its column is 0) or the Pillow path" + ("" if have_golden else "; no golden data here, so vs the Pillow path")
             + ":\n\n")
    body += common.table(["image (path)", "resize->crop", "max abs diff, Pillow path vs golden",
                          "max abs diff", "mean abs diff", "pixels differing"], rows)
    body += "\n\nPredictions on the --decode gpu path's crops vs the Pillow path's:\n\n"
    body += common.table(["images, model", "same top-1", "max abs logit diff / max abs logit"], model_rows) + "\n"
    print(body)
    common.write_section(args.results, args.section or f"decode-{device.type}",
                         f"GPU decode path vs the exact Pillow pipeline ({info['gpu'] if device.type == 'cuda' else 'on CPU: torchvision CPU decoder, same resize'})", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
