"""RandAugment for training, on PIL images: timm's ``rand-m9-mstd0.5-inc1`` with every draw from a NumPy generator.

Ops, level-to-argument functions and PIL calls are timm 1.0's (``timm/data/auto_augment.py``); an op's argument is
a function of the magnitude ``m`` over timm's fixed denominator 10 (``Rotate`` 30 deg * m/10, ``Shear`` 0.3,
``TranslateRel`` 0.45 of the side, ``*Increasing`` enhance factor ``max(0.1, 1 +- 0.9 m/10)``, ...).
:func:`parse_timm` reads timm's config string, :func:`from_mmpretrain` mmpretrain's ``RandAugment`` arguments.

Draw order of :meth:`RandAugment.__call__` (a resumed run replays it from the same generator state):

1. ``rng.choice(len(ops), size=num_ops)``: the ops, with replacement, applied in that order;
2. per chosen op: ``rng.random()`` only if ``prob < 1`` (the op is skipped, with no further draws, unless it is
   ``< prob``); then, for every op (as timm, even those without an argument), ``rng.uniform(0, magnitude)`` if
   ``magnitude_std`` is inf, else ``rng.normal(magnitude, magnitude_std)`` if it is > 0, else nothing; then
   ``rng.random()`` for the sign of a signed op (negative if ``> 0.5``, as timm); then ``rng.integers(2)``
   (bilinear, bicubic) for a geometric op when ``interpolation='random'``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from numbers import Real

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from ..errors import ConfigError, ImageError

_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_ENHANCE = ("Color", "Contrast", "Brightness", "Sharpness")
RAND_TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", *_ENHANCE,
                   *_GEOMETRIC[1:])  # timm's _RAND_TRANSFORMS
RAND_INCREASING_TRANSFORMS = tuple(n + "Increasing" if n in ("Posterize", "Solarize", *_ENHANCE) else n
                                   for n in RAND_TRANSFORMS)  # timm's _RAND_INCREASING_TRANSFORMS
_SIGNED = {*_GEOMETRIC, *(n + "Increasing" for n in _ENHANCE)}
_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC}
_RANDOM_RESAMPLE = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)  # timm's _RANDOM_INTERPOLATION

# timm's level-to-arg functions before the random sign, float operations in timm's order so the results are equal
_LEVEL = {
    "Rotate": lambda m: (m / 10) * 30.0, "SolarizeAdd": lambda m: min(128, int((m / 10) * 110)),
    "Posterize": lambda m: int((m / 10) * 4), "PosterizeIncreasing": lambda m: 4 - int((m / 10) * 4),
    "Solarize": lambda m: min(256, int((m / 10) * 256)),
    "SolarizeIncreasing": lambda m: 256 - min(256, int((m / 10) * 256)),
    **{n: lambda m: (m / 10) * 1.8 + 0.1 for n in _ENHANCE},
    **{n + "Increasing": lambda m: (m / 10) * 0.9 for n in _ENHANCE},
    "ShearX": lambda m: (m / 10) * 0.3, "ShearY": lambda m: (m / 10) * 0.3,
    "TranslateXRel": lambda m: (m / 10) * 0.45, "TranslateYRel": lambda m: (m / 10) * 0.45,
}


def _apply(name: str, img: Image.Image, arg, fill: tuple[int, int, int], resample) -> Image.Image:
    """One op with its signed argument, as timm's op functions (``None`` arg for the three without one)."""
    base, (w, h) = name.removesuffix("Increasing"), img.size
    if name in ("AutoContrast", "Equalize", "Invert"):
        return getattr(ImageOps, name.lower())(img)
    if base == "Posterize":  # < 1 bit: black, as older Pillow and mmcv (Pillow 13 raises, which timm does not guard)
        return img if arg >= 8 else ImageOps.posterize(img, arg) if arg >= 1 else Image.new("RGB", img.size)
    if base == "Solarize":
        return ImageOps.solarize(img, arg)
    if name == "SolarizeAdd":
        return img.point([min(255, i + arg) if i < 128 else i for i in range(256)] * 3)
    if base in _ENHANCE:
        return getattr(ImageEnhance, base)(img).enhance(arg if name == base else max(0.1, 1.0 + arg))
    if name == "Rotate":
        return img.rotate(arg, resample=resample, fillcolor=fill)
    matrix = {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
              "TranslateXRel": (1, 0, arg * w, 0, 1, 0), "TranslateYRel": (1, 0, 0, 0, 1, arg * h)}[name]
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


