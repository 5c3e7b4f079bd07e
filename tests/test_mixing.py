"""Batch mixing, soft cross-entropy and random erasing (:mod:`cspnet.data.mixing`) against hand-computed outputs.

A scripted generator hands out chosen values and records each draw, so the expected outputs (and the draw order the
docstrings promise) are worked out here by hand, independently of the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cspnet.config import LossSpec
from cspnet.data.mixing import BatchMix, RandomErasing
from cspnet.engine.train import _loss
from cspnet.errors import ConfigError


class Scripted:
    """A stand-in for ``np.random.Generator``: each method returns the next scripted value; ``calls`` records
    ``(method, args)``."""

    def __init__(self, **values):
        self.values = {k: list(v) for k, v in values.items()}
        self.calls = []

    def __getattr__(self, name):
        def draw(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return self.values[name].pop(0)

        return draw


def _batch(n=3, c=2, h=8, w=8):
    images = torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w)
    return images, torch.tensor([2, 0, 1][:n])


def test_mixup_by_hand():
    images, labels = _batch()
    rng = Scripted(choice=[0], beta=[0.3], permutation=[np.array([1, 2, 0])])
    mixed, targets = BatchMix((("Mixup", 0.8),))(images, labels, 4, rng)
    assert [c[0] for c in rng.calls] == ["choice", "beta", "permutation"]
    assert rng.calls[1][1] == (0.8, 0.8) and rng.calls[2][1] == (3,)
    np.testing.assert_allclose(mixed[0].numpy(), 0.3 * images[0].numpy() + 0.7 * images[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(mixed[2].numpy(), 0.3 * images[2].numpy() + 0.7 * images[0].numpy(), rtol=1e-6)
    # labels 2, 0, 1 mixed with those of samples 1, 2, 0
    expected = [[0.7, 0, 0.3, 0], [0.3, 0.7, 0, 0], [0, 0.3, 0.7, 0]]
    assert targets.dtype == torch.float32
    np.testing.assert_allclose(targets.numpy(), expected, atol=1e-7)


def test_cutmix_by_hand():
    images, labels = _batch()
    original = images.clone()
    # lam 0.75: side ratio 0.5, cut 4x4, half-side 2; centre (1, 6) -> rows 0:3 (clipped), cols 4:8
    rng = Scripted(choice=[1], beta=[0.75], permutation=[np.array([2, 0, 1])], integers=[1, 6])
    mixed, targets = BatchMix((("Mixup", 0.8), ("CutMix", 1.0)))(images, labels, 3, rng)
    assert [c[0] for c in rng.calls] == ["choice", "beta", "permutation", "integers", "integers"]
    assert rng.calls[0][2]["p"].tolist() == [0.5, 0.5]
    assert rng.calls[3][1] == (0, 8) and rng.calls[4][1] == (0, 8)
    assert torch.equal(images, original)  # the input is not written
    expected = original.clone()
    for i, j in enumerate([2, 0, 1]):
        expected[i, :, 0:3, 4:8] = original[j, :, 0:3, 4:8]
    assert torch.equal(mixed, expected)
    lam = 1 - 3 * 4 / 64  # corrected for the clipped box
    t = np.zeros((3, 3))
    for i, (a, b) in enumerate([(2, 1), (0, 2), (1, 0)]):
        t[i, a] += lam
        t[i, b] += 1 - lam
    np.testing.assert_allclose(targets.numpy(), t, atol=1e-7)


def test_cutmix_full_box_and_empty_box():
    images, labels = _batch(n=2, h=4, w=6)
    # lam 0: the cut is the whole image, centred: every pixel from the partner, all of its label
    rng = Scripted(choice=[0], beta=[0.0], permutation=[np.array([1, 0])], integers=[2, 3])
    mixed, targets = BatchMix((("CutMix", 1.0),))(images, labels, 3, rng)
    assert torch.equal(mixed, images[[1, 0]]) and torch.equal(targets, F.one_hot(labels[[1, 0]], 3).float())
    # lam 1: no box, nothing changes
    rng = Scripted(choice=[0], beta=[1.0], permutation=[np.array([1, 0])], integers=[2, 3])
    mixed, targets = BatchMix((("CutMix", 1.0),))(images, labels, 3, rng)
    assert torch.equal(mixed, images) and torch.equal(targets, F.one_hot(labels, 3).float())


def test_no_mix_share():
    images, labels = _batch()
    mix = BatchMix((("Mixup", 0.8), ("CutMix", 1.0)), probs=(0.2, 0.3))
    rng = Scripted(choice=[2])
    mixed, targets = mix(images, labels, 3, rng)
    np.testing.assert_allclose(rng.calls[0][2]["p"], [0.2, 0.3, 0.5])
    assert len(rng.calls) == 1  # nothing else drawn
    assert torch.equal(mixed, images) and torch.equal(targets, F.one_hot(labels, 3).float())


def test_choice_frequencies():
    """With a real generator: the share of each augment (read from the draws) matches ``probs``."""

    class Counting:
        def __init__(self, seed):
            self.rng, self.counts = np.random.default_rng(seed), [0, 0, 0]

        def choice(self, *args, **kwargs):
            k = self.rng.choice(*args, **kwargs)
            self.counts[k] += 1
            return k

        def __getattr__(self, name):
            return getattr(self.rng, name)

    images, labels = _batch(n=2, h=2, w=2)
    rng = Counting(0)
    mix = BatchMix((("Mixup", 0.8), ("CutMix", 1.0)), probs=(0.2, 0.3))
    for _ in range(4000):
        _, targets = mix(images, labels, 3, rng)
        np.testing.assert_allclose(targets.sum(1).numpy(), 1, rtol=1e-6)
    np.testing.assert_allclose(np.array(rng.counts) / 4000, [0.2, 0.3, 0.5], atol=0.03)


def test_batch_mix_deterministic_per_seed():
    images, labels = _batch(n=6)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    mix = BatchMix((("Mixup", 0.8), ("CutMix", 1.0)))
    runs = [mix(images, labels, 6, np.random.default_rng(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


@pytest.mark.parametrize(
    "augments, probs, field",
    [
        ((), None, "augments"),
        ((("MixUp", 0.8),), None, "augments"),
        ((("Mixup", 0.0),), None, "augments"),
        ((("Mixup", 0.8), ("CutMix", 1.0)), (0.5,), "probs"),
        ((("Mixup", 0.8), ("CutMix", 1.0)), (0.7, 0.4), "probs"),
        ((("Mixup", 0.8), ("CutMix", 1.0)), (-0.1, 0.4), "probs"),
    ],
)
def test_batch_mix_validation(augments, probs, field):
    with pytest.raises(ConfigError, match=field):
        BatchMix(augments, probs)


def test_the_training_loss_on_soft_targets_is_mmpretrains_label_smooth_loss():
    """The trainer's loss (torch's cross-entropy on probabilities) against LabelSmoothLoss written out by hand."""
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    targets = torch.tensor([[0.3, 0.7, 0.0], [0.0, 0.0, 1.0]])
    by_hand = []  # eps 0.1: t = targets * 0.9 + 0.1 / 3
    for z, t in zip(logits.tolist(), targets.tolist()):
        lse = math.log(sum(math.exp(v) for v in z))
        by_hand.append(-sum((ti * 0.9 + 0.1 / 3) * (zi - lse) for zi, ti in zip(z, t)))
    got = _loss(LossSpec(label_smooth=0.1, weight=2.0, reduction="sum"), logits, targets)
    np.testing.assert_allclose(got.item(), 2.0 * sum(by_hand), rtol=1e-6)
    np.testing.assert_allclose(_loss(LossSpec(label_smooth=0.1), logits, targets).item(), np.mean(by_hand), rtol=1e-6)


def _image(h=10, w=20):
    image = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    image.flags.writeable = False  # as a view of a decoded file; must not be written
    return image


def test_erasing_const_by_hand():
    image = _image()
    # aspect 2 (h/w), area 0.1 * 200 = 20 -> h = round(sqrt(40)) = 6, w = round(sqrt(10)) = 3; top 2, left 5
    rng = Scripted(random=[0.5], uniform=[math.log(2.0), 0.1], integers=[2, 5])
    out = RandomErasing(fill_color=(123.67, 116.3, 103.5))(image, rng)
    assert [c[0] for c in rng.calls] == ["random", "uniform", "uniform", "integers", "integers"]
    lo, hi = rng.calls[1][1]
    assert lo == pytest.approx(math.log(0.3), rel=1e-6) and hi == pytest.approx(math.log(10 / 3), rel=1e-6)
    assert rng.calls[2][1] == (0.02, 0.4) and rng.calls[3][1] == (0, 4) and rng.calls[4][1] == (0, 17)
    expected = image.copy()
    expected[2:8, 5:8] = (123, 116, 103)
    np.testing.assert_array_equal(out, expected)


def test_erasing_skipped_and_clamped():
    image = _image()
    rng = Scripted(random=[0.51])
    assert RandomErasing()(image, rng) is image and len(rng.calls) == 1
    # aspect 10, area 0.4 * 100 = 40: h = round(sqrt(400)) = 20 -> clamped to 10 (no top draw), w = 2
    image = _image(10, 10)
    rng = Scripted(random=[0.0], uniform=[math.log(10.0), 0.4], integers=[3])
    out = RandomErasing(erase_prob=0.25, fill_color=(0, 0, 0))(image, rng)
    assert rng.calls[-1][1] == (0, 8)
    expected = image.copy()
    expected[:, 3:5] = 0
    np.testing.assert_array_equal(out, expected)


def test_erasing_rand_modes_follow_draws():
    """``rand`` with and without ``fill_std``: the output equals the draws replayed here, in the documented order."""
    image = _image(32, 32)
    for fill_std in ((60.0, 60.0, 60.0), None):
        erase = RandomErasing(erase_prob=1.0, mode="rand", fill_color=(200, 20, 128), fill_std=fill_std)
        out = erase(image, np.random.default_rng(3))
        rng = np.random.default_rng(3)
        assert rng.random() <= 1.0
        aspect = np.exp(rng.uniform(np.log(np.float32(0.3)), np.log(np.float32(10 / 3))))
        area = 32 * 32 * rng.uniform(0.02, 0.4)
        h, w = min(round(math.sqrt(area * aspect)), 32), min(round(math.sqrt(area / aspect)), 32)
        top = rng.integers(0, 32 - h) if h < 32 else 0
        left = rng.integers(0, 32 - w) if w < 32 else 0
        if fill_std is None:
            patch = np.floor(rng.uniform(0, 256, (h, w, 3)))
        else:
            patch = np.clip(np.trunc(rng.normal((200, 20, 128), fill_std, (h, w, 3))), 0, 255)
        expected = image.copy()
        expected[top : top + h, left : left + w] = patch
        assert h * w > 20
        np.testing.assert_array_equal(out, expected)
        if fill_std is not None:  # the mean is the fill colour; the red and green channels hit the clip
            region = out[top : top + h, left : left + w].reshape(-1, 3)
            assert region[:, 0].max() == 255 and region[:, 1].min() == 0


def test_erasing_deterministic_per_seed():
    image = _image(64, 64)
    erase = RandomErasing(erase_prob=1.0, mode="rand")
    a, b, c = (erase(image, np.random.default_rng(s)) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(erase_prob=1.5), "erase_prob"),
        (dict(min_area_ratio=0.5, max_area_ratio=0.4), "area_ratio"),
        (dict(aspect_range=(0.0, 1.0)), "aspect_range"),
        (dict(aspect_range=(2.0, 1.0)), "aspect_range"),
        (dict(mode="pixel"), "mode"),
        (dict(fill_color=(0, 0)), "fill_color"),
        (dict(fill_color=(0, 0, 300)), "fill_color"),
        (dict(fill_std=(1.0, -1.0, 1.0)), "fill_std"),
    ],
)
def test_erasing_validation(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        RandomErasing(**kwargs)
