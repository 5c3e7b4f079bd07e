"""``cspnet analyze`` / ``cspnet.analysis.analyze``: parameters, MACs and activations, computed from the models."""

import functools
import json

import pytest
import torch
from torch import nn

import cspnet
from cspnet.analysis import analyze
from cspnet.cli import main
from cspnet.errors import InvalidOptionError

# mmengine's get_model_complexity_info on extract_feat (backbone + global pool, head excluded): the seed's
# 5.04 / 3.48 / 3.11 G are these, rounded up by an older counter. timm's benchmark CSV gives the 256 figures
# (GMACs and MActs of the whole model, head included: 4.045 + 0.002 G rounds to 4.05 for cspresnext50).
MMENGINE_224 = {"cspdarknet53": 5.027, "cspresnet50": 3.475, "cspresnext50": 3.097}
SEED_224 = {"cspdarknet53": 5.04, "cspresnet50": 3.48, "cspresnext50": 3.11}
TIMM_256 = {"cspdarknet53": (6.57, 16.81), "cspresnet50": (4.54, 11.50), "cspresnext50": (4.05, 15.86)}


@functools.lru_cache(maxsize=None)
def analyze_name(name: str, size: int):
    return analyze(name, size)  # the zoo test and the figure tests share these


@pytest.mark.parametrize("arch", sorted(MMENGINE_224))
def test_macs_at_224_match_the_seed(arch):
    res = analyze_name(arch, 224)
    assert res.resolution == (224, 224)
    assert round(res.macs / 1e9, 3) == MMENGINE_224[arch]
    assert abs(res.macs / 1e9 - SEED_224[arch]) / SEED_224[arch] < 0.01
    # the head is reported apart: one MAC per fc weight
    assert res.macs_head == cspnet.ARCHS[arch].channels[-1] * 1000


@pytest.mark.parametrize("arch", sorted(TIMM_256))
def test_macs_and_activations_at_256(arch):
    res = analyze_name(arch, 256)
    macs, macts = TIMM_256[arch]
    assert round((res.macs + res.macs_head) / 1e9, 2) == macs
    assert round(res.activations / 1e6, 2) == macts


def test_zoo_records_are_the_computed_values():
    for w in cspnet.WEIGHTS:
        assert analyze_name(w.arch, 224).model == w.name  # the arch name builds the model of this record
        at_224, at_eval = analyze_name(w.arch, 224), analyze_name(w.arch, w.eval.crop)
        assert round(at_224.macs / 1e9, 3) == w.macs_224, w.name
        assert round(at_eval.macs / 1e9, 3) == w.macs_eval, w.name
        assert at_224.params == w.params, w.name


def _hand_count(model: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """An independent count with module hooks: conv MACs, BatchNorm elements, conv output elements."""
    conv = norm = acts = 0

    def hook(m, inp, out):
        nonlocal conv, norm, acts
        if isinstance(m, nn.Conv2d):
            conv += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            acts += out.numel()
        elif isinstance(m, nn.BatchNorm2d):
            norm += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return conv, norm, acts


@pytest.mark.parametrize("arch", ["cspresnext50", "cspdarknet53"])
def test_counts_agree_with_a_hand_count_at_an_odd_size(arch):
    with torch.device("meta"):  # shapes are all a count needs: no weights to initialise, no compute
        model = cspnet.get_model(arch)
        conv, norm, acts = _hand_count(model, torch.zeros(1, 3, 72, 88))
    res = analyze(model, (72, 88))
    assert res.resolution == (72, 88)
    assert res.macs_conv == conv
    assert res.activations == acts
    pooled = model.num_features * 3 * 3  # the last map is ceil(72 / 32) x ceil(88 / 32)
    assert res.macs == conv + 2 * norm + pooled
    assert sum(p.macs for p in res.parts) == res.macs + res.macs_head
    assert sum(p.params for p in res.parts) == res.params == cspnet.models.num_params(model)
    assert res.params_backbone + res.params_head == res.params
    assert model.training is False  # left as it was


def test_backbone_only_and_training_mode_restored():
    with torch.device("meta"):
        bb = cspnet.get_model("cspresnet50", features_only=True).train()
    res = analyze(bb, 224)
    assert [p.name for p in res.parts] == ["stem", "stages.0", "stages.1", "stages.2", "stages.3"]
    assert res.macs_head == 0 and res.params_head == 0
    assert res.macs == sum(p.macs for p in res.parts)
    assert round(res.macs / 1e9, 3) == 3.475  # the pool adds only 50k MACs
    assert bb.training


def test_every_number_states_its_resolution():
    res = analyze_name("cspresnet50", 256)
    text = res.format()
    for line in text.splitlines():
        if "MACs" in line or "activations" in line:
            assert "256x256" in line, line
    d = json.loads(res.to_json())
    assert d["resolution"] == [256, 256] and "resolution" in d["convention"]
    assert [p["name"] for p in d["parts"]][-2:] == ["pool", "head"]


def test_cli_analyze(capsys):
    assert main(["analyze", "cspresnet50", "--shape", "256", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert round(d["macs"] / 1e9, 3) == 4.539 and d["resolution"] == [256, 256]
    assert main(["analyze", "cspresnext50"]) == 0
    out = capsys.readouterr().out
    assert "3.097 G" in out and "224x224" in out
    assert main(["analyze", "cspdarknet53", "--image-size", "256", "320"]) == 0  # --shape: mmpretrain's name
    assert "256x320" in capsys.readouterr().out
    assert main(["analyze", "cspdarknet53", "--shape", "0"]) == 2
    assert "shape" in capsys.readouterr().err
    with pytest.raises(InvalidOptionError):
        analyze(nn.Linear(2, 2))
