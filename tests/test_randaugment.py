"""RandAugment: each op against direct PIL / NumPy calls at a fixed magnitude with scripted draws, the draw order
(scripted and replayed from a seeded generator), timm's config string and mmpretrain's arguments."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from cspnet.data.randaugment import (RAND_INCREASING_TRANSFORMS, RAND_TRANSFORMS, RandAugment, from_mmpretrain,
                                     parse_timm)
from cspnet.errors import ConfigError, ImageError
from golden import DEMO

FILL = (124, 116, 104)
BILINEAR, BICUBIC = Image.Resampling.BILINEAR, Image.Resampling.BICUBIC
ALL_OPS = tuple(dict.fromkeys(RAND_TRANSFORMS + RAND_INCREASING_TRANSFORMS))
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "ColorIncreasing", "ContrastIncreasing",
          "BrightnessIncreasing", "SharpnessIncreasing"}


@pytest.fixture(scope="module")
def img() -> Image.Image:
    # non-square, so a swapped width/height shows
    return Image.open(DEMO / "dog.jpg").convert("RGB").resize((40, 30), BILINEAR)


class Script:
    """Stands in for a numpy Generator: serves scripted draws in order and records each call. An unscripted draw
    raises IndexError; the test checks that every scripted draw was used."""

    def __init__(self, ops=(0,), random=(), normal=(), uniform=(), integers=()):
        self.queue = {"choice": [np.array(ops)], "random": list(random), "normal": list(normal),
                      "uniform": list(uniform), "integers": list(integers)}
        self.calls = []

    def _next(self, kind, *args):
        self.calls.append((kind, *args))
        return self.queue[kind].pop(0)

    def choice(self, n, size):
        return self._next("choice", n, size)

    def random(self):
        return self._next("random")

    def normal(self, loc, scale):
        return self._next("normal", loc, scale)

    def uniform(self, low, high):
        return self._next("uniform", low, high)

    def integers(self, n):
        return self._next("integers", n)

    def used_all(self) -> bool:
        return not any(self.queue.values())


def arr(image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


def reference(name: str, img: Image.Image, sign: int, resample=BILINEAR) -> np.ndarray:
    """timm's op at magnitude 9 (level 0.9), written out with direct PIL calls and NumPy formulas."""
    a, (w, h) = arr(img).astype(np.int64), img.size
    geo = dict(resample=resample, fillcolor=FILL)
    out = {
        "AutoContrast": lambda: ImageOps.autocontrast(img),
        "Equalize": lambda: ImageOps.equalize(img),
        "Invert": lambda: 255 - a,
        "Rotate": lambda: img.rotate(sign * 0.9 * 30, **geo),
        "Posterize": lambda: a & 0b11100000,  # int(0.9 * 4) = 3 bits kept
        "PosterizeIncreasing": lambda: a & 0b10000000,  # 4 - 3 = 1 bit
        "Solarize": lambda: np.where(a >= 230, 255 - a, a),  # int(0.9 * 256)
        "SolarizeIncreasing": lambda: np.where(a >= 26, 255 - a, a),  # 256 - 230
        "SolarizeAdd": lambda: np.where(a < 128, np.minimum(a + 99, 255), a),  # int(0.9 * 110)
        "ShearX": lambda: img.transform(img.size, Image.AFFINE, (1, sign * 0.9 * 0.3, 0, 0, 1, 0), **geo),
        "ShearY": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, sign * 0.9 * 0.3, 1, 0), **geo),
        "TranslateXRel": lambda: img.transform(img.size, Image.AFFINE, (1, 0, sign * 0.9 * 0.45 * w, 0, 1, 0), **geo),
        "TranslateYRel": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, sign * 0.9 * 0.45 * h), **geo),
    }
    for e in ("Color", "Contrast", "Brightness", "Sharpness"):
        out[e] = lambda e=e: getattr(ImageEnhance, e)(img).enhance(0.9 * 1.8 + 0.1)
        out[e + "Increasing"] = lambda e=e: getattr(ImageEnhance, e)(img).enhance(1 + sign * 0.9 * 0.9)
    return arr(out[name]())


