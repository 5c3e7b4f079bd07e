"""ImageNet-1k class names and WordNet synset ids, in the standard index order (0 = tench, n01440764)."""

from __future__ import annotations

import functools
from importlib import resources


@functools.lru_cache(maxsize=None)
def _read(name: str) -> tuple[str, ...]:
    lines = resources.files(__package__).joinpath(name).read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def imagenet_classes() -> tuple[str, ...]:
    """The 1000 class names, e.g. ``'tench, Tinca tinca'`` (mmpretrain's ``IMAGENET_CATEGORIES``)."""
    return _read("imagenet1k_classes.txt")


def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 WordNet ids, e.g. ``'n01440764'``, in the same order (the ILSVRC2012 folder names, sorted)."""
    return _read("imagenet1k_synsets.txt")
