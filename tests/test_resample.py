"""The resize on the device (``cspnet.data.resample``) gives Pillow's pixels bit for bit: mmpretrain's golden arrays,
and ``EvalTransform`` on images of many sizes, filters and both pass orders, one batch at a time, also when the
batch comes packed from loader workers. Run on CPU here; the same integer ops run on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cspnet.data.resample as R
from cspnet.data.loader import DecodeForResize
from cspnet.data.resample import DecodedImage, ResizeBatch, check_device_resize, resize_crop
from cspnet.data.transforms import EvalPreset, EvalTransform
from cspnet.engine.evaluate import build_eval_loader
from cspnet.errors import InvalidOptionError
from golden import DEMO, IMAGES, golden_uint8

PIPELINES = {"288-256": EvalPreset(288, 256), "256-224": EvalPreset(256, 224)}


def device_resize(images, preset: EvalPreset) -> torch.Tensor:
    decode = DecodeForResize(preset)
    return resize_crop(ResizeBatch.pack([decode(im) for im in images]), "cpu")


def pillow_resize(images, preset: EvalPreset) -> torch.Tensor:
    t = EvalTransform(preset)
    return torch.stack([t.to_uint8(im) for im in images])


def sizes_for(preset: EvalPreset) -> list[tuple[int, int]]:
    """(width, height) pairs: ImageNet-like, portrait, square, tiny (enlarged), huge (wide filters), an edge of
    exactly the target (no pass on that axis), and tall shrinks that Pillow 13 resizes vertical pass first."""
    r = preset.resize
    return [(500, 375), (375, 500), (500, 333), (333, 500), (r, r), (r, 400), (400, r), (r + 1, r), (30, 20),
            (20, 700), (1999, 1333), (257, 1000), (100, 400), (50, 223), (4000, 300)]


def random_images(sizes, seed=0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_equals_mmpretrain_arrays(pipeline):
    got = device_resize([DEMO / f for f in IMAGES.values()], PIPELINES[pipeline])
    for name, img in zip(IMAGES, got):
        assert torch.equal(img, torch.from_numpy(golden_uint8(name, pipeline))), name


@pytest.mark.parametrize("preset", [EvalPreset(288, 256), EvalPreset(256, 224), EvalPreset(72, 64, "bilinear"),
                                    EvalPreset(50, 40, "lanczos"), EvalPreset(300, 300)], ids=str)
def test_equals_pillow_on_many_sizes_in_one_batch(preset):
    images = random_images(sizes_for(preset)) + [Image.open(DEMO / f) for f in IMAGES.values()]
    got = device_resize(images, preset)
    assert got.shape == (len(images), 3, preset.crop, preset.crop)
    assert got.is_contiguous(memory_format=torch.channels_last)  # the layout the fast model path reads
    want = pillow_resize(images, preset)
    for i, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), (preset, images[i].size)


def test_pass_order_follows_the_installed_pillow(monkeypatch):
    """A tall image that loses many rows: the two pass orders round differently, so the order must be Pillow's."""
    import PIL

    preset = EvalPreset(256, 224)
    tall = random_images([(257, 1000), (300, 1200)], seed=1)
    want = pillow_resize(tall, preset)
    first = [R.crop_taps(im.height, im.width, preset).vertical_first for im in tall]
    assert first == [int(PIL.__version__.split(".")[0]) >= 13] * 2
    assert torch.equal(device_resize(tall, preset), want)
    monkeypatch.setattr(R, "_pillow_major", lambda: 12 if first[0] else 13)  # the other order
    assert not torch.equal(device_resize(tall, preset), want)