@dataclass(frozen=True)
class RandAugment:
    """timm's RandAugment: ``num_ops`` ops per image drawn with replacement from ``ops`` (timm names; empty: timm's
    set for ``increasing``, :data:`RAND_INCREASING_TRANSFORMS` or :data:`RAND_TRANSFORMS`), each applied with
    probability ``prob`` at magnitude ``magnitude`` (+ gaussian noise of std ``magnitude_std`` per op; inf: uniform
    in ``[0, magnitude]``) clipped to ``[0, max_magnitude]`` (timm's ``mmax``; the level denominator stays 10).
    ``increasing`` (timm's ``inc1``) allows only the names of the increasing set, ``False`` only the other set's.
    ``fill``: RGB 0-255 of what geometric ops uncover; ``interpolation``: 'nearest' | 'bilinear' | 'bicubic' |
    'random' (timm's pick of bilinear or bicubic per op, its default when none is given)."""

    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.0
    max_magnitude: float = 10.0
    prob: float = 0.5
    increasing: bool = True
    fill: tuple[int, int, int] = (128, 128, 128)
    interpolation: str = "bilinear"
    ops: tuple[str, ...] = ()

    def __post_init__(self):
        allowed = RAND_INCREASING_TRANSFORMS if self.increasing else RAND_TRANSFORMS
        object.__setattr__(self, "ops", tuple(self.ops) or allowed)
        f = self.fill
        fill_ok = isinstance(f, (list, tuple)) and len(f) == 3 and all(type(v) is int and 0 <= v <= 255 for v in f)
        object.__setattr__(self, "fill", tuple(f) if fill_ok else f)
        number = lambda v: isinstance(v, Real) and not isinstance(v, bool)  # noqa: E731
        for field, ok, want in (
            ("num_ops", type(self.num_ops) is int and self.num_ops >= 0, "an int >= 0"),
            ("magnitude", number(self.magnitude) and 0 <= self.magnitude < math.inf, "a finite number >= 0"),
            ("magnitude_std", number(self.magnitude_std) and self.magnitude_std >= 0, "a number >= 0 or inf"),
            ("max_magnitude", number(self.max_magnitude) and 0 < self.max_magnitude < math.inf, "a finite number > 0"),
            ("prob", number(self.prob) and 0 <= self.prob <= 1, "a number in [0, 1]"),
            ("increasing", isinstance(self.increasing, bool), "a bool"),
            ("fill", fill_ok, "3 ints in 0-255 (RGB)"),
            ("interpolation", self.interpolation in (*_RESAMPLE, "random"), f"one of {[*_RESAMPLE, 'random']}"),
            ("ops", all(n in allowed for n in self.ops), f"names out of {allowed} (increasing={self.increasing})"),
        ):
            if not ok:
                raise ConfigError(f"RandAugment.{field} must be {want}, got {getattr(self, field)!r}")

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """RGB image -> augmented RGB image of the same size; the draws from ``rng`` are in the module docstring."""
        if img.mode != "RGB":
            raise ImageError(f"RandAugment needs an RGB image, got mode {img.mode!r}")
        for i in rng.choice(len(self.ops), size=self.num_ops):
            name = self.ops[int(i)]
            if self.prob < 1.0 and not rng.random() < self.prob:
                continue
            m = self.magnitude
            if self.magnitude_std == math.inf:
                m = rng.uniform(0, m)
            elif self.magnitude_std > 0:
                m = rng.normal(m, self.magnitude_std)
            m = max(0.0, min(float(m), self.max_magnitude))
            arg = _LEVEL[name](m) if name in _LEVEL else None
            if name in _SIGNED and rng.random() > 0.5:
                arg = -arg
            resample = _RESAMPLE.get(self.interpolation)
            if resample is None and name in _GEOMETRIC:
                resample = _RANDOM_RESAMPLE[int(rng.integers(2))]
            img = _apply(name, img, arg, self.fill, resample)
        return img


