"""Training and fine-tuning (``cspnet train`` / tools/train.py) on tiny generated datasets, on CPU.

The images show a coloured ellipse on grey noise; the class is the colour. Everything runs the real CSPResNet-50 at
32x32 (its last feature map is 1x1), through the public CLI or config API.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import golden
from cspnet.cli import main as cli
from cspnet import config as C
from cspnet.config.resolve import schedule_spec
from cspnet.data.train_transforms import TrainPipeline, random_resized_crop_box, sample_rng
from cspnet import workdirs
from cspnet.engine.optim import LRSchedule

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "cspnet" / "cspresnet50_8xb32_in1k.py"
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 70, 220), (230, 220, 40), (200, 60, 200), (40, 210, 210),
           (250, 140, 20), (255, 255, 255), (10, 10, 10), (120, 70, 20)]


def make_images(root: Path, classes: int, per_class: int, seed: int) -> Path:
    """``root/c<k>/<i>.png``: a class-coloured ellipse on grey noise, 40-63 px, random position."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(40, 64, 2))
            img = Image.fromarray((rng.integers(0, 128, (h, w, 3)) + 64).astype(np.uint8))
            x0, y0 = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
            ImageDraw.Draw(img).ellipse([x0, y0, x0 + 3 * w // 4, y0 + 3 * h // 4], fill=COLOURS[c])
            img.save(root / f"c{c}" / f"{i}.png")
    return root


def write_config(path: Path, data: Path, extra: str = "", *, classes: int = 4, batch: int = 4, epochs: int = 2,
                 lr: float = 0.01) -> Path:
    """A config inheriting the real cspresnet50 recipe, shrunk to 32 px and the tiny dataset. ``extra`` is appended
    (it may change ``model`` in place, e.g. ``model['backbone'] = dict(frozen_stages=3)``)."""
    path.write_text(f"""
_base_ = [{str(BASE)!r}]
model = dict(head=dict(num_classes={classes}))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=32, crop_ratio_range=(0.35, 1.0), backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=36, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=32),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size={batch}, num_workers=0, dataset=dict(
    type='CustomDataset', data_root={str(data)!r}, data_prefix='train', pipeline=train_pipeline))
val_dataloader = dict(batch_size=16, num_workers=0, dataset=dict(
    type='CustomDataset', data_root={str(data)!r}, data_prefix='val', pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr={lr}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    {"dict(type='CosineAnnealingLR', by_epoch=True, begin=1, end=%d)," % epochs if epochs > 1 else ""}
]
train_cfg = dict(max_epochs={epochs})
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0, deterministic=True)
{extra}
""")
    return path


def run_of(work_dir: Path) -> Path:
    """The newest run folder of ``work_dir`` (each run writes into its own, ``<work_dir>/<start time>``)."""
    runs = workdirs.run_dirs(work_dir)
    assert runs, f"no run folder in {work_dir}"
    return runs[-1]


def read_log(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_of(work_dir) / "log.jsonl").read_text().splitlines()]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # plain data only: no custom classes


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def popen_train(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "tools" / "train.py"), *args], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_log(proc: subprocess.Popen, work_dir: Path, pred, timeout: float = 120) -> dict:
    """Poll the newest run's log.jsonl until a record written since now satisfies ``pred``; returns it."""
    start = time.time()
    deadline = start + timeout
    while time.time() < deadline:
        runs = workdirs.run_dirs(work_dir)
        if runs and (runs[-1] / "log.jsonl").is_file():
            for rec in read_log(work_dir):
                if rec["time"] >= start - 0.01 and pred(rec):
                    return rec
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no matching log line within {timeout} s")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread here and in the subprocesses: results are bitwise comparable between them, and OpenMP's
    spin-waiting cannot make a step 10x slower when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_images(root / "train", 4, 8, seed=0)
    make_images(root / "val", 4, 4, seed=1)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data) -> tuple[Path, Path]:
    """An uninterrupted 2-epoch run (8 steps per epoch, no validation): ``(config, work_dir)``."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = write_config(tmp / "cfg.py", data)
    assert cli(["train", str(cfg), "--work-dir", str(tmp / "wd"), "--no-validate"]) == 0
    return cfg, run_of(tmp / "wd")


# --------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_learns_coloured_shapes_far_above_chance(tmp_path):
    data = tmp_path / "data"
    make_images(data / "train", 4, 32, seed=0)
    make_images(data / "val", 4, 8, seed=1)
    # lr 0.01: at 0.05 eval-mode BatchNorm swings whole classes between epochs (val 25-100%), so the best epoch
    # ranged 75-100% over seeds and a run on shuffled labels also reached 75%; at 0.01 it was 100% in 36 of 36 runs
    # (seeds, 2 threads, other data), shuffled labels or lr=0 at most 50%
    cfg = write_config(tmp_path / "cfg.py", data, "default_hooks = dict(logger=dict(interval=4))", batch=16, epochs=4,
                       lr=0.01)
    wd = tmp_path / "wd"
    assert cli(["train", str(cfg), "--work-dir", str(wd)]) == 0
    wd = run_of(wd)
    log = read_log(wd.parent)
    val = [r for r in log if r["mode"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2, 3, 4]
    assert max(r["top1"] for r in val) >= 75, val  # chance: 25%
    train = [r for r in log if r["mode"] == "train"]
    assert train[-1]["step"] == 32 and all({"lr", "loss", "img_s", "eta_s"} <= r.keys() for r in train)
    # files: one checkpoint per epoch (and its inference file), best.*, the pointer to the latest, the resolved
    # config, the plot; the lock is gone with the run
    assert {p.name for p in wd.iterdir()} >= {"epoch_1.pth", "epoch_4.pth", "epoch_4.safetensors", "best.pth",
                                              "best.safetensors", "last_checkpoint", "cfg.py", "log.jsonl",
                                              "train.log", "curves.png"}
    assert not (wd / "run.lock").exists()
    assert (wd / "last_checkpoint").read_text().strip() == "epoch_4.pth"
    best = load(wd / "best.pth")
    assert best["best"]["top1"] == max(r["top1"] for r in val) and best["epoch"] == best["best"]["epoch"]
    assert best["meta"]["spec"]["arch"] == "cspresnet50" and best["meta"]["dataset_meta"]["classes"] == ["c0", "c1", "c2", "c3"]
    (tmp_path / "recorded.py").write_text(best["config"])  # the resolved config, as a config file
    assert C.load_config(tmp_path / "recorded.py").train_cfg.max_epochs == 4
    # the checkpoint carries its model: head, class names and eval preprocessing come back with it
    import cspnet

    for model in (cspnet.get_model("cspresnet50", pretrained=wd / "best.pth"), cspnet.get_model(wd / "best.pth")):
        assert model.num_classes == 4 and model.classes == ["c0", "c1", "c2", "c3"]
        assert (model.transform.preset.resize, model.transform.preset.crop, model.name) == (36, 32, "cfg")


def test_lr_schedule_follows_mmengine():
    step_lr = LRSchedule(schedule_spec({"param_scheduler": dict(type="MultiStepLR", by_epoch=True,
                                                                 milestones=[30, 60, 90], gamma=0.1)}), 10)
    got = [step_lr.lr(s, 0.1) for s in (0, 299, 300, 599, 600, 999)]
    assert got == pytest.approx([0.1, 0.1, 0.01, 0.01, 1e-3, 1e-4])
    warm_cos = LRSchedule(schedule_spec({"param_scheduler": [
        dict(type="LinearLR", start_factor=0.01, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
        dict(type="CosineAnnealingLR", by_epoch=True, begin=5, end=100, eta_min=1e-5),
    ]}), 10)
    assert warm_cos.lr(0, 0.1) == pytest.approx(1e-3)
    assert warm_cos.lr(49, 0.1) == pytest.approx(0.1)  # mmengine: the factor reaches 1 on the range's last step
    assert warm_cos.lr(24, 0.1) == pytest.approx(0.1 * (0.01 + 0.99 * 24 / 49))
    assert warm_cos.lr(59, 0.1) == pytest.approx(0.1)  # epoch-based cosine: constant within an epoch
    assert warm_cos.lr(60, 0.1) == pytest.approx(1e-5 + (0.1 - 1e-5) * (1 + math.cos(math.pi / 95)) / 2)
    assert warm_cos.lr(10**6, 0.1) == pytest.approx(1e-5 + (0.1 - 1e-5) * (1 + math.cos(math.pi * 94 / 95)) / 2)


def test_random_resized_crop_matches_mmpretrain_rules():
    p = TrainPipeline(crop=32, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
    # an image too elongated for any 3/4..4/3 crop of 90% of its area: mmpretrain's central fallback
    assert random_resized_crop_box(400, 40, p, sample_rng(0, 0, 0)) == ((400 - 53) // 2, 0, 53, 40)
    assert random_resized_crop_box(40, 400, p, sample_rng(0, 0, 0)) == (0, (400 - 53) // 2, 40, 53)
    # the same (seed, epoch, index) draws the same crop; another epoch another one
    boxes = [random_resized_crop_box(300, 200, TrainPipeline(), sample_rng(7, e, 3)) for e in (0, 0, 1)]
    assert boxes[0] == boxes[1] != boxes[2]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_exact(tmp_path, reference):
    cfg, ref = reference
    wd = tmp_path / "wd"
    proc = popen_train(str(cfg), "--work-dir", str(wd), "--no-validate")
    wait_for_log(proc, wd, lambda r: r["mode"] == "train" and r["epoch"] == 2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    run = run_of(wd)
    assert (run / "epoch_1.pth").is_file() and not (run / "epoch_2.pth").exists()  # killed mid-epoch 2

    assert cli(["train", str(cfg), "--work-dir", str(wd), "--no-validate", "--resume"]) == 0
    assert workdirs.run_dirs(wd) == [run]  # continued in its own folder
    got, want = load(run / "epoch_2.pth"), load(ref / "epoch_2.pth")
    assert_same_state(got["model"], want["model"])
    assert got["step"] == want["step"] == 16
    assert_same_state(got["optimizer"]["state"][0], want["optimizer"]["state"][0])
    # the killed run's lost log lines were dropped: each step is logged once
    steps = [r["step"] for r in read_log(wd) if r["mode"] == "train"]
    assert steps == list(range(1, 17))


@pytest.mark.slow
@pytest.mark.reliability("train-sigkill-three-times")
def test_sigkill_at_three_random_steps_then_resume_is_exact(tmp_path, reference):
    import random

    cfg, ref = reference
    wd = tmp_path / "wd"
    kill_steps = sorted(random.Random(os.getpid()).sample(range(2, 16), 3))
    for i, step in enumerate(kill_steps):
        proc = popen_train(str(cfg), "--work-dir", str(wd), "--no-validate", *(["--resume"] if i else []))
        wait_for_log(proc, wd, lambda r, s=step: r["mode"] == "train" and r["step"] >= s)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    final = popen_train(str(cfg), "--work-dir", str(wd), "--no-validate", "--resume")
    assert final.wait(timeout=120) == 0, final.communicate()[0]
    got, want = load(workdirs.find_latest(wd)), load(ref / "epoch_2.pth")
    assert got["step"] == want["step"] == 16, kill_steps
    assert_same_state(got["model"], want["model"])


@pytest.mark.slow
@pytest.mark.reliability("train-sigterm")
def test_sigterm_writes_a_checkpoint_and_resume_continues_mid_epoch(tmp_path, reference):
    cfg, ref = reference
    wd = tmp_path / "wd"
    proc = popen_train(str(cfg), "--work-dir", str(wd), "--no-validate")
    wait_for_log(proc, wd, lambda r: r["mode"] == "train" and r["step"] >= 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    run = run_of(wd)
    name = (run / "last_checkpoint").read_text().strip()
    assert name.startswith("iter_") and "continue with --resume" in out
    ckpt = load(run / name)
    assert 0 < ckpt["iter"] < 8 and ckpt["step"] == int(name[5:-4])
    assert (run / "curves.png").is_file()  # drawn on the way out too

    assert cli(["train", str(cfg), "--work-dir", str(wd), "--no-validate", "--resume"]) == 0
    assert_same_state(load(run / "epoch_2.pth")["model"], load(ref / "epoch_2.pth")["model"])
    assert not list(run.glob("iter_*.pth"))  # superseded by the epoch checkpoint


@pytest.mark.reliability("train-nan-loss")
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, reference, capsys):
    cfg, ref = reference
    wd = tmp_path / "wd"
    wd.mkdir()
    good = (ref / "epoch_1.pth").read_bytes()
    (wd / "epoch_1.pth").write_bytes(good)
    code = cli(["train", str(cfg), "--work-dir", str(wd), "--no-validate", "--resume", str(wd / "epoch_1.pth"),
                "--cfg-options", "data_preprocessor.std=[1e-45,1e-45,1e-45]"])  # (x - mean) / std: inf
    assert code == 2
    assert "loss is nan at epoch 2, iteration 1" in capsys.readouterr().err
    assert (wd / "epoch_1.pth").read_bytes() == good
    assert sorted(p.name for p in wd.glob("*.pth")) == ["epoch_1.pth"]


@pytest.mark.reliability("config-unknown-key", "train-empty-dataset", "train-resume-other-architecture")
def test_bad_input_errors(tmp_path, data, reference, capsys):
    cfg, ref = reference
    # unknown config key, with a suggestion
    assert cli(["train", str(cfg), "--cfg-options", "train_cfg.max_epoch=3"]) == 2
    assert "unknown key 'train_cfg.max_epoch' (did you mean 'train_cfg.max_epochs'?)" in capsys.readouterr().err
    # a dataset without images
    for c in ("a", "b", "c", "d"):
        (tmp_path / "empty" / "train" / c).mkdir(parents=True)
    bad = write_config(tmp_path / "empty.py", tmp_path / "empty")
    assert cli(["train", str(bad), "--work-dir", str(tmp_path / "wd1")]) == 2
    assert "hold no images" in capsys.readouterr().err
    # resuming a checkpoint of another architecture
    other = write_config(tmp_path / "other.py", data, "model['backbone'] = dict(type='CSPDarkNet', depth=53)")
    assert cli(["train", str(other), "--work-dir", str(tmp_path / "wd2"), "--resume", str(ref / "epoch_1.pth")]) == 2
    assert "trained as cspresnet50 with 4 classes, but the config builds cspdarknet53 with 4" in capsys.readouterr().err
    # class count of the data vs the head
    wrong = write_config(tmp_path / "wrong.py", data, classes=5)
    assert cli(["train", str(wrong), "--work-dir", str(tmp_path / "wd3")]) == 2
    assert "model.head.num_classes=4" in capsys.readouterr().err


def test_finetune_from_golden_recipe_checkpoint_with_frozen_backbone(tmp_path, recipe_checkpoint):
    data = tmp_path / "data"
    make_images(data / "train", 10, 2, seed=0)
    make_images(data / "val", 10, 1, seed=1)
    weights = golden.recipe_state_dict("cspresnet50")  # timm layout, 1000-class head
    cfg = write_config(tmp_path / "cfg.py", data, f"""
