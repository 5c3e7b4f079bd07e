"""A checkpoint carries its model: every file cspnet writes records its ModelSpec (architecture, head, class names,
eval preprocessing), and every command builds its model from the file. An option may confirm or deliberately replace
what the file says (``num_classes`` re-heads, for fine-tuning); a conflict is an error, never a silent replacement."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

import cspnet
from cspnet.cli import main as cli
from cspnet.data.presets import EvalPreset
from cspnet.data.transforms import EvalTransform
from cspnet.errors import CheckpointError, InvalidOptionError
from cspnet.models import ImageClassifier
from cspnet.spec import BackboneOptions, ModelSpec
from cspnet.weights import read
from cspnet.weights.files import read_weights, save_state_dict
from cspnet.weights.convert import convert_state_dict
from golden import DEMO, recipe_state_dict
from test_evaluate import R50

NAMES = ("cat", "dog", "fox")


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """A 3-class CSPResNet-50 (the recipe backbone, a seeded head) as cspnet writes it: ``(file, spec, state)``."""
    sd = convert_state_dict(recipe_state_dict("cspresnet50"), "cspresnet50", "cspnet")
    sd["head.fc.weight"] = torch.randn(3, 1024, generator=torch.Generator().manual_seed(0)) * 0.05
    sd["head.fc.bias"] = torch.tensor([0.1, -0.1, 0.0])
    spec = ModelSpec("cspresnet50", EvalPreset(72, 64, "bilinear"), 3, NAMES, 0.1, BackboneOptions(frozen_stages=1),
                     name="pets")
    return save_state_dict(sd, tmp_path_factory.mktemp("pets") / "pets.safetensors", "cspnet", spec), spec, sd


def reference_top(sd, spec, image) -> list[int]:
    """The top-3 labels, computed here from the state dict and the spec's preprocessing, without the zoo."""
    model = ImageClassifier("cspresnet50", 3).eval()
    model.load_state_dict(sd)
    t = EvalTransform(spec.eval)
    with torch.no_grad():
        return model(t(image)[None]).topk(3).indices[0].tolist()


@pytest.mark.parametrize("layout, suffix", [("timm", ".pth"), ("timm", ".safetensors"), ("mmpretrain", ".pth"),
                                            ("cspnet", ".pth")])
