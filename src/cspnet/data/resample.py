"""Pillow's resize, bit for bit, in integer tensor ops on any device, for a batch of images of different sizes.

Why: in the exact eval pipeline the resize costs about three quarters of a CPU core's time per ImageNet image and
the decode a quarter (``benchmarks/RESULTS.md``); resizing on the GPU lets the same loader workers feed about twice
as many images per second, with no result changed. This is Pillow's own algorithm (``Resample.c``: weights computed
in double precision, quantised to 22-bit fixed point; two passes in Pillow's order, each rounded and clipped to 8
bits), not ``torch.nn.functional.interpolate``, whose float weights differ from Pillow's by a grey level here and
there (``tests/test_resample.py`` checks equality). Only the pixels inside the centre crop are computed, from the
taps of the crop's window alone, so an image of extreme aspect ratio costs what its crop costs
(:func:`resize_crop_window`, which the loader path uses for such images too).

Flow: a loader worker runs :class:`~cspnet.data.loader.DecodeForResize` (``path -> DecodedImage``: pixels and their crop's taps);
``collate`` packs a batch into one :class:`ResizeBatch` (one shared-memory buffer, crossing from the worker in one
piece); :class:`DeviceResize` resizes and crops it on the device."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import numpy as np
import torch

from ..errors import InvalidOptionError
from .presets import EvalPreset, crop_offsets, short_edge_shape

__all__ = ["check_device_resize", "pillow_taps", "crop_taps", "crop_source", "DecodedImage", "ResizeBatch",
           "DeviceResize", "resize_crop", "resize_crop_window"]

# Resample.c: 8-bit pixels times 22-bit weights fit a 32-bit int, with 2 bits for sign and overshoot
PRECISION_BITS = 32 - 8 - 2


# The filters exactly as Resample.c writes them (same operations in the same order, so the same doubles).
def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5  # Pillow's (and mmcv's 'bicubic' with backend='pillow') Keys parameter; cv2 uses -0.75
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    return math.sin(x * math.pi) / (x * math.pi)  # the C library's sin, as Pillow's: NumPy's may differ in the last bit


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.array([_sinc(v) * _sinc(v / 3) if -3.0 <= v < 3.0 else 0.0 for v in x.ravel()]).reshape(x.shape)


FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0)}


def check_device_resize(preset: EvalPreset) -> None:
    """Raise :class:`~cspnet.errors.InvalidOptionError` for a preset whose filter is not implemented here."""
    if preset.interpolation not in FILTERS:
        raise InvalidOptionError(f"resizing on the device (--resize device, --decode gpu) supports {sorted(FILTERS)} "
                                 f"interpolation, not {preset.interpolation!r}: resize in the loader workers instead "
                                 "(--resize loader --decode cpu)")


def pillow_taps(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's weights for resizing one axis from ``in_size`` to ``out_size`` pixels (``precompute_coeffs`` and
    ``normalize_coeffs_8bpc``). Returns ``start`` int64 ``(out_size,)``: the first source pixel of each output pixel,
    and ``weights`` int32 ``(out_size, K)``: its fixed-point weights for source pixels ``start .. start + K - 1``
    (zero past the image's edge). ``K`` is Pillow's ``ksize`` for this scale. Read-only (cached)."""
    return window_taps(in_size, out_size, interpolation, 0, out_size)