load_from = {str(recipe_checkpoint('cspresnet50'))!r}
model['backbone'] = dict(frozen_stages=3)
default_hooks = dict(checkpoint=dict(save_optimizer=False, save_best=False))
""", classes=10, epochs=1)
    assert cli(["train", str(cfg), "--work-dir", str(tmp_path / "wd")]) == 0
    wd = run_of(tmp_path / "wd")
    # save_optimizer=False: weights only (a quarter of the size here), which cannot be resumed; save_best=False
    assert sorted(p.name for p in wd.glob("*.pth")) == ["epoch_1.pth"] and load(wd / "epoch_1.pth")["optimizer"] is None
    assert cli(["train", str(cfg), "--work-dir", str(tmp_path / "wd2"), "--resume", str(wd / "epoch_1.pth")]) == 2
    sd = load(wd / "epoch_1.pth")["model"]
    # every backbone weight and BN statistic is the checkpoint's (loaded, then frozen); the 10-class head trained
    for k, v in weights.items():
        if not k.startswith("head."):
            assert torch.equal(sd["backbone." + k], v), k
    assert sd["head.fc.weight"].shape == (10, 1024)
    import cspnet

    fresh = cspnet.get_model("cspresnet50", num_classes=10).state_dict()["head.fc.weight"]
    assert not torch.equal(sd["head.fc.weight"], fresh)


@pytest.mark.slow
def test_ema_amp_accumulation_clipping_smoothing(tmp_path, data):
    cfg = write_config(tmp_path / "cfg.py", data, """
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', accumulative_counts=2, clip_grad=dict(max_norm=5.0),
                     paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))