def test_exif_orientation_and_modes_as_the_loader(tmp_path):
    """Decoding is load_image's: EXIF rotation, greyscale, palette, alpha, 16-bit all become the same RGB."""
    rng = np.random.default_rng(2)
    rotated = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(tmp_path / "rot.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 256, (70, 50), dtype=np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 256, (40, 80), dtype=np.uint8)).convert("P").save(tmp_path / "pal.png")
    Image.fromarray(rng.integers(0, 65535, (50, 50), dtype=np.uint16)).save(tmp_path / "deep.png")
    paths = sorted(tmp_path.iterdir())
    preset = EvalPreset(40, 32)
    assert torch.equal(device_resize(paths, preset), pillow_resize(paths, preset))


def test_a_batch_from_loader_workers_is_one_shared_buffer():
    preset = EvalPreset(72, 64)
    paths = [str(p) for p in sorted(DEMO.iterdir())] * 2

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return DecodeForResize(preset)(paths[i]), 0

    batches = list(build_eval_loader(DS(), batch_size=3, num_workers=2, rank=0, world_size=1, pin_memory=False))
    assert [len(b[0]) for b in batches] == [3, 3, 2]
    images = batches[0][1]
    assert isinstance(images, ResizeBatch) and images.pixels.is_shared()
    got = torch.cat([resize_crop(b[1], "cpu") for b in batches])
    assert torch.equal(got, pillow_resize(paths, preset))


def test_items_carry_their_collate():
    item = DecodeForResize(EvalPreset(40, 32))(DEMO / "dog.jpg")
    assert isinstance(item, DecodedImage) and item.pixels.shape == (374, 500, 3)
    batch = DecodedImage.collate([item, item])
    assert batch.sizes.tolist() == [[374, 500]] * 2 and not batch.pixels.is_shared()  # not in a worker


def test_taps_match_pillow_on_one_axis():
    """The weights alone: a one-row image resized along its row is one horizontal pass."""
    rng = np.random.default_rng(3)
    for filt in ("bicubic", "bilinear", "lanczos"):
        for n_in, n_out in [(500, 384), (384, 500), (7, 3), (3, 7), (1000, 13), (288, 288)]:
            row = rng.integers(0, 256, (1, n_in), dtype=np.uint8)
            want = np.asarray(Image.fromarray(row).resize((n_out, 1), getattr(Image.Resampling, filt.upper())))
            start, weights = R.pillow_taps(n_in, n_out, filt)
            idx = np.minimum(start[:, None] + np.arange(weights.shape[1]), n_in - 1)
            acc = (row[0][idx].astype(np.int64) * weights).sum(1) + (1 << (R.PRECISION_BITS - 1))
            got = np.clip(acc >> R.PRECISION_BITS, 0, 255)
            assert (got == want[0]).all(), (filt, n_in, n_out)
            assert np.abs(weights.sum(1) - (1 << R.PRECISION_BITS)).max() <= weights.shape[1]  # normalised to 1


def test_nearest_is_refused_with_what_to_do():
    with pytest.raises(InvalidOptionError, match="not 'nearest'.*--resize loader"):
        check_device_resize(EvalPreset(40, 32, "nearest"))
    with pytest.raises(InvalidOptionError, match="--resize loader"):
        DecodeForResize(EvalPreset(40, 32, "nearest"))


def jpeg_zoo(folder) -> dict[str, object]:
    """JPEGs of every kind the fast decoder must take or leave to Pillow, and a truncated one."""
    rng = np.random.default_rng(4)
    photo = rng.integers(0, 256, (75, 100, 3), dtype=np.uint8)
    files = {}
    for name, img, kw in [("plain", Image.fromarray(photo), {}), ("444", Image.fromarray(photo), {"subsampling": 0}),
                          ("progressive", Image.fromarray(photo), {"progressive": True}),
                          ("grey", Image.fromarray(photo[..., 0]), {}),
                          ("cmyk", Image.fromarray(photo).convert("CMYK"), {})]:
        files[name] = folder / f"{name}.jpg"
        img.save(files[name], quality=90, **kw)
    exif = Image.Image.getexif(Image.new("RGB", (1, 1)))
    exif[0x0112] = 8
    files["rotated"] = folder / "rotated.jpg"
    Image.fromarray(photo).save(files["rotated"], quality=90, exif=exif)
    files["truncated"] = folder / "truncated.jpg"
    files["truncated"].write_bytes(files["plain"].read_bytes()[:1500])
    return files


def test_load_rgb_array_gives_load_images_pixels(tmp_path):
    from cspnet.data.transforms import _libjpeg_decoder, load_image, load_rgb_array
    from cspnet.errors import ImageError

    files = jpeg_zoo(tmp_path)
    for name, path in [*files.items(), *((p.name, p) for p in sorted(DEMO.iterdir()))]:
        if name == "truncated":
            with pytest.raises(ImageError, match="truncated.jpg"):
                load_rgb_array(path)
            continue
        assert np.array_equal(load_rgb_array(path), np.asarray(load_image(path))), name
    decode = _libjpeg_decoder()
    if decode is None:
        pytest.skip("torchvision is not installed: Pillow decoded every file above")
    # torchvision took the plain JPEGs and left the others to Pillow
    assert {n: decode(p) is not None for n, p in files.items()} == {
        "plain": True, "444": True, "progressive": True, "grey": True, "cmyk": False, "rotated": False,
        "truncated": False}


def test_load_rgb_array_without_torchvision(monkeypatch, tmp_path):
    import sys

    from cspnet.data import transforms

    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    transforms._libjpeg_decoder.cache_clear()
    try:
        assert transforms._libjpeg_decoder() is None
        path = jpeg_zoo(tmp_path)["plain"]
        assert np.array_equal(transforms.load_rgb_array(path), np.asarray(transforms.load_image(path)))
    finally:
        transforms._libjpeg_decoder.cache_clear()