def one_op(name: str, **kw) -> RandAugment:
    kw = dict(num_ops=1, magnitude=9, prob=1.0, fill=FILL, increasing=name in RAND_INCREASING_TRANSFORMS) | kw
    return RandAugment(ops=(name,), **kw)


def test_op_sets_are_timms():
    assert RAND_INCREASING_TRANSFORMS == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
        "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
        "TranslateXRel", "TranslateYRel")
    assert RAND_TRANSFORMS == tuple(n.removesuffix("Increasing") for n in RAND_INCREASING_TRANSFORMS)
    assert RandAugment().ops == RAND_INCREASING_TRANSFORMS and RandAugment(increasing=False).ops == RAND_TRANSFORMS


@pytest.mark.parametrize("name, sign", [(n, 1) for n in ALL_OPS] + [(n, -1) for n in ALL_OPS if n in SIGNED])
def test_each_op_matches_direct_pil(img, name, sign):
    # timm negates when random() > 0.5; unsigned ops draw nothing (prob 1, no magnitude noise)
    rng = Script(random=[0.9 if sign == -1 else 0.1] if name in SIGNED else [])
    out = one_op(name)(img, rng)
    assert rng.used_all() and rng.calls[0] == ("choice", 1, 1)
    assert out.mode == "RGB" and out.size == img.size
    np.testing.assert_array_equal(arr(out), reference(name, img, sign))


@pytest.mark.parametrize("name", ["Rotate", "ShearY", "TranslateXRel"])
def test_interpolation(img, name):
    for k, resample in ((0, BILINEAR), (1, BICUBIC)):
        rng = Script(random=[0.1], integers=[k])  # sign, then timm's random pick of bilinear / bicubic
        out = one_op(name, interpolation="random")(img, rng)
        np.testing.assert_array_equal(arr(out), reference(name, img, 1, resample))
        assert rng.used_all() and rng.calls[-1] == ("integers", 2)
    out = one_op(name, interpolation="bicubic")(img, Script(random=[0.1]))
    np.testing.assert_array_equal(arr(out), reference(name, img, 1, BICUBIC))
    one_op("Invert", interpolation="random")(img, Script())  # a colour op draws no resampling (else IndexError)


def solarize_add(img, add: int) -> np.ndarray:
    a = arr(img).astype(np.int64)
    return np.where(a < 128, np.minimum(a + add, 255), a)


@pytest.mark.parametrize("drawn, add", [(9.0, 99), (12.0, 110), (-2.0, 0), (5.5, 60)])
def test_magnitude_noise_is_gaussian_then_clipped(img, drawn, add):
    rng = Script(normal=[drawn])
    out = one_op("SolarizeAdd", magnitude_std=0.5)(img, rng)
    assert rng.used_all() and ("normal", 9, 0.5) in rng.calls
    np.testing.assert_array_equal(arr(out), solarize_add(img, add))  # int(clip(m, 0, 10) / 10 * 110)


def test_magnitude_inf_std_is_uniform_and_mmax_raises_the_clip(img):
    rng = Script(uniform=[5.0])
    np.testing.assert_array_equal(arr(one_op("SolarizeAdd", magnitude_std=math.inf)(img, rng)), solarize_add(img, 55))
    assert rng.used_all() and ("uniform", 0, 9) in rng.calls
    rng = Script(normal=[15.0])  # mmax 20: 15 stays, and int(1.5 * 110) = 165 is capped at 128 as timm
    np.testing.assert_array_equal(arr(one_op("SolarizeAdd", magnitude_std=1, max_magnitude=20)(img, rng)),
                                  solarize_add(img, 128))


