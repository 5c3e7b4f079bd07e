"""Image loading and the exact eval preprocessing of mmpretrain's CSPNet configs: decode (cv2, BGR) ->
``ResizeEdge(scale, edge='short', backend='pillow', interpolation='bicubic')`` -> ``CenterCrop(crop)`` -> RGB ->
``(x - mean) / std`` on the 0-255 scale. Here Pillow decodes straight to RGB; the resize runs per channel, so the
channel order changes no pixel, and the result equals mmpretrain's own arrays (``tests/test_transforms.py``)."""

from __future__ import annotations

import errno
import functools
import io
import os
import re
import stat
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .._io import special_kind
from ..errors import ImageError
from .presets import (IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, EvalPreset,  # noqa: F401 (re-exported)
                      crop_offsets, short_edge_shape)
from .resample import FILTERS, resize_crop_window

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

RESAMPLING = {name: getattr(Image.Resampling, name.upper()) for name in INTERPOLATIONS}

# Pillow resizes the whole image while the result has at most this many times the pixels of a square of the short
# edge (aspect ratio up to 8:1: 288 x 2304, 2 MB); beyond, only the centre crop's window is resized (the same pixels,
# cspnet.data.resample), so the cost follows the crop, not the aspect ratio.
FULL_RESIZE_MAX_ASPECT = 8
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")  # http://, https://, s3://, file://, ... (not C:/)
_WHY_NOT = {"FIFO (named pipe)": "opening it waits for a writer, for ever", "socket": "it cannot be opened as a file",
            "character device": "reading it can block or never end", "block device": "it is a whole disk"}


