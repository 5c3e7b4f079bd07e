"""The training augmentation of mmpretrain's configs, with randomness that survives resuming.

mmpretrain's ``RandomResizedCrop``, ``RandomFlip``, ``RandAugment`` and ``RandomErasing`` (a config's, read by
:func:`cspnet.config.train_pipeline` into a :class:`TrainPipeline`). :class:`TrainTransform` draws the same
distributions in the same order, but from a
generator seeded by ``(seed, epoch, sample index)`` instead of NumPy's global state, so an image's augmentation
depends on neither the loader worker nor where a run was interrupted: a resumed run sees the very pixels of an
uninterrupted one. :class:`TrainSampler` (a seeded shuffle per epoch that can skip what an interrupted epoch
consumed) and :class:`TrainSet` put it together."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from .mixing import RandomErasing
from .randaugment import RandAugment
from .transforms import IMAGENET_MEAN, IMAGENET_STD, RESAMPLING, ImageLike, load_image


@dataclass(frozen=True)
class TrainPipeline:
    """A config's training augmentation, mmpretrain's ``RandomResizedCrop`` then ``RandomFlip``. ``crop``: output
    side; ``scale``: range of the crop's area as a fraction of the image (``crop_ratio_range``); ``ratio``: range of
    its aspect ratio w/h (``aspect_ratio_range``); ``max_attempts``: tries before mmpretrain's fallback (a centre
    crop with the aspect ratio clamped to ``ratio``); ``interpolation``: Pillow filter; ``flip_prob``: probability
    of a horizontal flip; ``rand_augment``/``erasing``: RandAugment and random erasing, or None; ``mean``/``std``:
    RGB on 0-255, applied on the batch."""

    crop: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    max_attempts: int = 10
    interpolation: str = "bilinear"
    flip_prob: float = 0.0
    rand_augment: RandAugment | None = None
    erasing: RandomErasing | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def random_resized_crop_box(w: int, h: int, p: TrainPipeline, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """mmpretrain's ``RandomResizedCrop.rand_crop_params`` -> ``(left, top, width, height)`` of the crop."""
    log_ratio = (math.log(p.ratio[0]), math.log(p.ratio[1]))
    for _ in range(p.max_attempts):
        target_area = rng.uniform(*p.scale) * (h * w)
        aspect = math.exp(rng.uniform(*log_ratio))
        tw = int(round(math.sqrt(target_area * aspect)))
        th = int(round(math.sqrt(target_area / aspect)))
        if 0 < tw <= w and 0 < th <= h:
            top = int(rng.integers(0, h - th + 1))
            left = int(rng.integers(0, w - tw + 1))
            return left, top, tw, th
    # fallback: the largest central crop whose aspect ratio is inside the range
    in_ratio = w / h
    if in_ratio < min(p.ratio):
        tw, th = w, int(round(w / min(p.ratio)))
    elif in_ratio > max(p.ratio):
        tw, th = int(round(h * max(p.ratio))), h
    else:
        tw, th = w, h
    return (w - tw) // 2, (h - th) // 2, tw, th


class TrainTransform:
    """Training augmentation: image -> uint8 RGB tensor ``(3, crop, crop)``; normalise the batch on the device
    with the eval transform's ``normalize`` (same mean/std, as mmpretrain's single ``data_preprocessor``)."""

    def __init__(self, pipeline: TrainPipeline):
        self.pipeline = pipeline

    def __repr__(self) -> str:
        return f"TrainTransform({self.pipeline})"

    def __call__(self, image: ImageLike, rng: np.random.Generator) -> torch.Tensor:
        p = self.pipeline
        img = load_image(image)
        left, top, tw, th = random_resized_crop_box(img.width, img.height, p, rng)
        # crop then resize, as mmcv.imcrop + mmcv.imresize(backend='pillow')
        img = img.crop((left, top, left + tw, top + th)).resize((p.crop, p.crop), RESAMPLING[p.interpolation])
        if rng.random() < p.flip_prob:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if p.rand_augment is not None:
            img = p.rand_augment(img, rng)
        pixels = np.asarray(img, dtype=np.uint8)
        if p.erasing is not None:
            pixels = p.erasing(pixels, rng)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation in one epoch (independent streams via NumPy's SeedSequence)."""
    return np.random.default_rng((seed, epoch, index))


class TrainSampler(torch.utils.data.Sampler):
    """This rank's share of a seeded shuffle of ``range(size)``, as ``(index, epoch)`` pairs: a function of ``(seed,
    epoch)`` (torch's ``DistributedSampler`` recipe: one permutation, padded to a multiple of the world size, then
    every ``world``-th item). :meth:`set_epoch`'s ``skip`` (items already consumed) continues an interrupted epoch."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.size, self.seed, self.rank, self.world, self.shuffle = size, seed, rank, world, shuffle
        self.per_rank = math.ceil(size / world)
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch) if self.shuffle else None
        order = torch.randperm(self.size, generator=g).tolist() if self.shuffle else list(range(self.size))
        order += order[: self.per_rank * self.world - self.size]
        return iter([(i, self.epoch) for i in order[self.rank :: self.world][self.skip :]])

    def __len__(self) -> int:
        return self.per_rank - self.skip


class TrainSet(torch.utils.data.Dataset):
    """``dataset[(index, epoch)]`` -> ``(uint8 image (3, crop, crop), label)`` with that epoch's augmentation."""

    def __init__(self, samples, transform, seed: int):
        self.samples, self.transform, self.seed = samples, transform, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        path, label = self.samples[index]
        return self.transform(path, sample_rng(self.seed, epoch, index)), label