_TIMM_PART = re.compile(r"(mstd|mmax|inc|m|n|p)(.+)")
_TIMM_FIELD = {"m": ("magnitude", float), "n": ("num_ops", int), "mstd": ("magnitude_std", float),
               "mmax": ("max_magnitude", float), "p": ("prob", float),
               "inc": ("increasing", {"0": False, "1": True}.__getitem__)}


def parse_timm(text: str, fill: tuple[int, int, int] = (128, 128, 128), interpolation: str = "bilinear") -> RandAugment:
    """timm's ``'rand-m9-mstd0.5-inc1'``: ``rand`` then, in any order, ``m<float>`` (default 10), ``n<int>`` (2),
    ``mstd<float>`` (0; > 100 or ``inf``: uniform), ``mmax<float>`` (10), ``p<float>`` (0.5), ``inc<0|1>`` (0: timm's
    :data:`RAND_TRANSFORMS`). Unlike timm, ``m``/``mmax`` may be floats, and a part without a digit, a repeated or
    unknown one (``t<set>`` included) is an error, not ignored or asserted."""
    head, *parts = text.split("-")
    if head != "rand":
        raise ConfigError(f"RandAugment string {text!r} must start with 'rand', got {head!r}")
    kw, seen = {"magnitude": 10.0, "increasing": False}, set()
    for part in parts:
        match = _TIMM_PART.fullmatch(part)
        if match is None or match[1] in seen:
            why = "is repeated" if match else "is not one of m<float> n<int> mstd<float> mmax<float> p<float> inc<0|1>"
            raise ConfigError(f"RandAugment string {text!r}: part {part!r} {why}")
        field, conv = _TIMM_FIELD[match[1]]
        try:
            kw[field] = conv(match[2])
        except (ValueError, KeyError):
            why = f"has a malformed value {match[2]!r}"
            raise ConfigError(f"RandAugment string {text!r}: part {part!r} {why}") from None
        seen.add(match[1])
    if kw.get("magnitude_std", 0) > 100:
        kw["magnitude_std"] = math.inf  # timm: "uniform sampling in 0 to magnitude if mstd is > 100"
    try:
        return RandAugment(fill=fill, interpolation=interpolation, **kw)
    except ConfigError as e:
        raise ConfigError(f"RandAugment string {text!r}: {e}") from None


# mmpretrain (type, direction) -> the timm op and its magnitude_range in mmpretrain's RANDAUG_POLICIES, in the order
# of its 'timm_increasing' (timm's)
_MM_OPS = {
    ("AutoContrast", None): ("AutoContrast", None), ("Equalize", None): ("Equalize", None),
    ("Invert", None): ("Invert", None), ("Rotate", None): ("Rotate", (0, 30)),
    ("Posterize", None): ("PosterizeIncreasing", (4, 0)), ("Solarize", None): ("SolarizeIncreasing", (256, 0)),
    ("SolarizeAdd", None): ("SolarizeAdd", (0, 110)), ("ColorTransform", None): ("ColorIncreasing", (0, 0.9)),
    **{(n, None): (n + "Increasing", (0, 0.9)) for n in ("Contrast", "Brightness", "Sharpness")},
    ("Shear", "horizontal"): ("ShearX", (0, 0.3)), ("Shear", "vertical"): ("ShearY", (0, 0.3)),
    ("Translate", "horizontal"): ("TranslateXRel", (0, 0.45)), ("Translate", "vertical"): ("TranslateYRel", (0, 0.45)),
}
_MM_POLICIES = {"timm_increasing": [op for op, _ in _MM_OPS.values()],
                "simple_increasing": ["AutoContrast", "Equalize", "Rotate", "ShearX", "ShearY"]}


