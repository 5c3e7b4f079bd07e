"""Eval preprocessing as data: :class:`EvalPreset` (no torch, no Pillow: weight records and specs use it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

# ImageNet statistics on the 0-255 scale, as mmpretrain's data_preprocessor (timm's 0-1 values times 255).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")  # Pillow's filters of these names
# The largest image side a preset (or a training crop, or an export) may ask for. The published presets are 224-288;
# a bound here bounds every resize's work and memory, whatever a config or a checkpoint's spec says.
MAX_SIDE = 4096
TIMM_DEFAULT_CROP_PCT = 0.875  # timm.data.DEFAULT_CROP_PCT: its eval transform's crop_pct when a config has none


@dataclass(frozen=True)
class EvalPreset:
    """The eval preprocessing of one checkpoint, as explicit integers (no crop_pct floats to floor). ``resize``: the
    short edge after resizing (the long edge is ``int(resize * long / short)``, truncated, as mmpretrain's
    ``ResizeEdge``); ``crop``: the centre-crop side; ``interpolation``: Pillow filter; ``mean``/``std``: per RGB
    channel on the 0-255 scale."""

    resize: int
    crop: int
    # mmpretrain's CSP configs resize with Pillow *bicubic*; timm's pretrained cfg says bilinear. The published
    # 80.05/79.55/79.96 were measured with bicubic, so that is the default here.
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={self.interpolation!r}; choose from {list(INTERPOLATIONS)}")
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"crop={self.crop} must be positive and at most resize={self.resize}")
        if self.resize > MAX_SIDE:
            raise ValueError(f"resize={self.resize} is over {MAX_SIDE} pixels, far beyond any eval preset")

    def with_crop_pct(self, crop_pct: float | None = None, interpolation: str | None = None,
                      crop: int | None = None) -> "EvalPreset":
        """This preset as timm's eval transform makes it: the short edge resized to ``floor(crop / crop_pct)`` (timm's
        ``crop_pct``; its published CSPNet figures use 0.887 at 256, so 288), centre-cropped to ``crop`` (timm's
        ``input_size`` side; default: this preset's crop, which for the CSPResNeXt preset is 224, not timm's 256);
        ``interpolation`` (timm's: bilinear) replaces the filter. torchvision's ``Resize``/``CenterCrop`` on a PIL
        image truncate and round as mmpretrain's steps do, so these are timm's pixels
        (``tests/test_timm_preprocess.py``)."""
        if crop_pct is not None and not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct={crop_pct}: expected a fraction in (0, 1]")
        crop = self.crop if crop is None else crop
        resize = math.floor(crop / crop_pct) if crop_pct is not None else self.resize
        return replace(self, resize=resize, crop=crop, interpolation=interpolation or self.interpolation)

    @classmethod
    def from_timm(cls, data_config: Mapping[str, Any]) -> "EvalPreset":
        """timm's eval transform as a preset: ``data_config`` is what ``timm.data.resolve_data_config`` returns
        (``input_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``, ``crop_mode``; mean/std on timm's 0-1
        scale), for the transform ``timm.data.create_transform(**data_config)`` builds.

        Raises:
            ValueError: naming the field, for what timm's transform does and a preset cannot: a non-square
                ``input_size``, a ``crop_mode`` other than ``'center'`` (squash, border), a filter outside
                :data:`INTERPOLATIONS`, a ``crop_pct`` above 1 (timm would pad the crop).
        """
        size = tuple(data_config["input_size"])
        if len(size) != 3 or size[1] != size[2]:
            raise ValueError(f"input_size={size}: only square (3, S, S) inputs have a centre-crop preset")
        mode = data_config.get("crop_mode", "center")
        if mode != "center":
            raise ValueError(f"crop_mode={mode!r}: only timm's 'center' crop has a preset")
        # 0-1 -> 0-255; rounded so that 0.224 * 255 gives IMAGENET_STD's 57.12, not 57.120000000000005 (one float32)
        mean, std = (tuple(round(v * 255, 6) for v in data_config[k]) for k in ("mean", "std"))
        crop_pct = data_config.get("crop_pct") or TIMM_DEFAULT_CROP_PCT  # as timm's transforms_imagenet_eval
        return cls(size[1], size[1], data_config["interpolation"], mean, std).with_crop_pct(crop_pct)

    def describe(self) -> str:
        return f"RGB, Pillow {self.interpolation} short edge {self.resize}, centre crop {self.crop}, mean/std on 0-255"


def short_edge_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """mmpretrain ``ResizeEdge(edge='short')``'s output ``(height, width)``: short edge ``size``, long edge
    ``int(size * long / short)`` (truncated)."""
    return (int(size * height / width), size) if width < height else (size, int(size * width / height))


def crop_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """mmcv ``CenterCrop``'s ``(top, left)``: ``round((H - size) / 2)`` with Python's round-half-to-even."""
    return max(0, int(round((height - size) / 2.0))), max(0, int(round((width - size) / 2.0)))
