"""get_transform equals mmpretrain's test pipeline on the demo images; every Pillow image mode is handled (bad and
unusual files: test_reliability.py)."""

import numpy as np
import pytest
import torch
from PIL import Image

import cspnet
from cspnet.errors import ImageError
from golden import DEMO, IMAGES, MEAN, STD, golden_uint8

PIPELINES = {"288-256": "cspdarknet50_3rdparty_8xb32_in1k", "256-224": "cspresnext50_3rdparty_8xb32_in1k"}


@pytest.mark.parametrize("pipeline, model", PIPELINES.items())
@pytest.mark.parametrize("image", IMAGES)
def test_equals_mmpretrain_arrays(pipeline, model, image):
    t = cspnet.get_transform(model)
    golden = golden_uint8(image, pipeline)
    out = t(DEMO / IMAGES[image])
    assert out.dtype == torch.float32 and out.shape == golden.shape
    expected = (torch.from_numpy(golden).float() - MEAN) / STD
    assert torch.equal(out, expected)  # bit-exact, decode and resize included


def test_inputs_path_pil_and_rgb_array_agree():
    t = cspnet.get_transform("cspresnet50")
    path = DEMO / "dog.jpg"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    a, b, c = t(path), t(Image.open(path)), t(rgb)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, t(np.ascontiguousarray(rgb[..., ::-1])))  # arrays are RGB, not BGR


def _save(img, path, **kw):
    img.save(path, **kw)
    return path


def test_every_mode_becomes_rgb(tmp_path):
    t = cspnet.get_transform("cspresnet50")
    base = Image.open(DEMO / "dog.jpg").convert("RGB").resize((80, 60))
    gray = base.convert("L")
    cases = {
        "gray.png": gray,
        "rgba.png": base.convert("RGBA"),
        "palette.png": base.convert("P"),
        "bw.png": base.convert("1"),
    }
    for name, img in cases.items():
        out = t(_save(img, tmp_path / name))
        assert out.shape == (3, 256, 256), name


def test_exif_orientation_applied(tmp_path):
    img = Image.open(DEMO / "dog.jpg").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    loaded = cspnet.load_image(path)
    assert loaded.size == (img.height, img.width)


def test_bad_arrays():
    with pytest.raises(ImageError, match="uint8"):
        cspnet.load_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ImageError, match="uint8"):
        cspnet.load_image(np.zeros((4, 4, 4), dtype=np.uint8))