def test_every_op_draws_its_magnitude_and_the_enhance_factor_floor(img):
    rng = Script(normal=[3.0])  # timm samples the magnitude even for an op without an argument
    out = one_op("AutoContrast", magnitude_std=0.5)(img, rng)
    np.testing.assert_array_equal(arr(out), arr(ImageOps.autocontrast(img)))
    assert rng.used_all()
    # mmax 20, m 15, negative: 1 - 1.5 * 0.9 < 0.1 -> timm's floor of 0.1
    out = one_op("ColorIncreasing", magnitude=15, max_magnitude=20)(img, Script(random=[0.9]))
    np.testing.assert_array_equal(arr(out), arr(ImageEnhance.Color(img).enhance(0.1)))


def test_posterize_to_zero_bits_is_black(img):
    # m = 10 -> PosterizeIncreasing keeps 4 - 4 = 0 bits (newer Pillow refuses 0 bits; older Pillow and mmcv: black)
    assert not arr(one_op("PosterizeIncreasing", magnitude=10)(img, Script())).any()


def test_prob_draw_comes_first_and_a_skipped_op_draws_nothing_more(img):
    ra = one_op("Rotate", prob=0.5, magnitude_std=0.5)
    for u in (0.7, 0.5):  # applied only if random() < prob
        rng = Script(random=[u])
        assert ra(img, rng) is img and rng.used_all()
    rng = Script(random=[0.3, 0.9], normal=[9.0])  # prob, magnitude, then sign (negative)
    np.testing.assert_array_equal(arr(ra(img, rng)), reference("Rotate", img, -1))
    assert [c[0] for c in rng.calls] == ["choice", "random", "normal", "random"] and rng.used_all()


def test_ops_are_chosen_with_replacement_and_applied_in_order(img):
    ra = RandAugment(num_ops=2, magnitude=9, prob=1.0, ops=("Invert", "SolarizeAdd"))
    assert arr(ra(img, Script(ops=[0, 0]))).tolist() == arr(img).tolist()  # Invert twice
    inv_then_add = solarize_add(Image.fromarray(255 - arr(img)), 99)
    np.testing.assert_array_equal(arr(ra(img, Script(ops=[0, 1]))), inv_then_add)
    assert not np.array_equal(arr(ra(img, Script(ops=[1, 0]))), inv_then_add)


def test_replays_a_seeded_generator(img):
    """The documented draw order, replayed with the same numpy calls on a twin generator."""
    ra = RandAugment(num_ops=3, magnitude=9, magnitude_std=0.5, ops=("Invert", "SolarizeAdd", "PosterizeIncreasing"))
    for seed in range(30):
        twin, a = np.random.default_rng(seed), arr(img).astype(np.int64)
        for i in twin.choice(3, size=3):
            if not twin.random() < 0.5:
                continue
            m = min(max(twin.normal(9, 0.5), 0.0), 10.0)
            if i == 0:
                a = 255 - a
            elif i == 1:
                a = np.where(a < 128, np.minimum(a + int(m / 10 * 110), 255), a)
            else:
                bits = 4 - int(m / 10 * 4)
                a = a & (~(2 ** (8 - bits) - 1) & 255) if bits > 0 else a * 0
        np.testing.assert_array_equal(arr(ra(img, np.random.default_rng(seed))), a, err_msg=f"seed {seed}")


def test_deterministic_and_global_random_untouched(img):
    ra = parse_timm("rand-m9-mstd0.5-inc1", fill=FILL, interpolation="random")
    state, np_state = random.getstate(), np.random.get_state()
    outs = [arr(ra(img, np.random.default_rng(s))) for s in range(12)]
    assert random.getstate() == state and np.array_equal(np.random.get_state()[1], np_state[1])
    for s in (0, 5):
        np.testing.assert_array_equal(arr(ra(img, np.random.default_rng(s))), outs[s])
    assert len({o.tobytes() for o in outs}) >= 10  # different seeds, different pixels


