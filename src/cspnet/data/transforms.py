"""Image loading and the exact eval preprocessing of mmpretrain's CSPNet configs: decode (cv2, BGR) ->
``ResizeEdge(scale, edge='short', backend='pillow', interpolation='bicubic')`` -> ``CenterCrop(crop)`` -> RGB ->
``(x - mean) / std`` on the 0-255 scale. Here Pillow decodes straight to RGB; the resize runs per channel, so the
channel order changes no pixel, and the result equals mmpretrain's own arrays (``tests/test_transforms.py``)."""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from .presets import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, EvalPreset  # noqa: F401 (re-exported)

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

RESAMPLING = {name: getattr(Image.Resampling, name.upper()) for name in INTERPOLATIONS}


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, the way a user means it."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (and 32-bit int) greyscale: Pillow's convert() would clip at 255; scale the range down instead,
        # as OpenCV does when it reads a 16-bit PNG as 8-bit colour.
        arr = np.asarray(img).astype(np.int64)
        shift = 8 if arr.max(initial=0) < 65536 else 24
        return Image.fromarray((arr >> shift).clip(0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.asarray(img).clip(0, 255).astype(np.uint8)).convert("RGB")
    # RGBA/LA/P: alpha dropped, not composited, as cv2.IMREAD_COLOR (mmpretrain); CMYK/YCbCr/L/1: Pillow's conversions
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(image: ImageLike) -> Image.Image:
    """Read an image as an 8-bit RGB ``PIL.Image``.

    Args:
        image: a file path (any format Pillow opens; EXIF orientation applied, as OpenCV does), a ``PIL.Image``
            (any mode), or a NumPy array ``(H, W, 3)`` **RGB** uint8 or ``(H, W)`` greyscale uint8. (mmpretrain
            silently takes arrays as BGR; here they are RGB, the order PIL, matplotlib and torchvision use.)

    Raises:
        ImageError: naming the file, for a missing path, a directory, a non-image, a truncated or corrupt file, or
            a decompression bomb.
    """
    if isinstance(image, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(image) or image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ImageError(f"an image array must be uint8 with shape (H, W, 3) RGB or (H, W); got {image.dtype} "
                             f"{image.shape}")
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    if not isinstance(image, (str, os.PathLike)):
        raise ImageError(f"expected a path, PIL.Image or uint8 array, got {type(image).__name__}")
    path = Path(image)
    if not path.exists():
        raise ImageError(f"image file {str(path)!r} does not exist")
    if path.is_dir():
        raise ImageError(f"{str(path)!r} is a directory; expected an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decode now, inside the try, so truncated data raises here and not later
                return _to_rgb(ImageOps.exif_transpose(img) or img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image {str(path)!r} declares too many pixels ({e}); refusing to decode it (a decompression "
                         "bomb?)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{str(path)!r} is not an image Pillow can read (corrupt, empty or another file "
                         "type)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"image {str(path)!r} is corrupt or truncated: {e}") from None


def load_rgb_array(image: ImageLike) -> np.ndarray:
    """:func:`load_image` as a uint8 ``(H, W, 3)`` RGB array: the same pixels, faster for plain JPEG files. An RGB or
    greyscale JPEG file without EXIF rotation goes to torchvision's CPU decoder when it is installed and gives
    Pillow's very pixels in this process (both libjpeg-turbo, same settings; checked once per process): 1.0 ms
    instead of Pillow's 1.7 ms for a 500x375 photo here. Everything else, and every file torchvision refuses, goes
    through Pillow, which raises the :class:`~cspnet.errors.ImageError` naming the file."""
    decode = _libjpeg_decoder() if isinstance(image, (str, os.PathLike)) else None
    pixels = decode(Path(image)) if decode is not None else None
    return pixels if pixels is not None else np.asarray(load_image(image), dtype=np.uint8)


def read_plain_jpeg(path: str | os.PathLike) -> tuple[bytes, int] | None:
    """A JPEG file's bytes and EXIF orientation (1..8) when a decoder other than Pillow (torchvision's libjpeg-turbo,
    nvJPEG) may take it: RGB or greyscale, within Pillow's pixel limit. ``None`` for anything else, unreadable files
    included, so that Pillow's pipeline takes it and names any problem (of other files, 2 bytes are read)."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\xff\xd8":  # JPEG's start-of-image marker
                return None
            raw = b"\xff\xd8" + f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a size warning here is Pillow's to raise, on its own path
            with Image.open(io.BytesIO(raw)) as im:  # the header only
                if (im.format != "JPEG" or im.mode not in ("RGB", "L")
                        or im.width * im.height > (Image.MAX_IMAGE_PIXELS or float("inf"))):
                    return None
                orientation = int(im.getexif().get(0x0112, 1) or 1)  # 0 or absent: as stored, as exif_transpose
    except Exception:  # noqa: BLE001 - Pillow decides
        return None
    return (raw, orientation) if 1 <= orientation <= 8 else None


@functools.lru_cache(maxsize=None)
def _libjpeg_decoder():
    """``path -> (H, W, 3) uint8 array or None`` through torchvision, if importable and equal to Pillow here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # noqa: BLE001 - not installed, or a build that does not match torch: Pillow decodes
        return None

    def decode_bytes(raw: bytes) -> np.ndarray:
        with warnings.catch_warnings():  # torchvision 0.29's deprecation notice; frombuffer's read-only notice
            warnings.simplefilter("ignore")
            rgb = decode_jpeg(torch.frombuffer(raw, dtype=torch.uint8), mode=ImageReadMode.RGB)
        return rgb.permute(1, 2, 0).numpy()  # (H, W, 3): libjpeg-turbo's own layout, no copy

    def decode(path: Path) -> np.ndarray | None:
        jpeg = read_plain_jpeg(path)
        if jpeg is None or jpeg[1] != 1:  # anything else, and EXIF rotation, is Pillow's
            return None
        try:
            return decode_bytes(jpeg[0])
        except RuntimeError:  # truncated, corrupt, ...: Pillow decides and names the file
            return None

    rng = np.random.default_rng(0)
    for mode, extra in (("RGB", {}), ("RGB", {"subsampling": 0}), ("RGB", {"progressive": True}), ("L", {})):
        shape = (37, 53, 3) if mode == "RGB" else (37, 53)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, "JPEG", quality=90, **extra)
        try:
            if not np.array_equal(decode_bytes(buf.getvalue()), np.asarray(Image.open(buf).convert("RGB"))):
                return None
        except Exception:  # noqa: BLE001
            return None
    return decode


def short_edge_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """mmpretrain ``ResizeEdge(edge='short')``'s output ``(height, width)``: short edge ``size``, long edge
    ``int(size * long / short)`` (truncated)."""
    return (int(size * height / width), size) if width < height else (size, int(size * width / height))


def crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """mmcv ``CenterCrop``'s ``(top, left)``: ``round((H - size) / 2)`` with Python's round-half-to-even."""
    return max(0, int(round((height - size) / 2.0))), max(0, int(round((width - size) / 2.0)))


def resize_short_edge(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """mmpretrain ``ResizeEdge(edge='short', backend='pillow')``: short edge to ``size``, long edge truncated."""
    new_h, new_w = short_edge_shape(img.height, img.width, size)
    return img.resize((new_w, new_h), RESAMPLING[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """mmcv ``CenterCrop``: a ``size`` square (smaller where the image is) at :func:`crop_offsets`."""
    w, h = img.size
    top, left = crop_offsets(h, w, size)
    return img.crop((left, top, min(w, left + size), min(h, top + size)))


class EvalTransform:
    """Eval preprocessing: image -> normalised float32 tensor ``(3, crop, crop)``. Split in two for fast loaders:
    :meth:`to_uint8` (decode, resize, crop; runs in DataLoader workers and sends 4x fewer bytes) and
    :meth:`normalize` (on the batch, on the model's device)."""

    def __init__(self, preset: EvalPreset):
        self.preset = preset
        self._mean = torch.tensor(preset.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(preset.std, dtype=torch.float32).view(3, 1, 1)

    def __repr__(self) -> str:
        return f"EvalTransform({self.preset})"

    def to_uint8(self, image: ImageLike) -> torch.Tensor:
        """Image -> uint8 RGB tensor ``(3, crop, crop)``: mmpretrain's pipeline before normalisation."""
        p = self.preset
        img = center_crop(resize_short_edge(load_image(image), p.resize, p.interpolation), p.crop)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(3, H, W)`` or ``(N, 3, H, W)`` -> float32 ``(x - mean) / std``, on ``x``'s device."""
        return (x.float() - self._mean.to(x.device)) / self._std.to(x.device)

    def __call__(self, image: ImageLike) -> torch.Tensor:
        return self.normalize(self.to_uint8(image))
