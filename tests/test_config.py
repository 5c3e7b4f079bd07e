"""Config files: _base_ merging, --cfg-options, unknown keys, and what the three CSPNet configs resolve to."""

from __future__ import annotations

from pathlib import Path

import pytest

from cspnet import config as C
from cspnet.data.datasets import DataSpec
from cspnet.data.transforms import EvalPreset
from cspnet.errors import ConfigError
from cspnet.spec import BackboneOptions

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "cspnet"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_merge_lists_replace_and_delete(tmp_path):
    write(tmp_path / "_base_" / "a.py", "model = dict(type='ImageClassifier', backbone=dict(type='CSPResNet', "
                                        "depth=50, out_indices=(3,)), head=dict(num_classes=1000, topk=(1, 5)))\n"
                                        "test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]\n"
                                        "test_dataloader = dict(dataset=dict(pipeline=[dict(type='ResizeEdge', "
                                        "scale=72), dict(type='CenterCrop', crop_size=64)]))\n")
    write(tmp_path / "_base_" / "b.py", "train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=1)\n"
                                        "import math\nlr = math.pi\n")  # a module and a non-schema name
    cfg_path = write(tmp_path / "sub" / "child.py", (
        "_base_ = ['../_base_/a.py', '../_base_/b.py']\n"
        "model = dict(backbone=dict(depth=50, frozen_stages=1), head=dict(_delete_=True, num_classes=10))\n"
        "test_pipeline = [dict(type='PackInputs')]\n"
        "train_cfg = dict(max_epochs=5)\n"
        "_private = 1\n"
    ))
    cfg = C.load_config(cfg_path, schema=C.merge(C.SCHEMA, {"lr": C.ANY}))
    assert cfg.model.backbone == {"type": "CSPResNet", "depth": 50, "out_indices": (3,), "frozen_stages": 1}
    assert cfg.model.head == {"num_classes": 10}  # _delete_ replaced the inherited dict, and is gone itself
    assert cfg.test_pipeline == [{"type": "PackInputs"}]  # lists replace
    assert cfg.train_cfg == {"by_epoch": True, "max_epochs": 5, "val_interval": 1}
    assert "math" not in cfg and "_private" not in cfg and "_base_" not in cfg
    assert cfg.filename == str(cfg_path)
    model = C.model_spec(cfg)
    assert (model.arch, model.num_classes, model.eval) == ("cspresnet50", 10, EvalPreset(72, 64, "bilinear"))
    assert model.backbone == BackboneOptions(out_indices=(3,), frozen_stages=1) and model.name == "child"