def test_output_is_rgb_uint8_of_the_input_size(img):
    for ra in (RandAugment(num_ops=4, prob=1.0, magnitude_std=math.inf, interpolation="random"),
               RandAugment(num_ops=4, prob=1.0, magnitude_std=1.0, increasing=False, interpolation="nearest")):
        for s in range(15):
            out = ra(img, np.random.default_rng(s))
            assert out.mode == "RGB" and out.size == img.size and arr(out).dtype == np.uint8
    with pytest.raises(ImageError, match="'L'"):
        RandAugment()(img.convert("L"), np.random.default_rng(0))


@pytest.mark.parametrize("kw, field", [
    (dict(num_ops=-1), "num_ops"), (dict(num_ops=1.5), "num_ops"), (dict(magnitude=-1), "magnitude"),
    (dict(magnitude=math.inf), "magnitude"), (dict(magnitude_std=-0.1), "magnitude_std"),
    (dict(max_magnitude=0), "max_magnitude"), (dict(prob=1.5), "prob"), (dict(increasing="yes"), "increasing"),
    (dict(fill=(1, 2)), "fill"), (dict(fill=(0, 0, 256)), "fill"), (dict(interpolation="area"), "interpolation"),
    (dict(ops=("Cutout",)), "ops"), (dict(ops=("Posterize",)), "ops"),
    (dict(ops=("PosterizeIncreasing",), increasing=False), "ops"),
])
def test_bad_fields_are_named(kw, field):
    with pytest.raises(ConfigError, match=rf"RandAugment\.{field} "):
        RandAugment(**kw)


def test_list_arguments_become_tuples():
    ra = RandAugment(ops=["Invert", "Rotate"], fill=[1, 2, 3])
    assert ra.ops == ("Invert", "Rotate") and ra.fill == (1, 2, 3) and hash(ra)


def test_parse_timm():
    assert parse_timm("rand-m9-mstd0.5-inc1") == RandAugment(magnitude=9.0, magnitude_std=0.5, increasing=True)
    # timm's defaults: magnitude 10, 2 ops, p 0.5, no noise, mmax 10, and the non-increasing set unless inc1
    assert parse_timm("rand") == RandAugment(magnitude=10.0, increasing=False, ops=RAND_TRANSFORMS)
    ra = parse_timm("rand-n3-p0.7-mmax12-m15-inc0", fill=FILL, interpolation="bicubic")
    assert (ra.num_ops, ra.prob, ra.max_magnitude, ra.magnitude, ra.increasing) == (3, 0.7, 12.0, 15.0, False)
    assert (ra.fill, ra.interpolation) == (FILL, "bicubic")
    assert parse_timm("rand-mstd101").magnitude_std == math.inf == parse_timm("rand-mstdinf-inc1").magnitude_std
    assert parse_timm("rand-mstd100").magnitude_std == 100


@pytest.mark.parametrize("text, named", [
    ("rnd-m9", "'rnd'"), ("rand-m9-x1", "'x1'"), ("rand-m", "'m'"), ("rand-n2.5", "'n2.5'"), ("rand-inc2", "'inc2'"),
    ("rand-tweights", "'tweights'"), ("rand--m9", "''"), ("rand-m9-m8", "'m8'"), ("rand-mfoo", "'mfoo'"),
    ("rand-p1.5", "prob"), ("rand-n0x", "'n0x'"),
])
def test_parse_timm_errors_name_the_part_and_the_string(text, named):
    with pytest.raises(ConfigError) as e:
        parse_timm(text)
    assert named in str(e.value) and repr(text) in str(e.value)


