"""Backbone features (``features_only``): documented strides/channels, out_indices, freezing, norm_eval, drop path."""

import math
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

import cspnet
from cspnet.errors import InvalidOptionError
from cspnet.models import FeatureDict, as_fpn_inputs, feature_names
from golden import ARCH_NAMES

DOC = Path(__file__).resolve().parents[1] / "docs" / "features.md"


def documented() -> dict[str, list[tuple[int, str, int, int, str]]]:
    """docs/features.md's table: model -> [(index, module, channels, stride, name)]."""
    text = DOC.read_text()
    table = text[text.index("<!-- feature-table:start -->") : text.index("<!-- feature-table:end -->")]
    rows: dict[str, list] = {}
    for m in re.finditer(r"^\| (\w+) \| (\d+) \| ([\w.]+) \| (\d+) \| (\d+) \| (\w+) \|$", table, re.M):
        rows.setdefault(m[1], []).append((int(m[2]), m[3], int(m[4]), int(m[5]), m[6]))
    return rows


def meta_backbone(name: str, **kwargs) -> cspnet.CSPNet:
    with torch.device("meta"):  # shapes only: no weights to initialise, no compute
        return cspnet.get_model(name, features_only=True, **kwargs)


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_feature_info_is_the_documented_table(name):
    table = documented()[name]
    bb = meta_backbone(name)
    assert [(f.index, f.module, f.channels, f.stride) for f in bb.feature_info] == [r[:4] for r in table]
    assert feature_names(bb) == [r[4] for r in table]
    assert bb.out_indices == tuple(range(len(table)))  # features_only default: every stage