def _mm_op(policy: dict) -> str:
    """One entry of an mmpretrain policy list -> the timm op name."""
    kind = policy.get("type")
    # mmpretrain's Shear and Translate default to horizontal
    direction = policy.get("direction", "horizontal" if kind in ("Shear", "Translate") else None)
    extra = set(policy) - {"type", "magnitude_range", "magnitude_key", "direction"}  # magnitude_key: ignored, as mm
    if extra or (kind, direction) not in _MM_OPS:
        what = f"argument(s) {sorted(extra)}" if extra else f"type {kind!r} with direction {direction!r}"
        raise ConfigError(f"RandAugment policy {policy}: {what} not implemented (types: {sorted(set(_MM_OPS))})")
    op, want = _MM_OPS[kind, direction]
    got = policy.get("magnitude_range")
    if got != want and not (isinstance(got, (list, tuple)) and want and list(got) == list(want)):
        raise ConfigError(f"RandAugment policy {policy}: magnitude_range {got} not implemented, only timm's {want}")
    return op


def from_mmpretrain(policies, num_policies: int = 2, magnitude_level: float = 9, magnitude_std=0.0,
                    total_level: float = 10, pad_val=128, interpolation: str = "bicubic",
                    prob: float = 0.5) -> RandAugment:
    """mmpretrain's ``RandAugment(policies, num_policies, magnitude_level, magnitude_std, total_level, hparams=dict(
    pad_val, interpolation))``; ``prob``: the ops' shared ``prob``. ``policies``: 'timm_increasing' |
    'simple_increasing' | a list of ``dict(type, magnitude_range, direction)`` with the types and ranges of
    mmpretrain's ``RANDAUG_POLICIES``. ``magnitude_std``: a number (<= 0: none) or 'inf'. ``pad_val``: a number, or 3
    read as BGR (mmpretrain's configs and images are BGR) and reversed to RGB. ``total_level`` is folded into the
    magnitudes (timm's denominator is 10), which keeps mmpretrain's level / total_level fraction."""
    if not (isinstance(policies, str) and policies in _MM_POLICIES or isinstance(policies, (list, tuple)) and policies):
        raise ConfigError(f"RandAugment policies {policies!r} not implemented: use {list(_MM_POLICIES)} or a list")
    ops = _MM_POLICIES[policies] if isinstance(policies, str) else [_mm_op(dict(p)) for p in policies]
    if magnitude_std != "inf" and not (isinstance(magnitude_std, Real) and not math.isnan(magnitude_std)):
        raise ConfigError(f"RandAugment magnitude_std must be a number or 'inf', got {magnitude_std!r}")
    std = math.inf if magnitude_std == "inf" else max(0.0, float(magnitude_std))
    levels = (magnitude_level, total_level)
    if not (all(isinstance(v, Real) for v in levels) and 0 <= magnitude_level <= total_level and total_level > 0):
        raise ConfigError(f"RandAugment needs 0 <= magnitude_level <= total_level, got {magnitude_level}/{total_level}")
    bgr = [pad_val] * 3 if isinstance(pad_val, Real) else list(pad_val) if isinstance(pad_val, (list, tuple)) else []
    if len(bgr) != 3 or not all(isinstance(v, Real) for v in bgr):
        raise ConfigError(f"RandAugment pad_val must be a number or 3 numbers (BGR), got {pad_val!r}")
    scale = 10 / total_level
    return RandAugment(num_ops=num_policies, magnitude=magnitude_level * scale, magnitude_std=std * scale, prob=prob,
                       increasing=True, fill=tuple(int(round(v)) for v in bgr[::-1]), interpolation=interpolation,
                       ops=tuple(ops))