@functools.lru_cache(maxsize=1024)  # ImageNet's common edges (500, 375, 333, ...) stay; ~15 MB at most per worker
def window_taps(in_size: int, out_size: int, interpolation: str, first: int, n: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pillow_taps` of output pixels ``first .. first + n - 1`` only: ``start`` ``(n,)``, ``weights``
    ``(n, K)``, the very values (each output pixel's weights depend on its own index alone), at the cost of ``n``
    pixels however large ``out_size`` is (28,800,000 for a 1 x 100000 image's long edge at 288)."""
    filt, base_support = FILTERS[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)  # shrinking widens the filter (antialiasing); enlarging does not narrow it
    support = base_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(first, first + n) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)  # C's (int) cast truncates
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    w = filt(((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(taps[None, :] < count[:, None], w, 0.0)
    total = np.zeros(n)
    for i in range(ksize):  # summed left to right, as the C loop does (NumPy's sum is pairwise)
        total = total + w[:, i]
    w = np.where(total[:, None] != 0.0, w / np.where(total == 0.0, 1.0, total)[:, None], w)
    fixed = w * (1 << PRECISION_BITS)
    weights = np.trunc(np.where(w < 0, -0.5 + fixed, 0.5 + fixed)).astype(np.int32)  # rounds half away from 0
    xmin.setflags(write=False)
    weights.setflags(write=False)
    return xmin, weights


@functools.lru_cache(maxsize=None)  # asked once per image
def _pillow_major() -> int:
    import PIL
    return int(PIL.__version__.split(".")[0])


def pillow_vertical_first(height: int, width: int, new_height: int, new_width: int) -> bool:
    """Whether Pillow resizes ``height x width`` to ``new_height x new_width`` vertical pass first: Pillow 13
    (python-pillow/Pillow#9549) does when the height loses more than twice as many pixels as the width, older Pillow
    never. The order changes the rounding between the passes, so the installed Pillow's is followed: the device path
    then equals the loader path on the same machine."""
    shrink = height - new_height
    return _pillow_major() >= 13 and shrink > 0 and shrink > 2 * (width - new_width)


class CropTaps(NamedTuple):
    """The taps of an image's centre-crop window: rows (``v_*``) and columns (``h_*``), each ``start`` int64
    ``(crop,)`` and ``weights`` int32 ``(crop, K)``; and the order of the two passes."""

    v_start: np.ndarray
    v_weights: np.ndarray
    h_start: np.ndarray
    h_weights: np.ndarray
    vertical_first: bool


def crop_taps(height: int, width: int, preset: EvalPreset) -> CropTaps:
    """The taps that :class:`~cspnet.data.transforms.EvalTransform`'s resize + centre crop applies to an image of
    ``height x width``: the same output size and crop window, by the same arithmetic."""
    nh, nw = short_edge_shape(height, width, preset.resize)
    top, left = crop_offsets(nh, nw, preset.crop)  # crop <= resize <= min(nh, nw): the window is crop x crop
    vs, vw = window_taps(height, nh, preset.interpolation, top, preset.crop)
    hs, hw = window_taps(width, nw, preset.interpolation, left, preset.crop)
    return CropTaps(vs, vw, hs, hw, pillow_vertical_first(height, width, nh, nw))


def crop_source(pixels: np.ndarray, taps: CropTaps) -> tuple[np.ndarray, CropTaps]:
    """The part of ``pixels`` ``(H, W, 3)`` that the crop reads, and ``taps`` shifted to it: the same output from
    fewer pixels. A source pixel counts only if its row is among the vertical taps and its column among the
    horizontal ones, whichever pass runs first; an enlarged axis needs a few source lines, not all of them (a
    100000 x 1 image at short edge 288 reads 5 of its rows)."""
    (r0, r1), (c0, c1) = ((int(start[0]), min(size, int(start[-1]) + weights.shape[1]))
                          for start, weights, size in ((taps.v_start, taps.v_weights, pixels.shape[0]),
                                                       (taps.h_start, taps.h_weights, pixels.shape[1])))
    shifted = taps._replace(v_start=taps.v_start - r0, h_start=taps.h_start - c0)
    return pixels[r0:r1, c0:c1], shifted


class DecodedImage(NamedTuple):
    """One image as a loader worker hands it over: decoded RGB pixels ``(H, W, 3)`` uint8 and its crop's taps."""

    pixels: np.ndarray
    taps: CropTaps

    @staticmethod
    def collate(items: Sequence["DecodedImage"]) -> "ResizeBatch":
        return ResizeBatch.pack(items)


def _pad_stack(arrays: Sequence[np.ndarray], k: int) -> torch.Tensor:
    """``(crop, K_i)`` int32 arrays -> ``(N, crop, k)``, zero weights in the padding."""
    out = np.zeros((len(arrays), arrays[0].shape[0], k), dtype=np.int32)
    for i, a in enumerate(arrays):
        out[i, :, : a.shape[1]] = a
    return torch.from_numpy(out)


def _shared_uint8(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor; in a loader worker, in shared memory from the start, so that sending it to the
    main process does not copy it once more (as ``default_collate`` does for its stacked batches)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)  # what default_collate uses; private
    if new_shared is None:
        return torch.empty(shape, dtype=torch.uint8).share_memory_()
    return torch.empty(0, dtype=torch.uint8).set_(new_shared(math.prod(shape))).view(shape)


class ResizeBatch(NamedTuple):
    """A batch of decoded images of any sizes, packed for :func:`resize_crop` (all tensors, so the DataLoader pins
    them all): ``pixels`` uint8 ``(sum of H*W, 3)``, the images' rows one after another; ``sizes`` int64 ``(N, 2)``
    ``(H, W)``; ``v_start``/``h_start`` int64 ``(N, crop)``, ``v_weights``/``h_weights`` int32 ``(N, crop, K)``:
    the :class:`CropTaps` padded to one ``K``; ``v_taps``/``h_taps`` int64 ``(N,)``: each image's own ``K``;
    ``vertical_first`` bool ``(N,)``."""

    pixels: torch.Tensor
    sizes: torch.Tensor
    v_start: torch.Tensor
    v_weights: torch.Tensor
    v_taps: torch.Tensor
    h_start: torch.Tensor
    h_weights: torch.Tensor
    h_taps: torch.Tensor
    vertical_first: torch.Tensor

    @classmethod
    def pack(cls, items: Sequence[DecodedImage]) -> "ResizeBatch":
        """Loader workers' images -> one batch (the pixels in one buffer, in shared memory in a worker)."""
        shapes = [it.pixels.shape[:2] for it in items]
        pixels = _shared_uint8((sum(h * w for h, w in shapes), 3))
        np.concatenate([it.pixels.reshape(-1, 3) for it in items], out=pixels.numpy())
        return cls.from_parts(pixels, shapes, [it.taps for it in items])

    @classmethod
    def from_parts(cls, pixels: torch.Tensor, shapes: Sequence[tuple[int, int]], taps: Sequence[CropTaps]
                   ) -> "ResizeBatch":
        """``pixels`` ``(sum of H*W, 3)`` uint8 (any device), each image's ``(H, W)`` and :class:`CropTaps`."""
        k = max(max(t.v_weights.shape[1], t.h_weights.shape[1]) for t in taps)
        return cls(pixels, torch.tensor([tuple(s) for s in shapes], dtype=torch.int64),
                   torch.from_numpy(np.stack([t.v_start for t in taps])), _pad_stack([t.v_weights for t in taps], k),
                   torch.tensor([t.v_weights.shape[1] for t in taps]),
                   torch.from_numpy(np.stack([t.h_start for t in taps])), _pad_stack([t.h_weights for t in taps], k),
                   torch.tensor([t.h_weights.shape[1] for t in taps]),
                   torch.tensor([t.vertical_first for t in taps], dtype=torch.bool))


def _accumulate(source: torch.Tensor, first: torch.Tensor, step: torch.Tensor | int, weights: torch.Tensor,
                owner: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """One pass: ``out[g, j] = clip8(sum_k source[first[g, j] + k * step[g]] * weights[owner[g], j, k])``.

    ``source`` ``(S, *pixel)`` uint8; ``first`` int64 ``(G, crop)``; ``step`` int64 ``(G,)`` or an int: the
    distance between a line's neighbouring pixels in ``source``; ``weights`` int32 ``(N, crop, K)`` per image and
    ``owner`` int64 ``(G,)`` the image of each line; ``taps`` ``(G,)`` (CPU) the taps each line needs, in
    decreasing order, so that tap ``k`` runs on the leading lines that have it only (one huge image in a batch
    does not widen every image's filter). Returns ``(G, crop, *pixel)`` uint8."""
    acc = torch.full((*first.shape, *source.shape[1:]), 1 << (PRECISION_BITS - 1), dtype=torch.int32,
                     device=source.device)
    shape = (-1, first.shape[1], *source.shape[1:])
    last = source.shape[0] - 1
    for k in range(int(taps[0]) if len(taps) else 0):
        g = int((taps > k).sum())  # lines with a k-th tap: a prefix, as taps is sorted
        offset = k * step[:g, None] if isinstance(step, torch.Tensor) else k * step
        # Past an image's last tap the weight is 0, but the index may run past the buffer's end: clamp it.
        src = source.index_select(0, (first[:g] + offset).clamp_(max=last).view(-1)).view(shape)
        w = weights[:, :, k].index_select(0, owner[:g]).view(g, first.shape[1], *([1] * (source.dim() - 1)))
        acc[:g] += src.to(torch.int32) * w
    return (acc >> PRECISION_BITS).clamp_(0, 255).to(torch.uint8)  # Resample.c's clip8 (acc began at half a unit)


def resize_crop(batch: ResizeBatch, device: torch.device | str) -> torch.Tensor:
    """A :class:`ResizeBatch` -> uint8 ``(N, 3, crop, crop)`` on ``device``, equal to :meth:`EvalTransform.to_uint8
    <cspnet.data.transforms.EvalTransform.to_uint8>` of each image: a channels-last (NHWC) view, as the fast model
    path reads it."""
    device = torch.device(device)
    to = functools.partial(torch.Tensor.to, device=device, non_blocking=True)
    heights, widths = batch.sizes[:, 0], batch.sizes[:, 1]
    first_pixel = torch.cumsum(heights * widths, 0) - heights * widths  # of each image in ``pixels``
    # Per image, the first pass runs along rows (horizontal first) or along columns (vertical first): a "line" is
    # a row or a column, its pixels 1 or W apart, consecutive lines W or 1 apart.
    vf = batch.vertical_first
    lines = torch.where(vf, widths, heights)
    line_stride, step = torch.where(vf, 1, widths), torch.where(vf, widths, 1)
    start1 = torch.where(vf[:, None], batch.v_start, batch.h_start)
    weights1 = torch.where(vf[:, None, None], batch.v_weights, batch.h_weights)
    taps1 = torch.where(vf, batch.v_taps, batch.h_taps)
    start2 = torch.where(vf[:, None], batch.h_start, batch.v_start)
    weights2 = torch.where(vf[:, None, None], batch.h_weights, batch.v_weights)
    taps2 = torch.where(vf, batch.h_taps, batch.v_taps)

    # First pass, over every line of every image (lines of images with more taps first), straight from the packed
    # pixels: line l of image i starts at pixel first_pixel[i] + l * line_stride[i].
    order1 = torch.argsort(taps1, descending=True, stable=True)
    line_counts = lines[order1]
    line_base = torch.empty_like(line_counts)
    line_base[order1] = torch.cumsum(line_counts, 0) - line_counts  # where image i's lines land in the output
    image_of_line = to(torch.repeat_interleave(order1, line_counts))
    line_in_image = torch.arange(int(line_counts.sum()), device=device) - to(
        torch.repeat_interleave(line_base[order1], line_counts))
    line_start = to(first_pixel)[image_of_line] + line_in_image * to(line_stride)[image_of_line]
    line_step = to(step)[image_of_line]
    first = line_start[:, None] + to(start1)[image_of_line] * line_step[:, None]
    pass1 = _accumulate(to(batch.pixels), first, line_step, to(weights1), image_of_line,
                        torch.repeat_interleave(taps1[order1], line_counts))  # (lines, crop, 3)

    # Second pass, per image (most taps first): each output line reads lines of the first pass's output.
    order2 = torch.argsort(taps2, descending=True, stable=True)
    dev_order2 = to(order2)
    first = to(line_base[order2])[:, None] + to(start2[order2])  # (N, crop)
    pass2 = _accumulate(pass1, first, 1, to(weights2), dev_order2, taps2[order2])  # (N, crop, crop, 3)
    out = torch.empty_like(pass2)
    out[dev_order2] = pass2  # back to the batch's order
    if bool(vf.any()):  # those images were resized column by column: their (x, y, 3) back to (y, x, 3)
        flipped = to(vf.nonzero()[:, 0])
        out[flipped] = out[flipped].transpose(1, 2)
    return out.permute(0, 3, 1, 2)


def resize_crop_window(pixels: np.ndarray, preset: EvalPreset) -> torch.Tensor:
    """:meth:`EvalTransform.to_uint8 <cspnet.data.transforms.EvalTransform.to_uint8>`'s resize and crop of one
    decoded image ``(H, W, 3)`` uint8 on the CPU -> uint8 ``(3, crop, crop)``, the same pixels, computing the crop
    alone: what it takes for an image of extreme aspect ratio, whose whole resized copy can need gigabytes."""
    if not pixels.size:
        raise ValueError(f"an image of shape {pixels.shape} has no pixels")
    part, taps = crop_source(pixels, crop_taps(pixels.shape[0], pixels.shape[1], preset))
    flat = torch.from_numpy(np.array(part, dtype=np.uint8).reshape(-1, 3))  # a copy: Pillow's arrays are read-only
    return resize_crop(ResizeBatch.from_parts(flat, [part.shape[:2]], [taps]), "cpu")[0]


class DeviceResize:
    """The device's half: ``ResizeBatch -> uint8 (N, 3, crop, crop)`` on ``device`` (:func:`resize_crop`); the
    ``decode`` argument of :func:`cspnet.engine.evaluate.evaluate`."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    def __call__(self, batch: ResizeBatch) -> torch.Tensor:
        return resize_crop(batch, self.device)