def check_regular_file(path: str | os.PathLike, what: str = "image file", error: type[Exception] = ImageError
                       ) -> os.stat_result:
    """``os.stat(path)`` when ``path`` is a regular file (through any symbolic links); else ``error`` naming it and
    what it is instead: missing, a URL, a dangling link, a link loop, a directory, a FIFO, a socket or a device.

    Checked before opening because ``open()`` of a FIFO blocks until a writer comes, for ever (``--skip-bad`` could
    not help), and a character device such as ``/dev/zero`` never ends."""
    name = os.fsdecode(path)
    if _URL.match(name):
        raise error(f"{what} {name!r} is a URL: cspnet reads local files and does not download them; download it "
                    f"first (e.g. curl -LO {name}) and give the file's path")
    try:
        st = os.stat(name)
    except FileNotFoundError:
        if os.path.islink(name):
            raise error(f"{what} {name!r} is a symbolic link to {os.readlink(name)!r}, which does not "
                        "exist") from None
        raise error(f"{what} {name!r} does not exist") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise error(f"{what} {name!r} is a symbolic link loop (it, or a folder on its path, leads back to "
                        "itself): it points to no file") from None
        if e.errno == errno.ENOTDIR:
            raise error(f"{what} {name!r} does not exist (a part of its path is a file, not a folder)") from None
        raise error(f"cannot read {what} {name!r}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{name!r} is a directory; expected {'an' if what[0] in 'aeiou' else 'a'} {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = special_kind(st.st_mode)
        raise error(f"{what} {name!r} is a {kind}, not a regular file ({_WHY_NOT.get(kind, 'not data')}): give the "
                    f"path of a regular file")
    return st


def _opener(name: str, flags: int) -> int:
    # O_NONBLOCK: should the path be swapped for a FIFO after the check, open() returns at once instead of waiting
    # for a writer; the fstat below then refuses it. On a regular file it changes nothing.
    fd = os.open(name, flags | getattr(os, "O_NONBLOCK", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file (it changed after it was checked)")
    if hasattr(os, "O_NONBLOCK"):
        os.set_blocking(fd, True)
    return fd


def open_regular_file(path: str | os.PathLike, what: str = "image file", error: type[Exception] = ImageError
                      ) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file (:func:`check_regular_file`), else raise ``error``
    naming it; never blocks."""
    name = os.fsdecode(path)
    check_regular_file(name, what, error)
    try:
        return open(name, "rb", opener=_opener)
    except PermissionError:
        raise error(f"cannot read {what} {name!r}: permission denied (check its owner and mode)") from None
    except OSError as e:
        raise error(f"cannot read {what} {name!r}: {e.strerror or e}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, the way a user means it."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (and 32-bit int) greyscale: Pillow's convert() would clip at 255; scale the range down instead,
        # as OpenCV does when it reads a 16-bit PNG as 8-bit colour. In the array's own dtype, shifted in place:
        # int64 copies made a small 16-bit PNG of 89M pixels (Pillow's limit) cost 2.8 GB.
        arr = np.asarray(img)
        if arr.dtype.kind == "u":  # I;16*: 0..65535
            return Image.fromarray((arr >> 8).astype(np.uint8)).convert("RGB")
        shifted = np.right_shift(arr, 8 if arr.max(initial=0) < 65536 else 24)
        return Image.fromarray(np.clip(shifted, 0, 255, out=shifted).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.asarray(img).clip(0, 255).astype(np.uint8)).convert("RGB")
    # RGBA/LA/P: alpha dropped, not composited, as cv2.IMREAD_COLOR (mmpretrain); CMYK/YCbCr/L/1: Pillow's conversions
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(image: ImageLike) -> Image.Image:
    """Read an image as an 8-bit RGB ``PIL.Image``.

    Args:
        image: a file path (a regular file in any format Pillow opens; EXIF orientation applied, as OpenCV does),
            a ``PIL.Image`` (any mode), or a NumPy array ``(H, W, 3)`` **RGB** uint8 or ``(H, W)`` greyscale uint8.
            (mmpretrain silently takes arrays as BGR; here they are RGB, the order PIL, matplotlib and torchvision
            use.)

    Raises:
        ImageError: naming the file, for a missing path, a URL, a dangling link or link loop, a directory, a FIFO,
            socket or device, an unreadable file, a non-image, a truncated or corrupt file, or a decompression bomb.
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
    name = os.fsdecode(image)  # as given: Path() would fold a URL's '//' (and the user knows the name they typed)
    return _decode(open_regular_file(name), name)


def decode_image(data: bytes, name: str, max_pixels: int | None = None) -> Image.Image:
    """:func:`load_image` for an encoded image in memory (an upload): the same checks and messages, naming it
    ``name``. ``max_pixels``: refuse, before decoding, an image declaring more pixels (a limit below Pillow's
    ``Image.MAX_IMAGE_PIXELS``, which applies in any case)."""
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(file: BinaryIO, name: str, max_pixels: int | None = None) -> Image.Image:
    try:
        with file, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                if max_pixels is not None and img.width * img.height > max_pixels:  # the header only, so far
                    raise Image.DecompressionBombError(f"{img.width} x {img.height} pixels, over the limit of "
                                                       f"{max_pixels}")
                img.load()  # decode now, inside the try, so truncated data raises here and not later
                return _to_rgb(ImageOps.exif_transpose(img) or img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image {name!r} declares too many pixels ({e}); refusing to decode it (a decompression "
                         "bomb?)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name!r} is not an image Pillow can read (corrupt, empty or another file "
                         "type)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"image {name!r} is corrupt or truncated: {e}") from None


def load_rgb_array(image: ImageLike) -> np.ndarray:
    """:func:`load_image` as a uint8 ``(H, W, 3)`` RGB array: the same pixels, faster for plain JPEG files. An RGB or
    greyscale JPEG file without EXIF rotation goes to torchvision's CPU decoder when it is installed and gives
    Pillow's very pixels in this process (both libjpeg-turbo, same settings; checked once per process): 1.0 ms
    instead of Pillow's 1.7 ms for a 500x375 photo here. Everything else, and every file torchvision refuses, goes
    through Pillow, which raises the :class:`~cspnet.errors.ImageError` naming the file."""
    decode = _libjpeg_decoder() if isinstance(image, (str, os.PathLike)) else None
    pixels = decode(Path(image)) if decode is not None else None
    return pixels if pixels is not None else np.asarray(load_image(image), dtype=np.uint8)


_MAX_JPEG_BYTES = 512 << 20  # 89M pixels (Pillow's limit) at 3 bytes each, the worst a JPEG stores, and margin


def read_plain_jpeg(path: str | os.PathLike) -> tuple[bytes, int] | None:
    """A JPEG file's bytes and EXIF orientation (1..8) when a decoder other than Pillow (torchvision's libjpeg-turbo,
    nvJPEG) may take it: RGB or greyscale, within Pillow's pixel limit. ``None`` for anything else, unreadable files
    included, so that Pillow's pipeline takes it and names any problem (of other files, 2 bytes are read)."""
    try:
        with open_regular_file(path) as f:  # anything else raises, so Pillow's path names it
            # nvJPEG gets the whole file: one larger than any JPEG within Pillow's pixel limit could be (a sparse
            # file of zeros after a tiny JPEG) is Pillow's, which reads only what it decodes
            if f.read(2) != b"\xff\xd8" or os.fstat(f.fileno()).st_size > _MAX_JPEG_BYTES:
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


def is_extreme_aspect(height: int, width: int, size: int) -> bool:
    """Whether resizing ``height x width`` to short edge ``size`` makes more than ``FULL_RESIZE_MAX_ASPECT`` times
    ``size * size`` pixels: then only the centre crop's window is resized (:mod:`cspnet.data.resample`)."""
    new_h, new_w = short_edge_shape(height, width, size)
    return new_h * new_w > FULL_RESIZE_MAX_ASPECT * size * size


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
        """Image -> uint8 RGB tensor ``(3, crop, crop)``: mmpretrain's pipeline before normalisation.

        Raises:
            ImageError: for an unreadable image (:func:`load_image`), or one of extreme aspect ratio with the
                ``nearest`` filter, whose windowed resize is not implemented (naming the file and the sizes).
        """
        p = self.preset
        img = load_image(image)
        if is_extreme_aspect(img.height, img.width, p.resize):

            if p.interpolation not in FILTERS:
                new_h, new_w = short_edge_shape(img.height, img.width, p.resize)
                name = repr(os.fsdecode(image)) if isinstance(image, (str, os.PathLike)) else "an image"
                raise ImageError(f"image {name} of {img.width} x {img.height} pixels would be resized to {new_w} x "
                                 f"{new_h} (aspect ratio over {FULL_RESIZE_MAX_ASPECT}:1) for a {p.crop} crop, and "
                                 f"the 'nearest' filter has no cropped resize here: crop the image or use another "
                                 f"interpolation")
            return resize_crop_window(np.asarray(img, dtype=np.uint8), p)
        img = center_crop(resize_short_edge(img, p.resize, p.interpolation), p.crop)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(3, H, W)`` or ``(N, 3, H, W)`` -> float32 ``(x - mean) / std``, on ``x``'s device."""
        return (x.float() - self._mean.to(x.device)) / self._std.to(x.device)

    def __call__(self, image: ImageLike) -> torch.Tensor:
        return self.normalize(self.to_uint8(image))