model['head']['loss'] = dict(type='LabelSmoothLoss', label_smooth_val=0.1)
custom_hooks = [dict(type='EMAHook', momentum=0.01, update_buffers=True)]
env_cfg = dict(channels_last=True)
""", epochs=1)
    assert cli(["train", str(cfg), "--work-dir", str(tmp_path / "wd")]) == 0
    wd = run_of(tmp_path / "wd")
    val = [r for r in read_log(wd.parent) if r["mode"] == "val"]
    assert {"top1", "ema_top1"} <= val[0].keys()
    ckpt = load(wd / "epoch_1.pth")
    assert ckpt["step"] == 4 and ckpt["ema_steps"] == 4  # 8 batches, 2 per optimizer step
    assert ckpt["scaler"] is None  # bf16 needs no loss scaling
    assert len(ckpt["optimizer"]["param_groups"]) == 2  # decayed weights, and norms/biases without decay
    assert not torch.equal(ckpt["ema"]["head.fc.weight"], ckpt["model"]["head.fc.weight"])
    import cspnet

    ema = cspnet.get_model("cspresnet50", pretrained=wd / "epoch_1.pth", num_classes=4, use_ema=True)
    assert torch.equal(ema.state_dict()["head.fc.weight"], ckpt["ema"]["head.fc.weight"])


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path, data):
    cfg = write_config(tmp_path / "cfg.py", data, epochs=2)
    wd = tmp_path / "wd"
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(REPO / "tools" / "train.py"), str(cfg), "--work-dir", str(wd), "--launcher", "pytorch"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    log = read_log(wd)
    # 32 images / (2 processes x 4) = 4 steps per epoch, each logged once (by rank 0)
    assert [r["step"] for r in log if r["mode"] == "train"] == list(range(1, 9))
    val = [r for r in log if r["mode"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2] and all(0 <= r["top1"] <= 100 for r in val)
    assert sorted(p.name for p in run_of(wd).glob("*.pth")) == ["best.pth", "epoch_1.pth", "epoch_2.pth"]
    assert len(load(run_of(wd) / "epoch_2.pth")["rng"]) == 2  # every rank's RNG state


def _children(pid: int) -> dict[int, dict[str, str]]:
    """``{child pid: its environment}`` from /proc."""
    out = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                env = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
                out[int(d)] = dict(e.decode(errors="replace").partition("=")[::2] for e in env if b"=" in e)
        except (OSError, IndexError, ValueError):
            continue
    return out


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank processes through /proc")
@pytest.mark.slow
@pytest.mark.reliability("train-ddp-rank-dies")
def test_ddp_a_dying_rank_stops_every_rank(tmp_path, data):
    cfg = write_config(tmp_path / "cfg.py", data, epochs=50)
    wd = tmp_path / "wd"
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(REPO / "tools" / "train.py"), str(cfg), "--work-dir", str(wd), "--launcher", "pytorch", "--no-validate"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    wait_for_log(proc, wd, lambda r: r["mode"] == "train")
    ranks = {env.get("RANK"): pid for pid, env in _children(proc.pid).items()}
    assert set(ranks) == {"0", "1"}
    start = time.time()
    os.kill(ranks["1"], signal.SIGKILL)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0 and time.time() - start < 60, out
    assert not Path(f"/proc/{ranks['0']}").exists()  # rank 0 is gone too, not left waiting for rank 1