def test_converted_files_keep_the_spec(pets, tmp_path, layout, suffix, capsys):
    src, spec, _ = pets
    dst = tmp_path / f"out{suffix}"
    assert cli(["convert", str(src), str(dst), "--to", layout, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["spec"] == spec.to_meta()
    assert read_weights(dst).spec == spec and read(dst).spec == spec
    if layout == "mmpretrain":  # mmpretrain reads its class names from meta.dataset_meta
        assert torch.load(dst, weights_only=True)["meta"]["dataset_meta"]["classes"] == list(NAMES)


def test_every_command_builds_the_checkpoints_model(pets, tmp_path, capsys):
    src, spec, sd = pets
    want = reference_top(sd, spec, DEMO / "dog.jpg")
    for args in (["--weights", str(src)], ["--model", str(src)], ["--model", "cspresnet50", "--weights", str(src)]):
        assert cli(["predict", str(DEMO / "dog.jpg"), *args, "--topk", "3", "--json", "--device", "cpu"]) == 0
        row = json.loads(capsys.readouterr().out)[0]
        assert row["model"] == "pets" and [t["label"] for t in row["topk"]] == want
        assert [t["class"] for t in row["topk"]] == [NAMES[i] for i in want] and "synset" not in row["topk"][0]
    out = tmp_path / "pets.onnx"
    assert cli(["export", "cspresnet50", "--weights", str(src), "--output", str(out), "--no-verify", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)["metadata"]
    assert meta["spec"] == spec.to_meta() and meta["classes"] == list(NAMES)
    assert meta["model"]["output"]["shape"] == [1, 3] and meta["model"]["input"]["shape"] == [1, 3, 64, 64]
    assert cspnet.export.read_metadata(out)["spec"]["classes"] == list(NAMES)
    assert cli(["cam", str(DEMO / "dog.jpg"), "--weights", str(src), "--output", str(tmp_path / "c.png"),
                "--device", "cpu"]) == 0
    assert f"pets, layer backbone.stages.3): Grad-CAM of [{want[0]}] {NAMES[want[0]]}" in capsys.readouterr().out
    model = cspnet.get_model(src)  # from Python, the file alone
    assert (model.num_classes, model.classes, model.transform.preset, model.name) == (3, list(NAMES), spec.eval, "pets")
    assert model.head.drop.p == 0.1 and model.backbone.frozen_stages == 1


def test_the_one_weights_call(pets):
    """``weights.load(model_or_spec, pretrained)``: resolve -> read -> convert -> load, into a model or a spec."""
    src, spec, sd = pets
    built = cspnet.weights.load(spec, src)
    assert built.classes == list(NAMES) and torch.equal(built.head.fc.weight, sd["head.fc.weight"])
    model = ImageClassifier("cspresnet50", 3)
    assert cspnet.weights.load(model, src) is model and torch.equal(model.head.fc.bias, sd["head.fc.bias"])
    with pytest.raises(CheckpointError, match="holds cspresnet50 weights, not cspdarknet53"):
        cspnet.weights.load(ImageClassifier("cspdarknet53", 3), src)


def test_options_confirm_or_deliberately_replace(pets):
    src, spec, sd = pets
    assert cspnet.get_model("cspresnet50", pretrained=src, num_classes=3).classes == list(NAMES)  # confirmed
    reheaded = cspnet.get_model("cspresnet50", pretrained=src, num_classes=5)  # a new fine-tune: said in the log
    assert reheaded.num_classes == 5 and reheaded.classes is None
    assert torch.equal(reheaded.state_dict()["backbone.stem.conv1.conv.weight"], sd["backbone.stem.conv1.conv.weight"])
    backbone = cspnet.get_model("cspresnet50", pretrained=src, features_only=True)
    assert torch.equal(backbone.state_dict()["stem.conv1.conv.weight"], sd["backbone.stem.conv1.conv.weight"])


def test_a_file_without_a_spec_still_decides_the_head(tmp_path):
    """A timm-layout file with a 10-class head (no spec: not written by cspnet) builds a 10-class model; it used
    to get a random 1000-class head."""
    sd = recipe_state_dict("cspresnet50")
    sd["head.fc.weight"], sd["head.fc.bias"] = sd["head.fc.weight"][:10], sd["head.fc.bias"][:10]
    path = save_state_dict(sd, tmp_path / "ten.pth", "timm")
    model = cspnet.get_model("cspresnet50", pretrained=path)
    assert model.num_classes == 10 and model.classes is None
    assert torch.equal(model.head.fc.weight, sd["head.fc.weight"])
    assert model.transform.preset == cspnet.get_weights_info("cspresnet50").eval  # the published preprocessing


def test_conflicts_are_errors(pets, tmp_path, capsys):
    src, _, _ = pets
    assert cli(["predict", str(DEMO / "dog.jpg"), "--model", "cspresnext50", "--weights", str(src)]) == 2
    assert "holds cspresnet50 weights, not cspresnext50" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        cspnet.get_model(src, use_ema=True)
    with pytest.raises(InvalidOptionError, match="give the file once"):
        cspnet.get_model(src, pretrained=str(src))
    # an evaluation never re-heads: the config's head must be the checkpoint's
    assert cli(["test", R50, str(src), "--cfg-options", "test_dataloader.dataset.data_root=/nowhere"]) == 2
    assert "/nowhere" in capsys.readouterr().err  # the data is checked first (in a second, before any download)


def test_cspnet_test_evaluates_the_checkpoint_with_its_classes(pets, tmp_path, capsys):
    src, spec, sd = pets
    root = tmp_path / "pets"
    for i, name in enumerate(NAMES):
        (root / "val" / name).mkdir(parents=True)
        for image in sorted(DEMO.iterdir())[i:i + 2]:
            shutil.copy(image, root / "val" / name / image.name)
    labels = [(p, NAMES.index(p.parent.name)) for p in sorted(root.rglob("*.*"))]
    hits = [reference_top(sd, spec, p)[0] == y for p, y in labels]
    common = [R50, str(src), "--num-workers", "0", "--cfg-options", "test_dataloader.dataset.type=CustomDataset",
              f"test_dataloader.dataset.data_root={root}", "test_dataloader.dataset.pipeline.1.scale=72",
              "test_dataloader.dataset.pipeline.1.interpolation=bilinear", "test_dataloader.dataset.pipeline.2.crop_size=64"]
    assert cli(["test", *common]) == 2  # the config's 1000-class head does not fit the data
    assert "the model predicts 1000 classes (model.head.num_classes) but the test set has 3" in capsys.readouterr().err
    assert cli(["test", *common, "model.head.num_classes=4", "test_dataloader.dataset.classes=[cat,dog,fox,owl]"]) == 2
    assert "has a 3-class head, but the config builds 4 classes: set model.head.num_classes=3" in \
        capsys.readouterr().err  # nor the checkpoint
    assert cli(["test", *common, "model.head.num_classes=3"]) == 0
    out = capsys.readouterr().out  # top-5 of 3 classes is left out
    assert re.search(r"^accuracy/top1: (\S+)$", out, re.M).group(1) == f"{100 * sum(hits) / len(hits):.4f}", out
    assert cli(["test", *common, "model.head.num_classes=3", "test_dataloader.dataset.classes=[dog,cat,fox]"]) == 2
    assert "trained on classes ['cat', 'dog', 'fox']" in capsys.readouterr().err  # labels would mean other classes


@pytest.mark.parametrize("change", [{"spec_version": 2}, {"extra": 1}, {"eval": 5}, {"classes": ["a"]}, {"arch": 5},
                                    {"backbone": {"bogus": 1}}, {"num_classes": -1}])
def test_a_damaged_spec_is_refused_naming_the_file(pets, tmp_path, change):
    _, spec, sd = pets
    path = save_state_dict(sd, tmp_path / "bad.safetensors", "cspnet")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path),
              metadata={"spec": json.dumps({**spec.to_meta(), **change})})
    with pytest.raises(CheckpointError, match=r"bad.safetensors'.*recorded model spec is unreadable"):
        cspnet.get_model(path)
