"""Golden data from ../shared/data/golden (made with mmpretrain 1.2 and timm 1.0) and its weight recipe."""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

SHARED = Path(os.environ.get("CSPNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GOLDEN = SHARED / "data" / "golden"
DEMO = Path(__file__).resolve().parents[1] / "demo"
ARCH_NAMES = ("cspdarknet53", "cspresnet50", "cspresnext50")
# the golden preprocessed arrays' image names -> the demo files
IMAGES = {"bird": "bird.JPEG", "cat-dog": "cat-dog.png", "demo": "demo.JPEG", "dog": "dog.jpg"}
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def logits_meta() -> dict:
    return json.loads((GOLDEN / "logits" / "README.json").read_text())


def read_keys(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """``keys/<name>.keys.txt`` (mmpretrain) or ``keys/<arch>.timm.keys.txt`` as (key, shape) in order."""
    rows = []
    for line in (GOLDEN / "keys" / f"{name}.keys.txt").read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows


def recipe_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """The seeded timm-layout weights of ``logits/README.json``, built from the golden key list (no timm needed).
    A new dict each call (of tensors made once: do not change them in place)."""
    return dict(_recipe(arch))


@functools.lru_cache(maxsize=None)
def _recipe(arch: str) -> dict[str, torch.Tensor]:
    sd = {}
    for i, (key, shape) in enumerate(read_keys(f"{arch}.timm")):
        g = torch.Generator().manual_seed(i)
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean"):
            sd[key] = torch.randn(shape, generator=g) * 0.1
        elif key.endswith("bn.weight"):
            sd[key] = 1 + torch.randn(shape, generator=g) * 0.1
        elif key.endswith("bn.bias"):
            sd[key] = torch.randn(shape, generator=g) * 0.1
        elif key == "head.fc.bias":
            sd[key] = torch.zeros(shape)
        else:
            fan_in = math.prod(shape[1:])
            sd[key] = torch.randn(shape, generator=g) * math.sqrt(1 / fan_in)
    return sd


def preprocess_name(arch: str) -> str:
    return logits_meta()["models"][arch]["preprocess"]


def golden_uint8(image: str, pipeline: str) -> np.ndarray:
    """mmpretrain's own preprocessed RGB uint8 array ``(3, crop, crop)``."""
    return np.load(GOLDEN / "preprocess" / f"{image}.{pipeline}.npy")


def golden_inputs(arch: str) -> torch.Tensor:
    """The normalised golden batch ``(4, 3, crop, crop)`` for ``arch``, in the logits' image order."""
    pipe = preprocess_name(arch)
    x = torch.stack([torch.from_numpy(golden_uint8(im, pipe)).float() for im in logits_meta()["images"]])
    return (x - MEAN) / STD


def golden_logits(arch: str) -> torch.Tensor:
    return torch.from_numpy(np.load(GOLDEN / "logits" / f"{arch}.logits.npy"))
