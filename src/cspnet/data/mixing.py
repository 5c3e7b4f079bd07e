"""mmpretrain's batch mixing (``RandomBatchAugment`` over ``Mixup``/``CutMix``) and its ``RandomErasing``, with every random draw taken from a NumPy generator the caller passes in.

mmpretrain draws from NumPy's global state and ``torch.randperm``; here the trainer seeds one generator per
optimizer step (:class:`BatchMix`) or per sample (:class:`RandomErasing`, as :mod:`.train_transforms`), so a
resumed run mixes and erases exactly as an uninterrupted one. The distributions and the order of the draws are
mmpretrain's; the numbers differ, as they come from another generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

_MIXES = ("Mixup", "CutMix")


@dataclass(frozen=True)
class BatchMix:
    """mmpretrain's ``RandomBatchAugment`` (``model.train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8),
    dict(type='CutMix', alpha=1.0)], probs=...)``). ``augments``: ``(type, alpha)`` pairs, type ``'Mixup'`` or
    ``'CutMix'`` (mmpretrain's ``cutmix_minmax=None, correct_lam=True``); ``probs``: the probability of each, None
    for equal ones; when they sum to less than 1, the rest is the probability of no mixing.

    Draws from ``generator``, in order (mmpretrain's order):

    1. ``generator.choice(len(p), p=p)``: which augment, or none (``p``: ``probs`` plus the no-mixing share);
       always drawn, even with a single augment. No mixing ends here.
    2. ``generator.beta(alpha, alpha)``: ``lam``.
    3. ``generator.permutation(N)``: the partner of each sample.
    4. CutMix only: ``generator.integers(0, H)`` then ``generator.integers(0, W)``, the box centre ``(cy, cx)``.
    """

    augments: tuple[tuple[str, float], ...]
    probs: tuple[float, ...] | None = None

    def __post_init__(self):
        if not self.augments:
            raise ConfigError("train_cfg.augments: empty; give at least one (type, alpha)")
        for kind, alpha in self.augments:
            if kind not in _MIXES:
                raise ConfigError(f"train_cfg.augments: unknown type {kind!r}; expected one of {_MIXES}")
            if not alpha > 0:
                raise ConfigError(f"train_cfg.augments: {kind} alpha must be > 0, got {alpha}")
        if self.probs is not None:
            if len(self.probs) != len(self.augments):
                raise ConfigError(f"train_cfg.probs: {len(self.probs)} values for {len(self.augments)} augments")
            if any(p < 0 for p in self.probs):
                raise ConfigError(f"train_cfg.probs: negative probability in {self.probs}")
            if sum(self.probs) > 1 + 1e-6:
                raise ConfigError(f"train_cfg.probs: they sum to {sum(self.probs)} > 1")

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, generator: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images ``(N, C, H, W)`` (normalised), int64 labels ``(N,)`` -> mixed images ``(N, C, H, W)`` (a
        new tensor, or ``images`` itself when not mixed; never written) and float32 soft targets
        ``(N, num_classes)``, rows summing to 1."""
        targets = F.one_hot(labels, num_classes).float()
        n = len(self.augments)
        if self.probs is None:
            p = [1 / n] * n
        else:
            p = [*self.probs, max(0.0, 1 - sum(self.probs))]  # the last entry: no mixing
        choice = int(generator.choice(len(p), p=np.asarray(p) / sum(p)))
        if choice == n:
            return images, targets
        kind, alpha = self.augments[choice]
        lam = float(generator.beta(alpha, alpha))
        perm = torch.from_numpy(generator.permutation(images.shape[0])).to(images.device)
        if kind == "Mixup":
            mixed = lam * images + (1 - lam) * images[perm]
        else:
            (y1, y2, x1, x2), lam = cutmix_box(images.shape[-2], images.shape[-1], lam, generator)
            mixed = images.clone()
            mixed[:, :, y1:y2, x1:x2] = images[perm, :, y1:y2, x1:x2]
        return mixed, lam * targets + (1 - lam) * targets[perm.to(targets.device)]


def cutmix_box(h: int, w: int, lam: float, generator: np.random.Generator) -> tuple[tuple[int, int, int, int], float]:
    """mmpretrain's ``CutMix.cutmix_bbox_and_lam`` (no margin, ``correct_lam=True``) -> ``((y1, y2, x1, x2), lam)``:
    a box of about ``sqrt(1 - lam)`` of each side around a uniform centre, clipped to the image, and ``lam``
    recomputed from the clipped box's area."""
    ratio = math.sqrt(1 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy, cx = int(generator.integers(0, h)), int(generator.integers(0, w))
    # half-sides floored on each side, as mmpretrain: the box is 2 * (cut // 2) long before clipping
    y1, y2 = min(max(cy - cut_h // 2, 0), h), min(max(cy + cut_h // 2, 0), h)
    x1, x2 = min(max(cx - cut_w // 2, 0), w), min(max(cx + cut_w // 2, 0), w)
    return (y1, y2, x1, x2), 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)


@dataclass(frozen=True)
class RandomErasing:
    """mmpretrain's ``RandomErasing`` on a uint8 ``(H, W, 3)`` image. With probability ``erase_prob``, one box of
    area ``uniform(min_area_ratio, max_area_ratio) * H * W`` and log-uniform aspect (h/w) in ``aspect_range``
    (sides clamped to the image) is filled: ``mode='const'`` with ``fill_color``; ``mode='rand'`` per pixel with
    ``normal(fill_color, fill_std)`` (truncated to int, clipped to 0-255), or uniform on 0-255 if ``fill_std`` is
    None. ``fill_color``/``fill_std`` are RGB, the order of our images; mmpretrain's configs give them in BGR
    (``bgr_mean``), the order of its cv2 images, so reverse them when taking them from such a config.

    Draws from ``rng``, in order (mmpretrain's; there is no retry loop, unlike timm's): ``rng.random()`` (erase
    when ``<= erase_prob``), then ``uniform`` for the log-aspect, ``uniform`` for the area, ``integers(0, H - h)``
    for the top and ``integers(0, W - w)`` for the left (each only when the box is smaller than the image; the upper
    bound is exclusive, as ``np.random.randint``), then the fill (``rand`` mode only).
    """

    erase_prob: float = 0.5
    min_area_ratio: float = 0.02
    max_area_ratio: float = 0.4
    aspect_range: tuple[float, float] = (3 / 10, 10 / 3)
    mode: str = "const"
    fill_color: tuple[float, float, float] = (128, 128, 128)
    fill_std: tuple[float, float, float] | None = None

    def __post_init__(self):
        if not 0 <= self.erase_prob <= 1:
            raise ConfigError(f"RandomErasing.erase_prob: expected 0-1, got {self.erase_prob}")
        if not 0 <= self.min_area_ratio <= self.max_area_ratio <= 1:
            raise ConfigError(
                f"RandomErasing.min_area_ratio/max_area_ratio: expected 0 <= min <= max <= 1, got "
                f"{self.min_area_ratio}, {self.max_area_ratio}"
            )
        if len(self.aspect_range) != 2 or not 0 < self.aspect_range[0] <= self.aspect_range[1]:
            raise ConfigError(f"RandomErasing.aspect_range: expected (min, max) with 0 < min <= max, got "
                              f"{self.aspect_range}")
        if self.mode not in ("const", "rand"):
            raise ConfigError(f"RandomErasing.mode: expected 'const' or 'rand', got {self.mode!r}")
        if len(self.fill_color) != 3 or not all(0 <= c <= 255 for c in self.fill_color):
            raise ConfigError(f"RandomErasing.fill_color: expected 3 values in 0-255, got {self.fill_color}")
        if self.fill_std is not None and (len(self.fill_std) != 3 or any(s < 0 for s in self.fill_std)):
            raise ConfigError(f"RandomErasing.fill_std: expected None or 3 values >= 0, got {self.fill_std}")

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 ``(H, W, 3)`` -> uint8 ``(H, W, 3)``: a new array when erased (``image`` itself is never written,
        as it may be a read-only view of a decoded file), else ``image``."""
        if rng.random() > self.erase_prob:
            return image
        img_h, img_w = image.shape[:2]
        # float32 log bounds, as mmpretrain, so the same draws give the same box
        log_aspect = np.log(np.asarray(self.aspect_range, dtype=np.float32))
        aspect = np.exp(rng.uniform(*log_aspect))
        area = img_h * img_w * rng.uniform(self.min_area_ratio, self.max_area_ratio)
        h = min(int(round(np.sqrt(area * aspect))), img_h)
        w = min(int(round(np.sqrt(area / aspect))), img_w)
        top = int(rng.integers(0, img_h - h)) if img_h > h else 0
        left = int(rng.integers(0, img_w - w)) if img_w > w else 0
        if self.mode == "const":
            patch = np.asarray(self.fill_color).astype(np.uint8)  # truncated, as mmpretrain's uint8 cast
        elif self.fill_std is None:
            patch = rng.uniform(0, 256, (h, w, 3)).astype(np.uint8)
        else:
            patch = np.clip(rng.normal(self.fill_color, self.fill_std, (h, w, 3)).astype(np.int32), 0, 255)
        out = image.copy()
        out[top : top + h, left : left + w] = patch
        return out
