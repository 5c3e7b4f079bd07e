"""``tools/test.py`` / ``cspnet test`` end to end: the printed top-1/top-5 equal those computed here from the model's
own logits, for every dataset layout, with 2 torchrun processes, for the seed's unchanged command line (checkpoint
from a local HTTP server or a file), and every bad input gets its message."""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cspnet
from cspnet import rows
from cspnet.cli import main as cli_main
from cspnet.data.transforms import EvalPreset, EvalTransform
from cspnet.data.loader import build_eval_loader
from cspnet.weights.files import save_state_dict
from cspnet.weights.convert import convert_state_dict
from golden import recipe_state_dict
from httpserver import FileServer
from test_datasets import LAYOUTS, make_images, write_layout

REPO = Path(__file__).resolve().parents[1]
R50 = str(REPO / "configs" / "cspnet" / "cspresnet50_8xb32_in1k.py")
SMALL = ["test_dataloader.dataset.pipeline.1.scale=64", "test_dataloader.dataset.pipeline.2.crop_size=56"]
# The rank in each image's own prediction that its label gets: top-1 right once, top-5 right 4 times of 7.
RANKS = [0, 2, 4, 20, 30, 40, 1]


def scores_of(model, images, preset: EvalPreset, flip: bool = False) -> torch.Tensor:
    t = EvalTransform(preset)
    x = t.normalize(torch.stack([t.to_uint8(p) for p in images]))
    with torch.inference_mode():
        s = model(x).softmax(1)
        return (s + model(x.flip(3)).softmax(1)) / 2 if flip else s


def accuracy(scores: torch.Tensor, labels: list[int]) -> tuple[float, float]:
    """Top-1 and top-5 (%), rounded as printed."""
    top5 = scores.topk(5, dim=1).indices
    y = torch.tensor(labels)[:, None]
    return tuple(round(100 * float((top5[:, :k] == y).any(1).float().mean()), 4) for k in (1, 5))


def labels_at_ranks(scores: torch.Tensor, ranks: list[int]) -> list[int]:
    order = scores.argsort(dim=1, descending=True)
    return [int(order[i, r]) for i, r in enumerate(ranks)]


def printed(out: str) -> tuple[float, float]:
    m = re.search(r"^accuracy/top1: (\d+\.\d{4})  accuracy/top5: (\d+\.\d{4})$", out, re.M)
    assert m, out
    return float(m.group(1)), float(m.group(2))