def _selections(n: int):
    """(out_indices, the stages they mean): each stage as int, negative int and 1-tuples, and multi-stage picks."""
    for i in range(n):
        yield from ((i, (i,)), (i - n, (i,)), ((i,), (i,)), ((i - n,), (i,)))
    every = tuple(range(n))
    yield every, every
    yield tuple(i - n for i in every), every
    yield (-1, 1, 0), (0, 1, n - 1)  # mixed signs, any order: stage order out
    yield tuple(range(0, n, 2)), tuple(range(0, n, 2))


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_every_valid_out_indices_gives_the_documented_maps(name):
    table = {r[0]: r for r in documented()[name]}
    h, w = 67, 90  # odd sizes: maps are ceil(size / stride)
    for out_indices, stages in _selections(len(table)):
        bb = meta_backbone(name, out_indices=out_indices)
        assert bb.out_indices == stages
        assert bb.out_channels == tuple(table[i][2] for i in stages)
        assert bb.out_strides == tuple(table[i][3] for i in stages)
        if isinstance(out_indices, int) or min(out_indices) < 0:
            continue  # the same stages as a spelling already run below
        maps = bb(torch.empty(2, 3, h, w, device="meta"))
        want = [(2, table[i][2], math.ceil(h / table[i][3]), math.ceil(w / table[i][3])) for i in stages]
        assert [tuple(m.shape) for m in maps] == want, out_indices


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_real_maps_match(name):
    bb = cspnet.get_model(name, features_only=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps, feats = bb(x), as_fpn_inputs(bb, x)
    assert [tuple(m.shape) for m in maps] == [(1, f.channels, 64 // f.stride, 64 // f.stride) for f in bb.feature_info]
    assert all(torch.isfinite(m).all() for m in maps)
    assert all(torch.equal(f, m) for f, m in zip(feats.values(), maps))


@pytest.mark.parametrize("bad", [4, -5, (0, 4), (), (1, 1), (1, -3), (1.0,), (True,), "1"])
def test_invalid_out_indices_raise_a_clear_error(bad):
    with pytest.raises(InvalidOptionError) as e:
        meta_backbone("cspresnet50", out_indices=bad)
    msg = str(e.value)
    assert "out_indices" in msg
    if bad in (4, -5, (0, 4)):
        assert "0..3" in msg and "-4..-1" in msg


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for m in _bns(module) for b in (m.running_mean, m.running_var)]


def _bns(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_frozen_stages_freeze_the_stem_and_stages_up_to_k():
    bb = cspnet.get_model("cspresnet50", features_only=True, frozen_stages=1)
    frozen, free = [bb.stem, bb.stages[0], bb.stages[1]], [bb.stages[2], bb.stages[3]]
    assert bb.train() is bb  # chaining works (mmpretrain's returned None)
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in free for p in m.parameters())
    assert all(not bn.training for m in frozen for bn in _bns(m))
    assert all(bn.training for m in free for bn in _bns(m))
    before_frozen, before_free = _bn_stats(nn.ModuleList(frozen)), _bn_stats(nn.ModuleList(free))
    maps = bb(torch.randn(2, 3, 64, 64))
    sum(m.sum() for m in maps).backward()
    assert all(torch.equal(a, b) for a, b in zip(before_frozen, _bn_stats(nn.ModuleList(frozen))))
    assert not all(torch.equal(a, b) for a, b in zip(before_free, _bn_stats(nn.ModuleList(free))))
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert all(p.grad is not None for m in free for p in m.parameters())
    with pytest.raises(InvalidOptionError, match="frozen_stages"):
        meta_backbone("cspresnet50", frozen_stages=4)


def test_norm_eval_keeps_batchnorm_statistics():
    bb = cspnet.get_model("cspresnet50", features_only=True, out_indices=-1, norm_eval=True)
    assert bb.train() is bb and bb.training
    assert all(not bn.training for bn in _bns(bb))
    assert all(p.requires_grad for p in bb.parameters())  # norm_eval freezes statistics, not weights
    before = _bn_stats(bb)
    bb(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(bb)))


def test_drop_path_is_random_in_training_and_off_in_eval():
    torch.manual_seed(0)
    # zero_init_last=False: with the residual branches at zero, dropping them would change nothing;
    # norm_eval: BatchNorm uses the same statistics in both passes; out_indices=1: stages 0-1 (6 blocks) suffice
    bb = cspnet.get_model("cspresnet50", features_only=True, out_indices=1, drop_path_rate=0.9,
                          zero_init_last=False, norm_eval=True)
    rates = [m.rate for m in bb.modules() if type(m).__name__ == "DropPath"]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.9) and rates == sorted(rates)  # linear over all blocks
    plain = cspnet.get_model("cspresnet50", features_only=True, out_indices=1)
    plain.load_state_dict(bb.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        bb.train()
        a, b = bb(x)[0], bb(x)[0]
        assert not torch.allclose(a, b)
        bb.eval()
        c, d = bb(x)[0], bb(x)[0]
        assert torch.equal(c, d)
        assert torch.allclose(c, plain(x)[0], atol=1e-5)
    with pytest.raises(InvalidOptionError, match="drop_path_rate"):
        meta_backbone("cspresnet50", drop_path_rate=1.0)


class LateralNeck(nn.Module):
    """The contract of an FPN's input side: one 1x1 lateral conv per named map, built from in_channels_list."""

    def __init__(self, in_channels_list, out_channels):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels_list)

    def forward(self, feats: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((k, conv(v)) for conv, (k, v) in zip(self.lateral, feats.items()))


@pytest.mark.parametrize("name,out_indices,names", [
    ("cspdarknet53", (2, 3, 4), ["c3", "c4", "c5"]),
    ("cspresnet50", (1, 2, 3), ["c3", "c4", "c5"]),
    ("cspresnext50", (0, -1), ["c2", "c5"]),
])
def test_fpn_inputs_contract(name, out_indices, names):
    # shapes only (meta tensors); test_real_maps_match checks the values are the backbone's maps
    bb = meta_backbone(name, out_indices=out_indices, frozen_stages=0)
    x = torch.empty(1, 3, 97, 128, device="meta")
    feats = as_fpn_inputs(bb, x)
    assert isinstance(feats, OrderedDict) and list(feats) == names
    strides = [2 ** int(n[1:]) for n in names]  # c<k> has stride 2**k
    for (key, f), stride, ch in zip(feats.items(), strides, bb.out_channels):
        assert f.shape == (1, ch, math.ceil(97 / stride), math.ceil(128 / stride)), key
    body = FeatureDict(bb)
    assert body.names == names and body.out_channels == bb.out_channels and body.strides == tuple(strides)
    with torch.device("meta"):
        neck = nn.Sequential(body, LateralNeck(list(body.out_channels), 32))
    out = neck(x)
    assert list(out) == names and [v.shape for v in out.values()] == [(1, 32, *f.shape[2:]) for f in feats.values()]
    assert neck.train() is neck and bb.training and not bb.stem.training  # the backbone's frozen stem stays in eval


def test_torchvision_fpn_if_available():
    ops = pytest.importorskip("torchvision.ops")
    bb = cspnet.get_model("cspresnet50", features_only=True, out_indices=(1, 2, 3))
    fpn = ops.FeaturePyramidNetwork(list(bb.out_channels), 64)
    with torch.no_grad():
        out = fpn(as_fpn_inputs(bb, torch.randn(1, 3, 128, 128)))
    assert [tuple(v.shape) for v in out.values()] == [(1, 64, 16, 16), (1, 64, 8, 8), (1, 64, 4, 4)]
