"""Data loaders for evaluation and prediction (:func:`build_eval_loader`: every image once, in order, across
processes, a bad image reported instead of killing a worker), and :func:`input_path`, the one place that decides
where the exact eval preprocessing runs (Pillow in the workers; decode there, resize on the device; or nvJPEG)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ImageError, InvalidOptionError
from .resample import FILTERS, DecodedImage, DeviceResize, check_device_resize, crop_source, crop_taps
from .transforms import EvalPreset, EvalTransform, ImageLike, _libjpeg_decoder, is_extreme_aspect, load_rgb_array


class DecodeForResize:
    """The loader workers' half of the resize-on-device path: ``image -> DecodedImage``, decoded by
    :func:`~cspnet.data.transforms.load_rgb_array` (``load_image``'s pixels; an unreadable file raises
    :class:`~cspnet.errors.ImageError` naming it, so ``--skip-bad`` works). An image of extreme aspect ratio
    (:func:`~cspnet.data.transforms.is_extreme_aspect`) is handed over as the part its crop reads
    (:func:`~cspnet.data.resample.crop_source`)."""

    def __init__(self, preset: EvalPreset):
        check_device_resize(preset)
        self.preset = preset
        _libjpeg_decoder()  # import and check torchvision's decoder once here, so forked loader workers inherit it

    def __call__(self, image: ImageLike) -> DecodedImage:
        pixels = load_rgb_array(image)
        taps = crop_taps(pixels.shape[0], pixels.shape[1], self.preset)
        if is_extreme_aspect(pixels.shape[0], pixels.shape[1], self.preset.resize):
            pixels, taps = crop_source(pixels, taps)  # a normal image goes whole, as before: its crop reads most of it
        return DecodedImage(pixels, taps)


class Indexed(Dataset):
    """``dataset[i]`` -> ``(i, image or None, label, error message or None)``: a bad image does not kill a worker."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        try:
            image, label = self.dataset[index]
            return index, image, int(label), None
        except ImageError as e:
            samples = getattr(self.dataset, "samples", None)
            label = samples[index][1] if samples is not None else -1
            return index, None, int(label), str(e)


def collate_indexed(batch: Sequence[tuple[int, Any, int, str | None]]):
    """Stack the readable images: ``(indices, images, labels, bad)``; ``indices``/``labels`` of the readable images
    only, ``images`` uint8 ``(n, 3, H, W)`` (or what the items' ``collate`` makes of them; ``None`` when none could be
    read), ``bad`` ``(index, error message)`` of the others."""
    good = [b for b in batch if b[3] is None]
    bad = [(b[0], b[3]) for b in batch if b[3] is not None]
    images = None
    if good:
        # uint8 crops are stacked; items with a ``collate`` of their own (decoded images for the resize on the
        # device, cspnet.data.resample) pack themselves; others (encoded JPEGs for nvJPEG, .gpu_decode) stay a list
        items = [b[1] for b in good]
        pack = getattr(type(items[0]), "collate", None)
        images = torch.stack(items) if isinstance(items[0], torch.Tensor) else pack(items) if pack else items
    indices, labels = (torch.tensor([b[i] for b in good], dtype=torch.long) for i in (0, 2))
    return indices, images, labels, bad


def worker_count(wanted: int | None = None) -> int:
    """Loader processes for this process: ``wanted`` (default: all), at most its share of the CPU cores (the
    processes of a machine under torchrun share them). More workers than cores only queue."""
    if wanted is not None and wanted < 0:
        raise InvalidOptionError(f"num_workers must be 0 or more, got {wanted}")
    share = max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    return share if wanted is None else min(wanted, share)


def build_eval_loader(dataset: Dataset, batch_size: int = 32, num_workers: int | None = None, rank: int = 0,
                      world_size: int = 1, pin_memory: bool | None = None, persistent_workers: bool = False,
                      prefetch_factor: int | None = None) -> DataLoader:
    """A loader for :func:`cspnet.engine.evaluate.evaluate`: rank ``rank``'s unpadded shard of ``world_size``, in
    order, batches of :func:`collate_indexed`. ``dataset[i]`` must return ``(uint8 tensor (3, H, W), label)``.
    ``num_workers``: see :func:`worker_count` (by default one per core: Pillow decodes and resizes ~200 ImageNet
    JPEGs/s per core, so fewer workers starve a GPU). ``pin_memory`` defaults to whether CUDA is available."""
    if batch_size < 1:
        raise InvalidOptionError(f"batch_size must be at least 1, got {batch_size}")
    workers = worker_count(num_workers)
    return DataLoader(
        Indexed(dataset), batch_size=batch_size, num_workers=workers, collate_fn=collate_indexed,
        # rank r of W takes r, r + W, r + 2W, ...: every index once, in order, no padding (a padded sampler would
        # count some images twice: pytorch/pytorch#25162)
        sampler=range(rank, len(dataset), world_size),  # type: ignore[arg-type]
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=persistent_workers and workers > 0, prefetch_factor=prefetch_factor if workers > 0 else None,
    )


class ImageList(Dataset):
    """``images[i]`` (paths, PIL images or arrays) -> ``(read(image), -1)``, for :func:`build_eval_loader`."""

    def __init__(self, images: Sequence[Any], read: Callable[[Any], Any]):
        self.images, self.read = list(images), read

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.read(self.images[i]), -1


@dataclass(frozen=True)
class InputPath:
    """Where the exact eval preprocessing runs: ``read`` in the loader workers (image -> loader item), then
    ``on_device`` on each batch (None: the batch is already the uint8 crops); ``describe`` says which, for logs."""

    read: Callable[[Any], Any]
    on_device: Callable[[Any], torch.Tensor] | None
    describe: str


def input_path(preset: EvalPreset, device: torch.device | str, resize: str = "auto", decode: str = "cpu") -> InputPath:
    """The input path for ``preset`` on ``device``. ``resize``: ``'loader'`` (all of it in the workers),
    ``'device'`` (the workers decode, the device resizes and crops: the same pixels, bit for bit), ``'auto'``
    (``'device'`` on CUDA when the preset's filter is implemented there). ``decode='gpu'``: nvJPEG on the GPU, then
    the exact resize there (not bit-exact: nvJPEG's IDCT differs; needs torchvision and CUDA)."""
    device = torch.device(device)
    if resize not in ("auto", "loader", "device") or decode not in ("cpu", "gpu"):
        raise InvalidOptionError(f"resize={resize!r}, decode={decode!r}: use resize 'auto', 'loader' or 'device' "
                                 f"and decode 'cpu' or 'gpu'")
    if decode == "gpu":
        from .gpu_decode import GpuJpegDecoder, JpegReader
        if device.type != "cuda":
            raise InvalidOptionError(f"--decode gpu needs a CUDA device; this run is on {device}")
        if resize == "loader":
            raise InvalidOptionError("--decode gpu decodes on the GPU, so it resizes there too: drop --resize loader")
        return InputPath(JpegReader(preset), GpuJpegDecoder(preset, device), "nvJPEG decode and exact resize on the GPU")
    if resize == "device" or (resize == "auto" and device.type == "cuda" and preset.interpolation in FILTERS):
        return InputPath(DecodeForResize(preset), DeviceResize(device),
                         f"Pillow decode in the loader, exact resize on {device.type}")
    return InputPath(EvalTransform(preset).to_uint8, None, "Pillow decode and resize in the loader")
