"""Fine-tuning end to end, the way a user does it: the documented custom config on a folder of three classes, with
nothing but the data's place given, then every command with the run's file alone. And a work dir never loses a run:
each run has its own folder, a live one is locked, and a resume that cannot be exact is refused before it writes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import cspnet
from cspnet import config as C
from cspnet.cli import main as cli
from cspnet import workdirs
from golden import DEMO
from test_train import REPO, load, make_images, one_thread, read_log, run_of  # noqa: F401 (one_thread: a fixture)

CONFIG = REPO / "configs" / "cspnet" / "cspresnet50_finetune_custom.py"
NAMES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """``pets/{train,val}/{cat,dog,fox}/*.png``: three classes of coloured ellipses."""
    root = tmp_path_factory.mktemp("pets")
    for split, per_class, seed in (("train", 8, 0), ("val", 4, 1)):
        make_images(root / split, 3, per_class, seed)
        for i, name in enumerate(NAMES):
            (root / split / f"c{i}").rename(root / split / name)
    return root


def finetune_config(path, data, load_from, extra: str = ""):
    """The documented fine-tune config as a user adapts it: the data's place, its start weights, small images."""
    path.write_text(f"""
_base_ = [{str(CONFIG)!r}]
data_root = {str(data)!r}
load_from = {str(load_from)!r}
model = dict(backbone=dict(frozen_stages=3))  # train the last stage and the head: quick on a CPU
_train = [dict(type='LoadImageFromFile'), dict(type='RandomResizedCrop', scale=32, backend='pillow'),
          dict(type='RandomFlip', prob=0.5), dict(type='PackInputs')]
_test = [dict(type='LoadImageFromFile'), dict(type='ResizeEdge', scale=36, edge='short', backend='pillow'),
         dict(type='CenterCrop', crop_size=32), dict(type='PackInputs')]
train_dataloader = dict(batch_size=8, num_workers=0, dataset=dict(pipeline=_train))
val_dataloader = dict(batch_size=8, num_workers=0, dataset=dict(pipeline=_test))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=2)
param_scheduler = [dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=2)]
env_cfg = dict(channels_last=False)
default_hooks = dict(logger=dict(interval=1))
{extra}
""")
    return path


def copy_run(src, dst):
    """A copy of a run folder whose checkpoints are hard links: hundreds of MB each, and only ever replaced by a
    rename, never written in place (the logs, which are appended to, are copied)."""
    def link_or_copy(a, b):
        return os.link(a, b) if a.endswith((".pth", ".safetensors")) else shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy)


def hashes(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def train_once(tmp_path_factory, pets, recipe_checkpoint):
    """``train_once(kind)``: a finished run of the config, with its EMA (``'ema'``) or without (``'raw'``:
    ``custom_hooks=[]``), made once per kind: ``(config, run folder, kind)``."""
    made = {}

    def train(kind: str):
        if kind not in made:
            tmp = tmp_path_factory.mktemp(f"finetune_{kind}")
            cfg = finetune_config(tmp / "pets.py", pets, recipe_checkpoint("cspresnet50"),
                                  "" if kind == "ema" else "custom_hooks = []")
            assert cli(["train", str(cfg), "--work-dir", str(tmp / "wd")]) == 0  # classes: the folders'
            made[kind] = cfg, run_of(tmp / "wd"), kind
        return made[kind]

    return train


@pytest.fixture(params=["ema", "raw"])
def trained(request, train_once):
    return train_once(request.param)


@pytest.fixture
def ema_run(train_once):
    return train_once("ema")


def test_every_command_takes_the_model_from_the_run_file(trained, pets, tmp_path, capsys):
    cfg, run, kind = trained
    best = load(run / "best.pth")
    val = [r for r in read_log(run.parent) if r["mode"] == "val"]
    # best: the higher of the raw and EMA top-1 (the EMA's on a tie), over the epochs
    score = {(r["epoch"], k): r[k] for r in val for k in ("ema_top1", "top1") if k in r}
    epoch, metric = max(score, key=lambda key: (score[key], -key[0], key[1] == "ema_top1"))
    assert (best["best"]["epoch"], best["best"]["metric"], best["best"]["top1"]) == (epoch, metric, score[epoch, metric])
    assert kind == "ema" or metric == "top1"
    assert best["meta"]["spec"]["num_classes"] == 3 and best["meta"]["spec"]["classes"] == NAMES
    # the slim file holds the weights that chose best, and the spec, readable by all (0644)
    slim = cspnet.get_model(run / "best.safetensors")
    chosen = best["ema"] if metric == "ema_top1" else best["model"]
    assert all(torch.equal(v, chosen[k]) for k, v in slim.state_dict().items())
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in run.glob("*.safetensors"))
    capsys.readouterr()

    # test: the top-1 the run recorded for its best epoch, exactly, from either file
    for weights in ("best.pth", "best.safetensors"):
        assert cli(["test", str(cfg), str(run / weights), "--num-workers", "0"]) == 0
        top1 = re.search(r"^accuracy/top1: (\S+)$", capsys.readouterr().out, re.M).group(1)
        assert float(top1) == pytest.approx(best["best"]["top1"], abs=5e-5), weights
    # predict, cam, export: class names and output shapes from the file alone
    image = next((pets / "val" / "dog").iterdir())
    for weights in ("best.pth", "best.safetensors"):
        assert cli(["predict", str(image), "--weights", str(run / weights), "--topk", "3", "--json"]) == 0
        row = json.loads(capsys.readouterr().out)[0]
        assert sorted(t["class"] for t in row["topk"]) == NAMES
    assert cli(["cam", str(image), "--weights", str(run / "best.pth"), "--output", str(tmp_path / "cam.png")]) == 0
    assert re.search(r"Grad-CAM of \[\d\] (cat|dog|fox)", capsys.readouterr().out)
    onnx = tmp_path / "pets.onnx"
    assert cli(["export", "--weights", str(run / "best.safetensors"), "--output", str(onnx), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)["metadata"]
    assert meta["classes"] == NAMES and meta["model"]["output"]["shape"] == [1, 3]
    assert meta["model"]["input"]["shape"] == [1, 3, 32, 32]
    # convert for timm and mmpretrain: the same weights, and the names where each keeps them
    for layout, suffix in (("timm", ".safetensors"), ("mmpretrain", ".pth")):
        out = tmp_path / f"{layout}{suffix}"
        assert cli(["convert", str(run / "best.pth"), str(out), "--to", layout]) == 0
        model = cspnet.get_model(out)
        assert model.classes == NAMES and all(torch.equal(v, slim.state_dict()[k])
                                              for k, v in model.state_dict().items())
    assert torch.load(tmp_path / "mmpretrain.pth", weights_only=True)["meta"]["dataset_meta"]["classes"] == NAMES
    # --no-ema: the raw weights, on request
    if metric == "ema_top1":
        raw = cspnet.get_model(run / "best.pth", use_ema=False)
        assert torch.equal(raw.state_dict()["head.fc.weight"], best["model"]["head.fc.weight"])


@pytest.mark.reliability("train-head-does-not-fit")
def test_a_head_that_does_not_fit_is_an_error_before_any_weights_load(pets, tmp_path, capsys):
    cfg = finetune_config(tmp_path / "pets.py", pets, tmp_path / "no-such-weights.pth")
    assert cli(["train", str(cfg), "--work-dir", str(tmp_path / "wd"), "--cfg-options",
                "model.head.num_classes=5"]) == 2
    err = capsys.readouterr().err
    assert "the training set has 3 classes" in err and "model.head.num_classes=5" in err
    assert "no-such-weights" not in err and not (tmp_path / "wd").exists()  # nothing read, nothing written


@pytest.mark.reliability("train-load-from-offline")
def test_a_new_run_that_cannot_start_leaves_no_folder(pets, tmp_path, capsys, monkeypatch):
    """``load_from=True`` without a network: one DNS lookup, not huggingface_hub's 30 s of retries; advice for
    each way to give the file; and no empty run folder."""
    monkeypatch.setenv("HF_ENDPOINT", "https://cspnet-test.invalid")  # .invalid never resolves (RFC 2606)
    monkeypatch.delenv("HF_HUB_OFFLINE")  # the suite's default: not offline, just without a network
    cfg = finetune_config(tmp_path / "pets.py", pets, "x", "load_from = True")
    assert cli(["train", str(cfg), "--work-dir", str(tmp_path / "wd"), "--weights-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "https://cspnet-test.invalid unreachable: local Hub cache only" in err
    assert all(s in err for s in ("load_from=PATH", "--weights-dir", "$CSPNET_WEIGHTS_DIR", "$CSPNET_OFFLINE=1"))
    assert workdirs.run_dirs(tmp_path / "wd") == []


@pytest.mark.reliability("train-second-run-same-work-dir")
def test_runs_in_one_work_dir_keep_their_own_files(ema_run, tmp_path):
    """A second run in the same work dir gets its own folder; pruning and last_checkpoint stay inside each."""
    cfg, first, _ = ema_run
    before = hashes(first)
    wd = tmp_path / "wd"
    copy_run(first, wd / first.name)
    assert cli(["train", str(cfg), "--work-dir", str(wd), "--cfg-options",
                "default_hooks.checkpoint.max_keep_ckpts=1"]) == 0
    old, new = workdirs.run_dirs(wd)
    assert old.name == first.name and hashes(old) == before  # the earlier run is untouched
    assert sorted(p.name for p in new.glob("epoch_*")) == ["epoch_2.pth", "epoch_2.safetensors"]  # max_keep_ckpts=1
    assert (new / "last_checkpoint").read_text().strip() == "epoch_2.pth"
    assert workdirs.find_latest(wd) == new / "epoch_2.pth"


@pytest.mark.slow
@pytest.mark.reliability("train-two-runs-at-once")
def test_two_runs_at_once_in_one_work_dir(pets, tmp_path, recipe_checkpoint):
    cfg = finetune_config(tmp_path / "pets.py", pets, recipe_checkpoint("cspresnet50"), "train_cfg = dict(max_epochs=1)")
    wd = tmp_path / "wd"
    runs = [subprocess.Popen([sys.executable, str(REPO / "tools" / "train.py"), str(cfg), "--work-dir", str(wd),
                              "--seed", str(seed)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env={"OMP_NUM_THREADS": "1", **os.environ})
            for seed in (1, 2)]
    outs = [p.communicate(timeout=300)[0] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], outs
    folders = workdirs.run_dirs(wd)
    assert len(folders) == 2  # one each, even when both start in the same second
    assert sorted(load(f / "epoch_1.pth")["seed"] for f in folders) == [1, 2]
    for f in folders:  # each folder's files are its own run's
        seed = load(f / "epoch_1.pth")["seed"]
        assert load(f / "best.pth")["seed"] == seed and f"seed {seed}," in (f / "train.log").read_text()


@pytest.mark.reliability("train-resume-not-exact", "train-resume-live-run")
def test_a_resume_that_cannot_be_exact_changes_nothing(ema_run, pets, tmp_path, capsys):
    cfg, first, _ = ema_run
    wd = tmp_path / "wd"
    run = wd / first.name
    copy_run(first, run)
    (run / "last_checkpoint").write_text("epoch_1.pth\n")  # as if it stopped after epoch 1
    before = hashes(run)
    renamed = tmp_path / "renamed"  # the same images, one class renamed
    shutil.copytree(pets, renamed)
    for split in ("train", "val"):
        (renamed / split / "fox").rename(renamed / split / "owl")
    cases = [
        (["train_dataloader.batch_size=4"], "batch_size: 8 then, 4 now"),
        (["train_cfg.max_epochs=5"], "max_epochs: 2 then, 5 now"),
        ([f"data_root={renamed}"], "trained on classes ['cat', 'dog', 'fox'] but the training set now has "
                                   "['cat', 'dog', 'owl']"),
    ]
    for options, message in cases:
        assert cli(["train", str(cfg), "--work-dir", str(wd), "--resume", "--cfg-options", *options]) == 2
        assert message in capsys.readouterr().err, options
        assert hashes(run) == before and workdirs.run_dirs(wd) == [run]
    # a live run holds its folder: a resume of it is refused, naming the holder
    with workdirs.run_lock(run):
        assert cli(["train", str(cfg), "--work-dir", str(wd), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"belongs to a live training run (pid {os.getpid()} on" in err
    assert hashes(run) == before
    # and with nothing changed, the resume continues that run, in its folder
    assert cli(["train", str(cfg), "--work-dir", str(wd), "--resume"]) == 0
    assert workdirs.run_dirs(wd) == [run] and [r["epoch"] for r in read_log(wd) if r["mode"] == "val"] == [1, 2]


@pytest.mark.reliability("train-work-dir-is-config-folder")
def test_the_resolved_config_never_replaces_an_input(pets, tmp_path, recipe_checkpoint):
    """``--work-dir`` set to the config's own folder: the config stays; the run folder gets the resolved copy."""
    cfg = finetune_config(tmp_path / "pets.py", pets, recipe_checkpoint("cspresnet50"), "train_cfg = dict(max_epochs=1)")
    text = cfg.read_text()
    assert cli(["train", str(cfg), "--work-dir", str(tmp_path)]) == 0
    assert cfg.read_text() == text
    assert C.load_config(run_of(tmp_path) / "pets.py").train_cfg.max_epochs == 1


def test_predict_and_plot_read_the_run(ema_run, tmp_path, capsys):
    cfg, run, _ = ema_run
    capsys.readouterr()
    images = [str(p) for p in sorted((DEMO).iterdir())[:2]]
    assert cli(["predict", *images, "--weights", str(run / "best.safetensors"), "--json"]) == 0
    assert [r["topk"][0]["class"] in NAMES for r in json.loads(capsys.readouterr().out)] == [True, True]
    # a config as --model: one that leaves the head to the data takes the file's; one that says 1000 classes is an
    # error naming both widths (not a random ImageNet head), unless --num-classes asks for a new head
    finetune, base = str(CONFIG), str(REPO / "configs" / "cspnet" / "cspresnet50_8xb32_in1k.py")
    assert cli(["predict", images[0], "--model", finetune, "--weights", str(run / "best.pth"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["topk"][0]["class"] in NAMES
    assert cli(["predict", images[0], "--model", base, "--weights", str(run / "best.pth")]) == 2
    assert "has a 3-class head, but cspresnet50_8xb32_in1k builds 1000 classes" in capsys.readouterr().err
    assert cli(["plot", str(run.parent), "--output", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_the_train_transform_composes_crop_flip_randaugment_erasing_in_order():
    """TrainTransform = crop, flip, RandAugment, erasing, each from the one per-sample generator in that order."""
    import numpy as np
    from PIL import Image

    from cspnet.data.mixing import RandomErasing
    from cspnet.data.randaugment import parse_timm
    from cspnet.data.train_transforms import TrainPipeline, TrainTransform, random_resized_crop_box, sample_rng

    p = TrainPipeline(crop=48, flip_prob=0.5, rand_augment=parse_timm("rand-m9-mstd0.5-inc1"),
                      erasing=RandomErasing(erase_prob=1.0, mode="rand"))
    image = Image.open(DEMO / "dog.jpg").convert("RGB").reduce(8)
    for index in range(4):
        rng = sample_rng(3, 1, index)  # the reference, step by step
        left, top, w, h = random_resized_crop_box(image.width, image.height, p, rng)
        want = image.crop((left, top, left + w, top + h)).resize((48, 48), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            want = want.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        want = p.erasing(np.asarray(p.rand_augment(want, rng)), rng)
        got = TrainTransform(p)(image, sample_rng(3, 1, index))
        assert np.array_equal(got.permute(1, 2, 0).numpy(), want)


def test_the_ra_recipe_trains_resumes_exactly_and_logs_to_tensorboard(pets, tmp_path, recipe_checkpoint):
    """Mixup/CutMix (mmpretrain 1.x's key), RandAugment, random erasing, RMSpropTF and TensorBoard in one run; a
    resume from epoch 1 ends with the same weights (every draw comes from seeded per-sample or per-batch streams)."""
    pytest.importorskip("tensorboard")  # a test dependency; without it the config is refused (test_config_keys)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = finetune_config(tmp_path / "ra.py", pets, recipe_checkpoint("cspresnet50"), """
model = dict(train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))
train_dataloader['dataset']['pipeline'] = [
    dict(type='LoadImageFromFile'), dict(type='RandomResizedCrop', scale=32, backend='pillow'),
    dict(type='RandomFlip', prob=0.5), dict(type='RandAugment', policies='timm_increasing', magnitude_std=0.5),
    dict(type='RandomErasing', erase_prob=0.5, mode='rand', fill_color=[104, 116, 124], fill_std=[57, 57, 58]),
    dict(type='PackInputs')]
optim_wrapper = dict(optimizer=dict(_delete_=True, type='RMSpropTF', lr=1e-3, eps=1e-3, momentum=0.9))
visualizer = dict(vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
randomness = dict(seed=0, deterministic=True)
""")
    assert cli(["train", str(cfg), "--work-dir", str(tmp_path / "wd")]) == 0
    run = run_of(tmp_path / "wd")
    events = EventAccumulator(str(run / "vis_data"))
    events.Reload()
    assert {"train/loss", "train/lr", "val/top1", "val/ema_top1"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/top1")] == [3, 6]  # 24 images / 8 per step, 2 epochs
    # resume after epoch 1 in a copy of the run: the same epoch 2, bit for bit
    again = tmp_path / "again" / run.name
    copy_run(run, again)
    for name in ("epoch_2.pth", "epoch_2.safetensors", "best.pth", "best.safetensors"):
        (again / name).unlink(missing_ok=True)
    (again / "last_checkpoint").write_text("epoch_1.pth\n")
    assert cli(["train", str(cfg), "--work-dir", str(again.parent), "--resume"]) == 0
    got, want = load(again / "epoch_2.pth"), load(run / "epoch_2.pth")
    assert all(torch.equal(got["model"][k], v) for k, v in want["model"].items())


@pytest.mark.slow
def test_a_terminal_shows_a_progress_bar(pets, tmp_path, recipe_checkpoint):
    """On a terminal (a pseudo-terminal here, 150 columns) training draws a bar with loss, lr, img/s and time left;
    the log lines stay whole above it."""
    import pty

    cfg = finetune_config(tmp_path / "pets.py", pets, recipe_checkpoint("cspresnet50"), "train_cfg = dict(max_epochs=1)")
    out = tmp_path / "tty.out"
    command = f"stty cols 150 rows 40; {sys.executable} {REPO / 'tools' / 'train.py'} {cfg} --work-dir {tmp_path / 'wd'}"
    with open(out, "wb") as f:
        def read(fd):
            data = os.read(fd, 65536)
            f.write(data)
            return data
        assert pty.spawn(["sh", "-c", command], read) == 0
    text = out.read_bytes().decode(errors="replace").replace("\r", "\n")
    assert re.search(r"epoch 1/1: +\d+%\|.*\| \d/3 .*loss \d\.\d{4}  lr \d\.\d{3}e-\d\d  [\d.]+ img/s  0:\d\d:\d\d left",
                     text), text[-2000:]
    assert re.search(r"^\d\d:\d\d:\d\d INFO Epoch\(train\) \[1\]\[3/3\]", text, re.M)


def test_test_evaluates_as_timm_with_crop_pct(ema_run, pets, capsys):
    """``--crop-pct F --interpolation bilinear``: timm's eval transform (short edge floor(crop / F)) beside
    mmpretrain's; the top-1 is that of the model on those pixels, computed here from the images."""
    from cspnet.data.presets import EvalPreset
    from cspnet.data.transforms import EvalTransform

    assert EvalPreset(288, 256).with_crop_pct(0.887) == EvalPreset(288, 256)  # timm's published CSPNet eval
    assert EvalPreset(256, 224).with_crop_pct(0.875, "bilinear") == EvalPreset(256, 224, "bilinear")
    assert EvalPreset(36, 32).with_crop_pct(0.5).resize == 64
    cfg, run, _ = ema_run
    capsys.readouterr()
    assert cli(["test", str(cfg), str(run / "best.pth"), "--num-workers", "0", "--crop-pct", "0.5",
                "--interpolation", "bilinear", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["eval"]["resize"], summary["eval"]["crop"], summary["eval"]["interpolation"]) == (64, 32, "bilinear")
    model = cspnet.get_model(run / "best.pth")
    t = EvalTransform(model.transform.preset.with_crop_pct(0.5, "bilinear"))
    images = [(p, NAMES.index(p.parent.name)) for p in sorted((pets / "val").rglob("*.png"))]
    with torch.no_grad():
        hits = [model(t(p)[None]).argmax(1).item() == y for p, y in images]
    assert summary["metrics"]["accuracy/top1"] == pytest.approx(100 * sum(hits) / len(hits), abs=1e-4)
    for bad in ("0", "1.5", "x"):
        with pytest.raises(SystemExit):
            cli(["test", str(cfg), str(run / "best.pth"), "--crop-pct", bad])
    assert "expected a fraction in (0, 1]" in capsys.readouterr().err
    # --crop-size: timm's input size (its CSPResNeXt-50 crops 256 where mmpretrain's config crops 224)
    assert cli(["test", str(cfg), str(run / "best.pth"), "--num-workers", "0", "--crop-pct", "0.5",
                "--crop-size", "36", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["eval"]["resize"], summary["eval"]["crop"]) == (72, 36)
    assert cli(["test", str(cfg), str(run / "best.pth"), "--crop-size", "36"]) == 2
    assert "give --crop-pct too" in capsys.readouterr().err
