"""Weights in every layout give mmpretrain's and timm's logits; converters are strict and lossless."""

import os
import subprocess
import sys

import pytest
import torch

import cspnet
from cspnet.cli import main as cli
from cspnet.errors import CheckpointError
from cspnet.weights import convert
from cspnet.weights.files import read_weights
from golden import ARCH_NAMES, golden_inputs, golden_logits, logits_meta, read_keys, recipe_state_dict

MM_NAMES = {a: logits_meta()["models"][a]["mmpretrain_name"] for a in ARCH_NAMES}


@pytest.fixture(scope="module")
def golden_files(recipe_checkpoint):
    """Per arch: the recipe weights as a timm-layout safetensors file and an mmpretrain-layout .pth file."""
    return {arch: {"timm": recipe_checkpoint(arch, "timm", ".safetensors"),
                   "mmpretrain": recipe_checkpoint(arch, "mmpretrain", ".pth")} for arch in ARCH_NAMES}


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_golden_logits_from_timm_and_mmpretrain_files(golden_files, arch):
    from_timm = cspnet.get_model(arch, pretrained=golden_files[arch]["timm"])
    from_mm = cspnet.get_model(MM_NAMES[arch], pretrained=golden_files[arch]["mmpretrain"])
    a, b = from_timm.state_dict(), from_mm.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # the same model, so one forward proves both
    with torch.no_grad():
        logits = from_mm(golden_inputs(arch))
    torch.testing.assert_close(logits, golden_logits(arch), atol=1e-4, rtol=0)
    assert logits.argmax(1).tolist() == logits_meta()["models"][arch]["top1"]


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_mmpretrain_file_keys_equal_golden_line_by_line(golden_files, arch):
    obj = torch.load(golden_files[arch]["mmpretrain"], weights_only=True)
    assert set(obj) == {"state_dict", "meta"}  # mmpretrain's published layout
    got = [(k, tuple(v.shape)) for k, v in obj["state_dict"].items()]
    assert got == read_keys(MM_NAMES[arch])


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_round_trips_are_lossless(arch):
    sd = recipe_state_dict(arch)
    mm = convert.convert_state_dict(sd, arch, "mmpretrain")
    cs = convert.convert_state_dict(mm, arch, "cspnet")
    back = convert.convert_state_dict(cs, arch, "timm")
    assert list(back) == list(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert convert.detect_layout(mm) == "mmpretrain" and convert.detect_layout(cs) == "cspnet"


def test_converter_rejects_mismatch_with_a_report():
    sd = recipe_state_dict("cspresnet50")
    sd["stages.0.extra.weight"] = torch.zeros(1)
    del sd["stages.1.conv_exp.bn.bias"]
    sd["stages.2.conv_exp.conv.weight"] = torch.zeros(3, 3, 1, 1)
    with pytest.raises(CheckpointError) as e:
        convert.to_cspnet(sd, "cspresnet50")
    msg = str(e.value)
    assert "missing 1: backbone.stages.1.conv_exp.bn.bias" in msg
    assert "unexpected 1: stages.0.extra.weight" in msg
    assert "wrong shape 1: backbone.stages.2.conv_exp.conv.weight (3, 3, 1, 1)" in msg


def test_finetune_loads_everything_but_the_head(golden_files):
    model = cspnet.get_model("cspresnet50", pretrained=golden_files["cspresnet50"]["mmpretrain"], num_classes=10)
    ref = recipe_state_dict("cspresnet50")
    got = model.state_dict()
    assert all(torch.equal(got["backbone." + k], v) for k, v in ref.items() if not k.startswith("head."))
    assert model.head.fc.weight.shape == (10, 1024) and model.classes is None


def test_features_only_loads_backbone(golden_files):
    bb = cspnet.get_model("cspdarknet53", pretrained=golden_files["cspdarknet53"]["timm"], features_only=True)
    assert bb.out_indices == (0, 1, 2, 3, 4)
    ref = recipe_state_dict("cspdarknet53")
    assert torch.equal(bb.state_dict()["stages.4.conv_transition.conv.weight"], ref["stages.4.conv_transition.conv.weight"])


def test_training_checkpoint_wrappers_and_prefixes(tmp_path):
    sd = convert.convert_state_dict(recipe_state_dict("cspresnext50"), "cspresnext50", "cspnet")
    wrapped = {"model": {"module._orig_mod." + k: v for k, v in sd.items()}, "epoch": 3,
               "ema": {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}}
    torch.save(wrapped, tmp_path / "train.pth")
    plain = read_weights(tmp_path / "train.pth").state_dict
    ema = read_weights(tmp_path / "train.pth", use_ema=True).state_dict
    k = "backbone.stem.conv1.conv.weight"
    assert torch.equal(plain[k], sd[k]) and torch.equal(ema[k], sd[k] + 1)


def test_cli_convert_round_trip(golden_files, tmp_path):
    src = golden_files["cspresnext50"]["mmpretrain"]
    a, b, c = tmp_path / "a.safetensors", tmp_path / "b.pth", tmp_path / "c.pth"
    assert cli(["convert", str(src), str(a), "--to", "timm"]) == 0
    assert cli(["convert", str(a), str(b), "--to", "cspnet"]) == 0
    assert cli(["convert", str(b), str(c), "--to", "mmpretrain"]) == 0
    orig, new = torch.load(src, weights_only=True), torch.load(c, weights_only=True)
    assert list(orig["state_dict"]) == list(new["state_dict"])
    assert all(torch.equal(orig["state_dict"][k], new["state_dict"][k]) for k in orig["state_dict"])
    assert cli(["convert", str(src), str(c), "--to", "timm"]) == 2  # exists: refuses without --force
    assert torch.load(c, weights_only=True).keys() == {"state_dict", "meta"}  # untouched


@pytest.mark.slow
def test_predict_cli_with_weights_file(golden_files):
    out = subprocess.run(
        [sys.executable, "-m", "cspnet", "predict", "demo/bird.JPEG", "--weights", str(golden_files["cspdarknet53"]["timm"])],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)), check=True,
    ).stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith("demo/bird.JPEG") and len(lines) == 6
    assert "[557]" in lines[1]  # golden top-1 of these weights
    assert cspnet.get_model("cspdarknet53").classes[557] in lines[1]
