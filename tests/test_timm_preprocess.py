"""timm-style preprocessing reproduces timm's own eval transform: timm 1.0.31's ``create_transform(**cfg)`` of the
demo images, for each model's ``pretrained_cfg`` (``data/timm_preprocess.npz``, made by ``data/make_timm_golden.py``;
no timm needed here). The uint8 crop equals timm's PIL steps' output (Resize -> CenterCrop) bit for bit, through
the loader's Pillow path and the resize on the device; the normalised float32 tensor is timm's to 1e-6 (cspnet
normalises on the 0-255 scale, timm on 0-1: float32 rounding apart)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cspnet
from cspnet.data.loader import DecodeForResize
from cspnet.data.presets import EvalPreset
from cspnet.data.resample import ResizeBatch, resize_crop
from cspnet.data.transforms import EvalTransform
from golden import DEMO

GOLDEN = Path(__file__).resolve().parent / "data" / "timm_preprocess.npz"
MODELS = ("cspdarknet53.ra_in1k", "cspresnet50.ra_in1k", "cspresnext50.ra_in1k")
CONFIGS = (*MODELS, "bicubic224")  # bicubic224: timm validate.py --img-size 224 --crop-pct 0.875 bicubic


@functools.lru_cache(maxsize=None)
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def cfg(name: str) -> dict:
    return json.loads(str(golden()[f"cfg.{name}"]))


def images() -> dict[str, object]:
    """The golden's images as cspnet is given them: the demo files by path, the derived ones as the generator
    makes them (a (H, W) greyscale array; a strip of extreme aspect ratio, 500 x 30)."""
    meta = json.loads(str(golden()["meta"]))
    out = {name: DEMO / file for name, file in meta["images"].items() if (DEMO / file).is_file()}
    out["bird-gray"] = np.asarray(Image.open(DEMO / "bird.JPEG").convert("RGB"))[:, :, 1].copy()
    out["dog-strip"] = np.asarray(Image.open(DEMO / "dog.jpg").convert("RGB"))[172:202].copy()
    assert set(out) == set(meta["images"])
    return out


def test_golden_file_is_small_and_complete():
    assert GOLDEN.stat().st_size < 2_000_000
    assert json.loads(str(golden()["meta"]))["versions"]["timm"] == "1.0.31"
    for name in CONFIGS:
        key = cfg(name)["key"]
        for image in images():
            assert golden()[f"uint8.{key}.{image}"].dtype == np.uint8


@pytest.mark.parametrize("model", MODELS)
def test_the_models_timm_preset_is_timms_cfg(model):
    """``get_transform(arch).preset.with_crop_pct(...)`` (what ``cspnet test --crop-pct --interpolation`` does, with
    the crop given) is ``EvalPreset.from_timm(pretrained_cfg)``: 288 -> 256 bilinear for all three."""
    c = cfg(model)
    arch = model.split(".")[0]
    preset = EvalPreset.from_timm(c)
    assert (preset.resize, preset.crop, preset.interpolation) == (288, 256, "bilinear")
    base = cspnet.get_transform(arch).preset
    assert base.with_crop_pct(c["crop_pct"], c["interpolation"], crop=c["input_size"][1]) == preset
    assert preset.mean == base.mean and preset.std == base.std  # timm's 0-1 statistics x 255
    if base.crop != preset.crop:  # cspresnext50: mmpretrain's 224 crop; crop_pct alone keeps it, so it is not timm's
        assert base.with_crop_pct(c["crop_pct"], c["interpolation"]).crop == base.crop


@pytest.mark.parametrize("name", CONFIGS)
def test_uint8_crops_equal_timms(name):
    c = cfg(name)
    preset = EvalPreset.from_timm(c)
    t = EvalTransform(preset)
    imgs = images()
    on_device = resize_crop(ResizeBatch.pack([DecodeForResize(preset)(im) for im in imgs.values()]), "cpu")
    for (image, src), dev in zip(imgs.items(), on_device):
        want = torch.from_numpy(golden()[f"uint8.{c['key']}.{image}"])
        got = t.to_uint8(src)
        assert got.shape == want.shape, image
        assert torch.equal(got, want), f"{image}: {int((got != want).sum())} of {want.numel()} values differ"
        assert torch.equal(dev, want), f"{image} (resize on the device)"


@pytest.mark.parametrize("name", CONFIGS)
def test_normalised_tensor_close_to_timms(name):
    c = cfg(name)
    key = c["key"]
    t = EvalTransform(EvalPreset.from_timm(c))
    lut = torch.from_numpy(golden()[f"lut.{key}"])  # timm's float of each level per channel: its whole tensor
    step = json.loads(str(golden()["meta"]))["float_step"]
    for image, src in images().items():
        got = t(src)
        assert got.dtype == torch.float32
        timm_full = lut[torch.arange(3)[:, None, None], torch.from_numpy(golden()[f"uint8.{key}.{image}"]).long()]
        torch.testing.assert_close(got, timm_full, rtol=0, atol=1e-6, msg=image)
        timm_sampled = torch.from_numpy(golden()[f"float.{key}.{image}"])  # timm's own final tensor, sampled
        torch.testing.assert_close(got[:, ::step, ::step], timm_sampled, rtol=0, atol=1e-6, msg=image)
        assert torch.equal(timm_full[:, ::step, ::step], timm_sampled)


@pytest.mark.parametrize("bad, match", [
    ({"input_size": (3, 256, 320)}, "input_size"),
    ({"crop_mode": "squash"}, "crop_mode"),
    ({"crop_pct": 1.1}, "crop_pct"),
    ({"interpolation": "hamming"}, "interpolation"),
])
def test_from_timm_refuses_what_a_preset_cannot_do(bad, match):
    with pytest.raises(ValueError, match=match):
        EvalPreset.from_timm({**cfg(MODELS[0]), **bad})


def test_from_timm_defaults_crop_pct_as_timm():
    c = {**cfg(MODELS[0]), "crop_pct": None, "input_size": (3, 224, 224)}
    assert EvalPreset.from_timm(c).resize == 256  # floor(224 / 0.875), timm's DEFAULT_CROP_PCT