# mmpretrain's RANDAUG_POLICIES['timm_increasing'], as written in mmpretrain/datasets/transforms/auto_augment.py
MM_TIMM_INCREASING = [
    dict(type="AutoContrast"), dict(type="Equalize"), dict(type="Invert"),
    dict(type="Rotate", magnitude_range=(0, 30)), dict(type="Posterize", magnitude_range=(4, 0)),
    dict(type="Solarize", magnitude_range=(256, 0)), dict(type="SolarizeAdd", magnitude_range=(0, 110)),
    dict(type="ColorTransform", magnitude_range=(0, 0.9)), dict(type="Contrast", magnitude_range=(0, 0.9)),
    dict(type="Brightness", magnitude_range=(0, 0.9)), dict(type="Sharpness", magnitude_range=(0, 0.9)),
    dict(type="Shear", magnitude_range=(0, 0.3), direction="horizontal"),
    dict(type="Shear", magnitude_range=(0, 0.3), direction="vertical"),
    dict(type="Translate", magnitude_range=(0, 0.45), direction="horizontal"),
    dict(type="Translate", magnitude_range=(0, 0.45), direction="vertical"),
]


def test_mmpretrain_timm_increasing_is_timms_inc1():
    timm = parse_timm("rand-m9-mstd0.5-inc1", interpolation="bicubic")
    assert from_mmpretrain("timm_increasing", 2, 9, 0.5, 10, pad_val=128) == timm
    assert from_mmpretrain(MM_TIMM_INCREASING, num_policies=2, magnitude_level=9, magnitude_std=0.5) == timm
    # imagenet_bs64_swin_224.py: hparams=dict(pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')
    swin = from_mmpretrain("timm_increasing", 2, 9, 0.5, 10, pad_val=[104, 116, 124], interpolation="bicubic")
    assert swin.fill == (124, 116, 104) and swin.interpolation == "bicubic"


def test_mmpretrain_numbers():
    assert from_mmpretrain("timm_increasing", 2, 18, 1.0, 20) == from_mmpretrain("timm_increasing", 2, 9, 0.5, 10)
    assert from_mmpretrain("timm_increasing", magnitude_std="inf").magnitude_std == math.inf
    assert from_mmpretrain("timm_increasing", magnitude_std=float("inf")).magnitude_std == math.inf
    assert from_mmpretrain("timm_increasing", magnitude_std=-1).magnitude_std == 0  # mmpretrain: <= 0 is no noise
    assert from_mmpretrain("timm_increasing", pad_val=100.4, prob=0.7).fill == (100, 100, 100)
    assert from_mmpretrain("simple_increasing").ops == ("AutoContrast", "Equalize", "Rotate", "ShearX", "ShearY")
    assert from_mmpretrain([dict(type="Shear", magnitude_range=[0, 0.3], magnitude_key="magnitude")]).ops == ("ShearX",)


@pytest.mark.parametrize("kw, named", [
    (dict(policies=[dict(type="Cutout", magnitude_range=(0, 40))]), "'Cutout'"),
    (dict(policies=[dict(type="GaussianBlur", magnitude_range=(0.1, 2))]), "'GaussianBlur'"),
    (dict(policies=[dict(type="Rotate", magnitude_range=(0, 20))]), "magnitude_range"),
    (dict(policies=[dict(type="Rotate")]), "magnitude_range"),
    (dict(policies=[dict(type="Shear", magnitude_range=(0, 0.3), direction="diagonal")]), "'diagonal'"),
    (dict(policies=[dict(type="Invert", prob=0.3)]), "'prob'"),
    (dict(policies="imagenet"), "'imagenet'"), (dict(policies=[]), "policies"),
    (dict(policies="timm_increasing", magnitude_std="abc"), "magnitude_std"),
    (dict(policies="timm_increasing", pad_val=(1, 2)), "pad_val"),
    (dict(policies="timm_increasing", interpolation="area"), "interpolation"),
    (dict(policies="timm_increasing", magnitude_level=11), "magnitude_level"),
])
def test_mmpretrain_errors_say_which(kw, named):
    with pytest.raises(ConfigError) as e:
        from_mmpretrain(**kw)
    assert named in str(e.value)
