"""GPU JPEG decoding for evaluation: the loader workers only read file bytes, the GPU decodes (nvJPEG) and resizes
(``--decode gpu``; :func:`cspnet.data.loader.input_path` chooses it). torchvision is needed for this path only.
"""

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
    """The dataset transform of the GPU input path: ``path -> EncodedImage`` (runs in the loader workers).

    A file Pillow cannot read raises :class:`~cspnet.errors.ImageError` here, in the worker, so ``--skip-bad``
    works as with the CPU path. Non-JPEG files, CMYK JPEGs and JPEGs over Pillow's pixel limit go through the exact
    Pillow pipeline instead (:func:`~cspnet.data.transforms.read_plain_jpeg`).
    """

    def __init__(self, preset: EvalPreset):
        self.transform = EvalTransform(preset)

    def __call__(self, path: str) -> EncodedImage:
        jpeg = read_plain_jpeg(path)
        if jpeg is not None:
            return EncodedImage(*jpeg, None)
        return EncodedImage(None, 1, self.transform.to_uint8(path))  # raises the precise ImageError, naming the file


def apply_exif_orientation(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """``(C, H, W)`` as stored -> as displayed, for EXIF orientation 1..8 (Pillow's ``ImageOps.exif_transpose``)."""
    ops = {
        1: lambda t: t,
        2: lambda t: t.flip(-1),
        3: lambda t: t.flip(-2, -1),
        4: lambda t: t.flip(-2),
        5: lambda t: t.transpose(-2, -1),
        6: lambda t: torch.rot90(t, -1, (-2, -1)),
        7: lambda t: t.transpose(-2, -1).flip(-2, -1),
        8: lambda t: torch.rot90(t, 1, (-2, -1)),
    }
    return ops[orientation](img)


class GpuJpegDecoder:
    """Decode a batch of :class:`EncodedImage` on ``device`` (nvJPEG via torchvision), then resize and crop it
    exactly as :class:`~cspnet.data.transforms.EvalTransform` does (:func:`cspnet.data.resample.resize_crop`):
    ``list[EncodedImage] -> uint8 (N, 3, crop, crop)`` (channels-last in memory).

    A JPEG nvJPEG rejects is decoded by Pillow instead. Not exact: nvJPEG's IDCT and chroma upsampling differ from
    libjpeg-turbo's by a few levels per pixel (the resize after it is Pillow's own); ``benchmarks/RESULTS.md``
    gives the measured differences and the top-1 agreement. torchvision is needed for this path only.
    """

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
            # torchvision 0.29+ flags its image I/O as deprecated on every call; frombuffer warns that bytes are
            # read-only (nvJPEG only reads them)
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
