"""Make ``tests/data/timm_preprocess.npz``: timm's own eval transform of the demo images, for
``tests/test_timm_preprocess.py`` (which needs neither timm nor torchvision).

Run it with the timm venv (timm 1.0.31, torchvision; no network: ``pretrained=False`` gives the tag's
``pretrained_cfg`` without fetching weights)::

    /work/venv-timm/bin/python tests/data/make_timm_golden.py

For each model ``cspdarknet53.ra_in1k``, ``cspresnet50.ra_in1k``, ``cspresnext50.ra_in1k``: the data config is
``timm.data.resolve_data_config({}, model=timm.create_model(name, pretrained=False))`` and the transform
``timm.data.create_transform(**cfg)`` (Resize (PIL) -> CenterCrop -> ToTensor -> Normalize). One more config,
``bicubic224``, is what ``timm validate.py --img-size 224 --crop-pct 0.875 --interpolation bicubic`` resolves for
cspresnext50: the other filter, and a crop_pct that is not 0.887. The images enter the transform as timm's
``ImageDataset`` hands them over (``Image.open(f).convert('RGB')``).

Stored (the three pretrained cfgs are identical, so arrays are stored once per distinct config, ``key``):

- ``cfg.<model>``: JSON of the resolved config (input_size, crop_pct, interpolation, mean, std, crop_mode), the
  config ``key`` and the transform's repr;
- ``uint8.<key>.<image>``: ``(3, crop, crop)`` uint8, the output of the transform's PIL steps (before ToTensor);
- ``lut.<key>``: ``(3, 256)`` float32, timm's ToTensor + Normalize of every grey level per channel. timm's final
  tensor is elementwise in the crop (checked here over every pixel), so ``lut[c, uint8[c]]`` is that whole tensor;
- ``float.<key>.<image>``: the final normalised float32 tensor itself, every 8th row and column
  (``x[:, ::8, ::8]``), as timm computed it;
- ``meta``: JSON: versions, the images and how the derived ones are made from the demo files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import PIL
import timm
import torch
import torchvision
from PIL import Image
from timm.data import create_transform, resolve_data_config

HERE = Path(__file__).resolve().parent
DEMO = HERE.parents[1] / "demo"
OUT = HERE / "timm_preprocess.npz"
MODELS = ("cspdarknet53.ra_in1k", "cspresnet50.ra_in1k", "cspresnext50.ra_in1k")
EXTRA = {"bicubic224": ("cspresnext50.ra_in1k", dict(input_size=(3, 224, 224), crop_pct=0.875,
                                                      interpolation="bicubic"))}
CFG_FIELDS = ("input_size", "crop_pct", "interpolation", "mean", "std", "crop_mode")
STEP = 8  # the float tensor is stored at every STEP-th row and column; the LUT covers every pixel
# How the two derived images come from the demo files, in NumPy alone so the test rebuilds the very same input:
# a greyscale one (mode L: the green channel of bird.JPEG), and a 500x30 strip of dog.jpg, whose aspect ratio
# (16.7:1) sends cspnet's loader through its windowed resize (only the crop's window is resized).
IMAGES = {"bird": "bird.JPEG", "cat-dog": "cat-dog.png", "demo": "demo.JPEG", "dog": "dog.jpg",
          "bird-gray": "bird.JPEG[:, :, 1] as mode L", "dog-strip": "dog.jpg[172:202] (500 x 30)"}


def derived(name: str) -> Image.Image:
    """The image ``name`` as timm's ImageDataset gives it to the transform: RGB."""
    if name == "bird-gray":
        return Image.fromarray(np.asarray(Image.open(DEMO / "bird.JPEG").convert("RGB"))[:, :, 1]).convert("RGB")
    if name == "dog-strip":
        return Image.fromarray(np.asarray(Image.open(DEMO / "dog.jpg").convert("RGB"))[172:202].copy())
    with Image.open(DEMO / IMAGES[name]) as im:
        return im.convert("RGB")


def split(transform) -> tuple[list, list]:
    """timm's Compose as (PIL steps, tensor steps): everything before ToTensor, and the rest."""
    steps = list(transform.transforms)
    at = next(i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__)
    return steps[:at], steps[at:]


def run(steps, x):
    for t in steps:
        x = t(x)
    return x


def cfg_key(cfg: dict) -> str:
    return f"{cfg['input_size'][1]}-{cfg['crop_pct']}-{cfg['interpolation']}-{cfg['crop_mode']}"


def main() -> int:
    arrays, cfgs = {}, {}
    for name in MODELS:
        cfgs[name] = resolve_data_config({}, model=timm.create_model(name, pretrained=False))
    for key, (name, override) in EXTRA.items():
        cfgs[key] = resolve_data_config(override, model=timm.create_model(name, pretrained=False))
    for name, cfg in cfgs.items():
        cfg = {k: cfg[k] for k in CFG_FIELDS}
        key = cfg_key(cfg)
        transform = create_transform(**cfg)
        arrays[f"cfg.{name}"] = np.array(json.dumps(dict(cfg, key=key, transform=repr(transform))))
        if f"lut.{key}" in arrays:
            continue
        pil_steps, tensor_steps = split(transform)
        levels = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2))
        lut = run(tensor_steps, levels)[:, 0, :].numpy()  # (3, 256): ToTensor + Normalize of each grey level
        arrays[f"lut.{key}"] = lut
        for image in IMAGES:
            img = derived(image)
            crop = run(pil_steps, img)
            u8 = np.asarray(crop, dtype=np.uint8).transpose(2, 0, 1).copy()
            full = transform(img).numpy()  # the whole transform, as timm's loader applies it
            assert np.array_equal(full, run(tensor_steps, crop).numpy()), (name, image)
            assert np.array_equal(full, lut[np.arange(3)[:, None, None], u8]), (name, image)  # elementwise
            arrays[f"uint8.{key}.{image}"] = u8
            arrays[f"float.{key}.{image}"] = full[:, ::STEP, ::STEP].copy()
    arrays["meta"] = np.array(json.dumps(dict(
        versions=dict(timm=timm.__version__, torch=torch.__version__, torchvision=torchvision.__version__,
                      PIL=PIL.__version__, python=sys.version.split()[0]),
        images=IMAGES, float_step=STEP, models=list(MODELS), extra={k: v[0] for k, v in EXTRA.items()})))
    tmp = OUT.with_name(OUT.name + ".tmp")
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez_compressed(f, **arrays)
    tmp.replace(OUT)  # atomic: a failed run leaves the committed file as it was
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(arrays)} arrays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