def test_base_errors(tmp_path):
    write(tmp_path / "a.py", "train_cfg = dict(max_epochs=1)\n")
    write(tmp_path / "b.py", "train_cfg = dict(max_epochs=2)\n")
    with pytest.raises(ConfigError, match=r"key 'train_cfg' is defined by two _base_ files"):
        C.load_config(write(tmp_path / "dup.py", "_base_ = ['a.py', 'b.py']\n"))
    with pytest.raises(ConfigError, match=r"_base_ file 'missing.py' not found"):
        C.load_config(write(tmp_path / "m.py", "_base_ = 'missing.py'\n"))
    write(tmp_path / "x.py", "_base_ = 'y.py'\n")
    with pytest.raises(ConfigError, match="cycle"):
        C.load_config(write(tmp_path / "y.py", "_base_ = 'x.py'\n"))
    with pytest.raises(ConfigError, match=r"line 1: syntax error"):
        C.load_config(write(tmp_path / "syntax.py", "model = dict(\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        C.load_config(tmp_path / "nope.py")


@pytest.mark.parametrize("raw, value", [
    ("0.1", 0.1), ("(1, 5)", (1, 5)), ("None", None), ("true", True), ("False", False), ("abc", "abc"),
    ("[a,b]", ["a", "b"]), ("a,b", ["a", "b"]), ("[1,2]", [1, 2]), ("[(1,2),(3,4)]", [(1, 2), (3, 4)]),
    ("[a,[b,c]]", ["a", ["b", "c"]]), ("'x,y'", "x,y"), ("/data/imagenet", "/data/imagenet"),
])
def test_parse_value(raw, value):
    assert C.parse_value(raw) == value


def test_cfg_options_override_nested_keys_and_list_items():
    cfg = C.load_config(CONFIGS / "cspdarknet50_8xb32_in1k.py", [
        "test_dataloader.dataset.pipeline.1.scale=64", "test_dataloader.dataset.pipeline.2.crop_size=56",
        "test_dataloader.dataset.data_root=/data/in1k", "model.head.num_classes=10",
        "optim_wrapper.optimizer.lr=0.05", "param_scheduler.milestones=[10,20]", "train_dataloader.batch_size=8",
    ])
    test = C.eval_spec(cfg)
    assert test.model.eval == EvalPreset(64, 56, "bicubic") and test.data.root == "/data/in1k"
    assert test.model.num_classes == 10
    train = C.train_spec(cfg)
    assert train.optim.lr == 0.05 and train.schedule[0].steps == (10, 20)
    assert train.train_loader.batch_size == 8 and train.val_loader.batch_size == 32  # no aliasing


@pytest.mark.parametrize("options, message", [
    (["model.backbone.dpeth=53"], r"unknown key 'model.backbone.dpeth' \(did you mean 'model.backbone.depth'\?\)"),
    (["optim_wrapper.optimizer.weight_dacay=0"], r"did you mean 'optim_wrapper.optimizer.weight_decay'"),
    (["test_dataloder.batch_size=1"], r"did you mean 'test_dataloader'"),
    (["test_dataloader.dataset.pipeline.9.scale=1"], r"list of 4 items; '9' is not an index"),
    (["model.backbone.type.x=1"], r"model.backbone.type is a str"),
    (["novalue"], r"expected KEY=VALUE"),
    (["test_dataloader.dataset.pipeline.1.type=Resize"], r"type='Resize' is not supported.*did you mean 'ResizeEdge'"),
    (["test_pipeline.1.scale=64"], r"test_pipeline is a variable of the config file.*override "
                                   r"test_dataloader.dataset.pipeline.1.scale instead"),
    (["model.neck.dim=3"], r"model.neck.dim=3 is not supported \(only 2\): global average pooling"),
    (["test_dataloader.dataset.pipeline.1.edge=long"], r"edge='long' is not supported \(only 'short'\)"),
])
def test_unknown_or_malformed_override_is_an_error(options, message):
    with pytest.raises(ConfigError, match=message) as e:
        C.load_config(CONFIGS / "cspresnet50_8xb32_in1k.py", options)
    if "unknown key" in message:
        assert "--cfg-options" in str(e.value)


def test_typo_in_a_config_file_names_the_file_and_the_closest_key(tmp_path):
    cfg_path = write(tmp_path / "typo.py", f"_base_ = '{CONFIGS / 'cspresnet50_8xb32_in1k.py'}'\n"
                                           "train_cfg = dict(max_epoch=5)\n")
    with pytest.raises(ConfigError, match=r"typo.py'.*unknown key 'train_cfg.max_epoch' "
                                          r"\(did you mean 'train_cfg.max_epochs'\?\)"):
        C.load_config(cfg_path)
    cfg = C.load_config(CONFIGS / "cspresnet50_8xb32_in1k.py")
    with pytest.raises(AttributeError, match="did you mean 'model'"):
        cfg.modle


@pytest.mark.parametrize("name, arch, resize, crop, width", [
    ("cspdarknet50", "cspdarknet53", 288, 256, 1024),
    ("cspresnet50", "cspresnet50", 288, 256, 1024),
    ("cspresnext50", "cspresnext50", 256, 224, 2048),
])
def test_the_three_configs(name, arch, resize, crop, width):
    cfg = C.load_config(CONFIGS / f"{name}_8xb32_in1k.py")
    test, train = C.eval_spec(cfg), C.train_spec(cfg)
    assert test.model.arch == arch and cfg.model.head.in_channels == width
    assert (test.model.num_classes, test.model.backbone, len(test.model.classes)) == (1000, BackboneOptions(), 1000)
    assert test.model.eval == EvalPreset(resize, crop, "bicubic", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    assert train.model.eval == test.model.eval  # the val pipeline: what best.pth is chosen with
    aug = train.augment
    assert (aug.crop, aug.interpolation, aug.flip_prob, aug.scale) == (224, "bicubic", 0.5, (0.08, 1.0))
    assert train.optim == C.OptimSpec("SGD", 0.1, (("momentum", 0.9),), 0.0001)
    assert train.schedule == (C.Scheduler("MultiStepLR", steps=(30, 60, 90), gamma=0.1),)
    assert train.max_epochs == 100 and train.base_batch_size == 256 and not train.auto_scale_lr
    for split, data in (("train", train.train), ("val", train.val), ("val", test.data)):
        assert data == DataSpec("ImageNet", "data/imagenet", split)
    assert (test.loader.batch_size, test.loader.num_workers, test.metrics.topk) == (32, 5, (1, 5))


def test_pretty_dump_round_trips(tmp_path):
    cfg = C.load_config(CONFIGS / "cspresnext50_8xb32_in1k.py", ["model.backbone.out_indices=[2,3]"])
    dumped = C.load_config(cfg.dump(tmp_path / "resolved.py"))
    assert dumped == cfg and dumped.to_dict() == cfg.to_dict()
    assert "model = {'type': 'ImageClassifier'" in cfg.pretty_text


@pytest.mark.parametrize("options, message", [
    (["data_preprocessor.to_rgb=False"], "to_rgb=False"),
    (["model.head.in_channels=2048"], r"in_channels=2048 but cspresnet50 outputs 1024"),
    (["model.backbone.depth=101"], r"type='CSPResNet' depth=101 is not a CSPNet"),
    (["test_dataloader.dataset.pipeline=[]"], r"pipeline is missing"),
    (["test_dataloader.batch_size=abc"], r"test_dataloader.batch_size='abc': expected an integer >= 1"),
    (["test_dataloader.batch_size=1e100"], r"batch_size=1e\+100: expected an integer >= 1"),
    (["model.head.num_classes=ten"], r"num_classes='ten': expected an integer >= 0"),
    (["test_dataloader.dataset.pipeline.1=None"], r"pipeline.1=None: each step must be a dict"),
    (["data_preprocessor.std=[0,0,0]"], r"std=\[0, 0, 0\] must be positive"),
])
def test_settings_this_library_cannot_honour_are_errors(options, message):
    cfg = C.load_config(CONFIGS / "cspresnet50_8xb32_in1k.py", options)
    with pytest.raises(ConfigError, match=message):
        C.eval_spec(cfg)


@pytest.mark.reliability("config-is-code")
def test_a_config_file_is_code_and_runs_when_read(tmp_path):
    """As mmengine's: reading a config runs it (README "Trust"); checkpoints, by contrast, never run code. A config
    that raises says which file, and a config from a folder the user names is read from there only."""
    marker = tmp_path / "ran"
    cfg = tmp_path / "c.py"
    cfg.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('yes')\nmodel = dict()\n")
    C.load_config(cfg, schema=None)
    assert marker.read_text() == "yes"
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=r"bad\.py.*boom"):
        C.load_config(bad, schema=None)


@pytest.mark.reliability("config-huge-sizes")
def test_sizes_no_machine_holds_are_refused_before_any_work(tmp_path, capsys):
    """A resize, crop or head far beyond any model's (a typo, or a hostile config or checkpoint) is refused where it
    is read, not met as a failed allocation of gigabytes later."""
    from cspnet.cli import main as cli
    from cspnet.errors import CheckpointError
    from cspnet.spec import ModelSpec

    base = str(REPO / "configs" / "cspnet" / "cspresnet50_8xb32_in1k.py")
    cases = [(["test_dataloader.dataset.pipeline.1.scale=100000"], "scale=100000 is over 4096 pixels"),
             (["test_dataloader.dataset.pipeline.2.crop_size=5000"], "crop_size=5000 is over 4096 pixels"),
             (["model.head.num_classes=10000000000"], "num_classes=10,000,000,000 is over 100,000")]
    for options, message in cases:
        assert cli(["test", base, str(tmp_path / "none.pth"), "--cfg-options", *options]) == 2
        assert message in capsys.readouterr().err, options
    assert cli(["train", base, "--work-dir", str(tmp_path / "wd"), "--cfg-options",
                "train_dataloader.dataset.pipeline.1.scale=100000"]) == 2
    assert "scale=100000 is over 4096 pixels" in capsys.readouterr().err and not (tmp_path / "wd").exists()
    # the same bounds hold for what a checkpoint's recorded spec says
    meta = ModelSpec("cspresnet50", EvalPreset(288, 256), 3).to_meta()
    for change in ({"num_classes": 10**10}, {"eval": {**meta["eval"], "resize": 10**6, "crop": 10**6}}):
        with pytest.raises(CheckpointError, match=r"'w\.pth'.*(over 100,000|over 4096)"):
            ModelSpec.from_meta({**meta, **change}, "checkpoint 'w.pth'")