def run_test(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli_main(["test", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def data(tmp_path_factory, recipe_checkpoint):
    """7 images in the three layouts, labelled so top-1/top-5 are neither 0 nor 100, and a cspresnet50 checkpoint."""
    d = tmp_path_factory.mktemp("eval")
    images = make_images(d / "images")
    ckpt = recipe_checkpoint("cspresnet50")
    model = cspnet.get_model("cspresnet50", pretrained=ckpt)
    scores = scores_of(model, images, EvalPreset(64, 56))
    labels = labels_at_ranks(scores, RANKS)
    roots = {layout: write_layout(d / layout, layout, images, labels) for layout in LAYOUTS}
    return dict(dir=d, images=images, ckpt=str(ckpt), labels=labels, roots=roots, expected=accuracy(scores, labels),
                expected_tta=accuracy(scores_of(model, images, EvalPreset(64, 56), flip=True), labels))


def test_expected_numbers_are_not_trivial(data):
    assert data["expected"] == (14.2857, 57.1429)


@pytest.mark.parametrize("layout, workers", [("folder", "0"), ("meta", "2"), ("flat", "0")])
def test_every_layout_prints_the_numbers_of_the_logits(data, capsys, layout, workers):
    rc, out, err = run_test(capsys, R50, data["ckpt"], "--num-workers", workers, "--cfg-options", *SMALL,
                            f"test_dataloader.dataset.data_root={data['roots'][layout]}")
    assert rc == 0, err
    assert printed(out) == data["expected"]
    assert "over 7 of 7 images" in out
    assert "Pillow bicubic short edge 64, centre crop 56" in out and "fp32; no TTA; 1 process(es) x batch 32" in out


def test_resize_on_the_device_gives_the_loaders_predictions(data, capsys, tmp_path):
    """``--resize device`` (workers decode, the device resizes: the default on CUDA) against ``--resize loader``:
    the same top-5 and scores for every image, through 2 loader workers, on the layout with PNG/BMP files too."""
    runs = {}
    for where in ("loader", "device"):
        out_file = tmp_path / f"{where}.json"
        rc, out, err = run_test(capsys, R50, data["ckpt"], "--resize", where, "--device", "cpu", "--num-workers", "2",
                                "--batch-size", "4", "--out", str(out_file), "--cfg-options", *SMALL,
                                f"test_dataloader.dataset.data_root={data['roots']['flat']}")
        assert rc == 0, err
        assert printed(out) == data["expected"]
        runs[where] = (out, json.loads(out_file.read_text())["predictions"])
    assert "Pillow decode and resize in the loader" in runs["loader"][0]
    assert "Pillow decode in the loader, exact resize on cpu" in runs["device"][0]
    assert runs["loader"][1] == runs["device"][1]  # scores included: the same pixels went in


def test_run_test_from_python(data):
    """What ``cspnet test`` runs, from a config, without the command line."""
    from cspnet.config import eval_spec, load_config
    from cspnet.engine.distributed import init_distributed
    from cspnet.engine.evaluate import run_test

    spec = eval_spec(load_config(R50, [*SMALL, f"test_dataloader.dataset.data_root={data['roots']['folder']}",
                                       "test_dataloader.num_workers=0"]))
    done = run_test(spec, data["ckpt"], init_distributed(device="cpu"))
    top1, top5 = (round(done.result.metrics[f"accuracy/top{k}"], 4) for k in (1, 5))
    assert (top1, top5) == data["expected"] and done.summary["num_samples"] == 7


def test_tta_and_out_file(data, capsys, tmp_path):
    out_file = tmp_path / "res" / "preds.json"
    rc, out, err = run_test(capsys, R50, data["ckpt"], "--tta", "--out", str(out_file), "--work-dir",
                            str(tmp_path / "work"), "--batch-size", "3", "--num-workers", "0", "--cfg-options",
                            *SMALL, f"test_dataloader.dataset.data_root={data['roots']['folder']}")
    assert rc == 0, err
    assert printed(out) == data["expected_tta"] and "flip TTA" in out
    res = json.loads(out_file.read_text())
    assert res["num_samples"] == 7 and res["skipped"] == [] and res["eval"]["tta"] is True
    assert (round(res["metrics"]["accuracy/top1"], 4), round(res["metrics"]["accuracy/top5"], 4)) == data["expected_tta"]
    by_name = {Path(p).name: y for p, y in zip(data["images"], data["labels"])}
    assert {Path(p["path"]).name: p["label"] for p in res["predictions"]} == by_name
    assert all(p["pred_label"] == p["top5"][0] and 0 < p["pred_score"] <= 1 for p in res["predictions"])
    work = sorted(p.name for p in (tmp_path / "work").iterdir())
    assert "cspresnet50_8xb32_in1k.py" in work and any(n.endswith(".json") for n in work)
    assert any(n.endswith(".log") for n in work)


@pytest.mark.slow
def test_two_torchrun_processes_give_the_single_process_numbers(data, capsys, tmp_path):
    rc, out, err = run_test(capsys, R50, data["ckpt"], "--out", str(tmp_path / "one.json"), "--num-workers", "0",
                            "--cfg-options", *SMALL, f"test_dataloader.dataset.data_root={data['roots']['meta']}")
    assert rc == 0, err
    rc, out, err = run_test(capsys, R50, data["ckpt"], "--out", str(tmp_path / "one.jsonl"), "--num-workers", "0",
                            "--cfg-options", *SMALL, f"test_dataloader.dataset.data_root={data['roots']['meta']}")
    assert rc == 0, err
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(REPO / "tools" / "test.py"), R50, data["ckpt"], "--launcher", "pytorch", "--batch-size", "3",
           "--resize", "device",  # each rank resizes on its own device: the same pixels as the loader's
           "--num-workers", "0", "--out", str(tmp_path / "two.jsonl"), "--cfg-options", *SMALL,
           f"test_dataloader.dataset.data_root={data['roots']['meta']}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the rows of each image once, in index order, as one process wrote them; the parts merged and removed
    two_rows, one_rows = rows.read_rows(tmp_path / "two.jsonl"), rows.read_rows(tmp_path / "one.jsonl")
    assert [r["index"] for r in two_rows] == list(range(7))
    assert [(r["path"], r["topk_labels"]) for r in two_rows] == [(r["path"], r["topk_labels"]) for r in one_rows]
    assert np.allclose([r["topk_scores"] for r in two_rows], [r["topk_scores"] for r in one_rows], atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "one.jsonl", "one.jsonl.meta.json",
                                                          "two.jsonl", "two.jsonl.meta.json"]
    cmd[cmd.index("--out") + 1] = str(tmp_path / "two.json")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert printed(proc.stdout) == printed(out) == data["expected"]
    assert "2 process(es) x batch 3" in proc.stdout and proc.stdout.count("accuracy/top1") == 1  # rank 0 prints
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["num_samples"] == 7 and two["eval"]["world_size"] == 2
    assert [(p["path"], p["label"], p["pred_label"], p["top5"]) for p in two["predictions"]] == \
           [(p["path"], p["label"], p["pred_label"], p["top5"]) for p in one["predictions"]]


@pytest.mark.slow
def test_the_seed_command_line_with_a_url_and_a_file(tmp_path, monkeypatch, capsys):
    """``python tools/test.py configs/cspnet/cspdarknet50_8xb32_in1k.py CHECKPOINT``, unchanged, from a folder whose
    data/imagenet is a small dataset."""
    images = make_images(tmp_path / "images", 3)
    sd = recipe_state_dict("cspdarknet53")
    model = cspnet.get_model("cspdarknet53")
    cspnet.load_weights(model, sd)
    scores = scores_of(model.eval(), images, EvalPreset(288, 256))
    labels = labels_at_ranks(scores, [0, 3, 9])
    work = tmp_path / "work"
    write_layout(work / "data" / "imagenet", "folder", images, labels)
    for name in ("configs", "tools"):
        (work / name).symlink_to(REPO / name)
    served = tmp_path / "served"
    served.mkdir()
    save_state_dict(convert_state_dict(sd, "cspdarknet53", to="mmpretrain"), served / "darknet.pth", "mmpretrain")
    local = save_state_dict(sd, work / "darknet_timm.pth", "timm")

    with FileServer(served) as server:
        proc = subprocess.run(
            [sys.executable, "tools/test.py", "configs/cspnet/cspdarknet50_8xb32_in1k.py", server.url("darknet.pth")],
            cwd=work, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert printed(proc.stdout) == accuracy(scores, labels) == (33.3333, 66.6667)
    assert "Pillow bicubic short edge 288, centre crop 256" in proc.stdout and "3 images, 1000 classes" in proc.stdout
    assert server.hits == ["/darknet.pth"]

    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "argv", ["tools/test.py", "configs/cspnet/cspdarknet50_8xb32_in1k.py", local.name])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        runpy.run_path("tools/test.py", run_name="__main__")
    assert e.value.code == 0
    assert printed(capsys.readouterr().out) == (33.3333, 66.6667)


@pytest.mark.reliability("dataset-missing-root", "dataset-wrong-layout", "dataset-label-out-of-range")
def test_bad_inputs_get_clear_errors(data, capsys, tmp_path):
    base = [R50, data["ckpt"], "--num-workers", "0", "--cfg-options", *SMALL]

    def fails(root, *extra) -> str:
        rc, out, err = run_test(capsys, *base, f"test_dataloader.dataset.data_root={root}", *extra)
        assert rc == 2 and "accuracy/top1" not in out
        assert "\ncspnet test: error: " in "\n" + err, err
        return err

    assert re.search(r"ImageNet root '.*nowhere' does not exist", fails(tmp_path / "nowhere"))
    root = shutil.copytree(data["roots"]["folder"], tmp_path / "wrong")
    (root / "val" / "my_cats").mkdir()
    assert re.search(r"'.*my_cats' is not an ImageNet-1k class folder", fails(root))
    root = shutil.copytree(data["roots"]["meta"], tmp_path / "range")
    with open(root / "meta" / "val.txt", "a") as f:
        f.write("extra.jpg 1000\n")
    assert re.search(r"meta/val.txt' line 8: label 1000 is outside the class range 0..999", fails(root))
    err = fails(data["roots"]["folder"], "test_dataloader.dataset.type=CustomDataset")
    assert "the model predicts 1000 classes (model.head.num_classes) but the test set has 6" in err
    assert "loaded" not in err  # found before the checkpoint is read
    rc, _, err = run_test(capsys, R50, data["ckpt"], "--out", "x.txt")
    assert rc == 2 and ".jsonl, .csv or .parquet (a row per image), .pkl" in err
    rc, _, err = run_test(capsys, R50, data["ckpt"], "--out", "x.csv", "--out-item", "metrics")
    assert rc == 2 and "name the file .json or .pkl" in err
    rc, _, err = run_test(capsys, R50, data["ckpt"], "--out-item", "metrics")
    assert rc == 2 and "--out-item needs --out" in err


@pytest.mark.parametrize("resize", ["loader", "device"])
def test_corrupt_images_fail_or_are_skipped_and_reported(data, capsys, tmp_path, resize):
    root = shutil.copytree(data["roots"]["folder"], tmp_path / "bad")
    folder = next((root / "val").iterdir())
    (folder / "zz_truncated.JPEG").write_bytes(data["images"][0].read_bytes()[:400])
    (folder / "zz_empty.png").write_bytes(b"")
    args = [R50, data["ckpt"], "--resize", resize, "--cfg-options", *SMALL, f"test_dataloader.dataset.data_root={root}"]
    rc, out, err = run_test(capsys, *args, "--num-workers", "0")
    assert rc == 2 and re.search(r"zz_\w+\.\w+.*--skip-bad", err), err
    rc, out, err = run_test(capsys, *args, "--num-workers", "2", "--skip-bad")
    assert rc == 0, err
    assert printed(out) == data["expected"]  # over the 7 readable images
    assert "skipped 2 unreadable image(s):" in out and "zz_truncated.JPEG" in out and "zz_empty.png" in out
    assert "over 7 of 9 images" in out


@pytest.mark.parametrize("n, world", [(7, 2), (7, 3), (2, 4), (0, 2), (5, 1)])
def test_the_eval_loaders_of_all_ranks_take_every_index_once(n, world):
    loaders = [build_eval_loader([(torch.zeros(3, 2, 2, dtype=torch.uint8), 0)] * n, 2, 0, r, world)
               for r in range(world)]
    shards = [[int(i) for indices, *_ in loader for i in indices] for loader in loaders]
    assert sorted(i for s in shards for i in s) == list(range(n)) and all(s == sorted(s) for s in shards)
    assert [len(loader.sampler) for loader in loaders] == [len(s) for s in shards]


def _own_scores(ckpt: str, paths: list[str]) -> torch.Tensor:
    """Each image's softmax, computed here from the file itself: not through the evaluator's loader."""
    model = cspnet.get_model("cspresnet50", pretrained=ckpt)
    return scores_of(model, [Path(p) for p in paths], EvalPreset(64, 56))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_out_rows_equal_the_logits_of_each_image(data, capsys, tmp_path, suffix):
    out = tmp_path / f"res{suffix}"
    rc, stdout, err = run_test(capsys, R50, data["ckpt"], "--out", str(out), "--num-workers", "0", "--cfg-options",
                               *SMALL, f"test_dataloader.dataset.data_root={data['roots']['folder']}")
    assert rc == 0, err
    got = rows.read_rows(out)
    assert [r["index"] for r in got] == list(range(7))
    scores = _own_scores(data["ckpt"], [r["path"] for r in got])
    top = scores.topk(5, dim=1)
    names = cspnet.data.classes.imagenet_classes()
    for r, idx, val in zip(got, top.indices.tolist(), top.values.tolist()):
        assert r["topk_labels"] == idx and r["topk_scores"] == pytest.approx(val, abs=1e-5)
        assert r["pred_label"] == idx[0] and r["topk_classes"] == [names[i] for i in idx]
        assert r["label"] == cspnet.data.classes.imagenet_synsets().index(Path(r["path"]).parent.name)
    meta = rows.read_meta(out)
    assert meta["classes"] == list(names) and round(meta["metrics"]["accuracy/top1"], 4) == data["expected"][0]
    assert printed(stdout) == data["expected"]


def test_out_pkl_is_mmpretrains_dump_and_metrics_items(data, capsys, tmp_path):
    import pickle

    base = [R50, data["ckpt"], "--num-workers", "0", "--tta", "--cfg-options", *SMALL,
            f"test_dataloader.dataset.data_root={data['roots']['meta']}"]
    rc, _, err = run_test(capsys, *base, "--out", str(tmp_path / "res.pkl"))
    assert rc == 0, err
    samples = pickle.loads((tmp_path / "res.pkl").read_bytes())
    scores = _own_scores(data["ckpt"], [s["img_path"] for s in samples])
    flipped = scores_of(cspnet.get_model("cspresnet50", pretrained=data["ckpt"]),
                        [Path(s["img_path"]) for s in samples], EvalPreset(64, 56), flip=True)
    assert [s["sample_idx"] for s in samples] == list(range(7))
    for s, want, label in zip(samples, flipped, data["labels"]):
        assert set(s) == {"pred_score", "pred_label", "gt_label", "img_path", "sample_idx", "num_classes"}
        assert s["pred_score"].shape == (1000,) and torch.allclose(s["pred_score"], want, atol=1e-5)
        # the label of the averaged scores (mmpretrain's TTA keeps the flipped view's)
        assert s["pred_label"].tolist() == [int(want.argmax())] and s["gt_label"].tolist() == [label]
    assert not torch.equal(scores, flipped)
    for name in ("m.pkl", "m.json"):
        rc, out, err = run_test(capsys, *base, "--out", str(tmp_path / name), "--out-item", "metrics")
        assert rc == 0, err
        got = (pickle.loads if name.endswith("pkl") else json.loads)((tmp_path / name).read_bytes())
        assert got == {"accuracy/top1": pytest.approx(printed(out)[0], abs=1e-4),
                       "accuracy/top5": pytest.approx(printed(out)[1], abs=1e-4)}


@pytest.mark.slow
def test_a_killed_run_keeps_its_rows_valid_line_by_line(data, tmp_path):
    copies = tmp_path / "copies"
    copies.mkdir()
    images = [Path(shutil.copy(p, copies / f"{k}_{p.name}")) for k in range(10) for p in data["images"]]
    root = write_layout(tmp_path / "many", "folder", images, data["labels"] * 10)
    n = len(images)
    out = tmp_path / "res.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "cspnet", "test", R50, data["ckpt"], "--out", str(out),
                             "--batch-size", "1", "--num-workers", "0", "--cfg-options", *SMALL,
                             f"test_dataloader.dataset.data_root={root}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 2):
            time.sleep(0.01)
        proc.kill()
    finally:
        proc.wait(30)
    lines = out.read_text().splitlines(keepends=True)
    whole = [json.loads(line) for line in lines if line.endswith("\n")]
    assert 2 <= len(whole) < n, proc.stderr.read().decode()[-2000:]
    assert [r["index"] for r in rows.read_rows(out)] == [r["index"] for r in whole] == list(range(len(whole)))
    scores = _own_scores(data["ckpt"], [r["path"] for r in whole])
    assert [r["topk_labels"] for r in whole] == scores.topk(5, dim=1).indices.tolist()
