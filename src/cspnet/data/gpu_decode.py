"""GPU JPEG decoding for evaluation: the loader workers only read file bytes, the GPU decodes (nvJPEG) and resizes
(``--decode gpu``; :func:`cspnet.data.loader.input_path` chooses it). torchvision is needed for this path only."""

from __future__ import annotations

import io
import warnings
from typing import NamedTuple, Sequence

import torch

from ..errors import InvalidOptionError
from .resample import ResizeBatch, check_device_resize, crop_taps, resize_crop
from .transforms import EvalPreset, EvalTransform, read_plain_jpeg


class EncodedImage(NamedTuple):
    """One image as the loader workers hand it over: a JPEG's bytes for the GPU, or a crop Pillow made already."""

    # The file's bytes, for an RGB/greyscale JPEG. ``bytes``, not a tensor: a batch of bytes crosses from a loader
    # worker in one pickled message, while every tensor would cross as its own shared-memory segment (measured
    # ~1 ms per image, which capped the whole input path near 2,000 images/s on 2 workers).
    data: bytes | None
    orientation: int  # EXIF orientation 1..8 (1: as stored); nvJPEG ignores EXIF, so it is applied after decoding
    decoded: torch.Tensor | None  # uint8 (3, crop, crop) for anything else (PNG, CMYK JPEG, ...), via Pillow


class JpegReader:
    """The dataset transform of the GPU input path, in the loader workers: ``path -> EncodedImage``. Files that are
    not plain JPEGs (:func:`~cspnet.data.transforms.read_plain_jpeg`) go through the exact Pillow pipeline, so one
    it cannot read raises :class:`~cspnet.errors.ImageError` in the worker and ``--skip-bad`` works."""

    def __init__(self, preset: EvalPreset):
        self.transform = EvalTransform(preset)

    def __call__(self, path: str) -> EncodedImage:
        jpeg = read_plain_jpeg(path)
        if jpeg is not None:
            return EncodedImage(*jpeg, None)
        return EncodedImage(None, 1, self.transform.to_uint8(path))  # raises the precise ImageError, naming the file


def apply_exif_orientation(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """``(C, H, W)`` as stored -> as displayed, for EXIF orientation 1..8 (Pillow's ``ImageOps.exif_transpose``)."""
    # 1..4: as stored, mirrored, turned 180 degrees, flipped; 5..8: the same after a transpose (6 and 8 are rotations)
    flips = {1: (), 2: (-1,), 3: (-2, -1), 4: (-2,), 5: (), 6: (-1,), 7: (-2, -1), 8: (-2,)}[orientation]
    img = img.transpose(-2, -1) if orientation >= 5 else img
    return img.flip(flips) if flips else img


class GpuJpegDecoder:
    """Decode a batch of :class:`EncodedImage` on ``device`` (nvJPEG via torchvision; Pillow for a JPEG it rejects),
    then resize and crop it exactly as :class:`~cspnet.data.transforms.EvalTransform` does
    (:func:`cspnet.data.resample.resize_crop`): ``list[EncodedImage] -> uint8 (N, 3, crop, crop)`` (channels-last).
    Not exact: nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a few levels per pixel
    (``benchmarks/RESULTS.md`` gives the measured differences and the top-1 agreement)."""

    def __init__(self, preset: EvalPreset, device: str | torch.device = "cuda"):
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            raise InvalidOptionError(
                "GPU JPEG decoding (--decode gpu) needs torchvision, which cspnet does not install: "
                "pip install torchvision (the build matching your torch), or use --decode cpu"
            ) from None
        self.preset = preset
        self.device = torch.device(device)
        check_device_resize(preset)
        self.transform = EvalTransform(preset)
        self._decode_jpeg, self._rgb = decode_jpeg, ImageReadMode.RGB

    def _decode(self, raw: list[bytes]) -> list[torch.Tensor | None]:
        with warnings.catch_warnings():
            # torchvision 0.29+'s deprecation notice on every call; frombuffer's read-only notice (nvJPEG only reads)
            warnings.simplefilter("ignore")
            datas = [torch.frombuffer(r, dtype=torch.uint8) for r in raw]
            try:
                return list(self._decode_jpeg(datas, mode=self._rgb, device=self.device))
            except RuntimeError:  # one bad file fails the whole batch: decode one by one, Pillow as a fallback
                out = []
                for d in datas:
                    try:
                        out.append(self._decode_jpeg(d, mode=self._rgb, device=self.device))
                    except RuntimeError:
                        out.append(None)
                return out

    def __call__(self, items: Sequence[EncodedImage]) -> torch.Tensor:
        from PIL import Image
        crop = self.preset.crop
        out = torch.empty((len(items), crop, crop, 3), dtype=torch.uint8, device=self.device).permute(0, 3, 1, 2)
        jpegs = [i for i, it in enumerate(items) if it.data is not None]
        decoded = self._decode([items[i].data for i in jpegs]) if jpegs else []
        done, images = [], []
        for i, img in zip(jpegs, decoded):
            if img is None:  # nvJPEG refused it: the exact Pillow pipeline, from the bytes in hand
                out[i] = self.transform.to_uint8(Image.open(io.BytesIO(items[i].data))).to(self.device)
                continue
            done.append(i)
            images.append(apply_exif_orientation(img, items[i].orientation).permute(1, 2, 0))  # (H, W, 3)
        for i, it in enumerate(items):
            if it.decoded is not None:
                out[i] = it.decoded.to(self.device, non_blocking=True)
        if images:
            shapes = [tuple(im.shape[:2]) for im in images]
            batch = ResizeBatch.from_parts(torch.cat([im.reshape(-1, 3) for im in images]), shapes,
                                           [crop_taps(h, w, self.preset) for h, w in shapes])
            out[torch.tensor(done, device=self.device)] = resize_crop(batch, self.device)
        return out
