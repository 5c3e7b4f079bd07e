"""``cspnet predict`` at scale: inputs (folders, globs, @lists, stdin), rows files (.jsonl/.csv/.parquet) written as
results come, ``--resume`` after a kill, ``--skip-bad`` rows, and torchrun shards that give one process's rows."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cspnet
from cspnet import rows
from cspnet.cli import main as cli
from cspnet.cli import predict as predict_cli
from cspnet.data.presets import EvalPreset
from cspnet.data.transforms import EvalTransform
from cspnet.errors import ImageError, InvalidOptionError
from cspnet.inference import expand_inputs, plan_predict
from cspnet.rows import part_path

reliability = pytest.mark.reliability
SRC = Path(__file__).resolve().parents[1] / "src"


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` random 40x40 images, PNG and JPEG alternately, every third in a subfolder."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / ("sub" if i % 3 == 0 else "") / f"{i:04d}.{'png' if i % 2 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def small_model(tiny_classifier):
    """The tiny net at 32 px (resize 36, crop 32) with class names: thousands of images per second on a core."""
    model = tiny_classifier()
    model.transform = EvalTransform(EvalPreset(36, 32))
    model.classes = [f"class{i}" for i in range(model.num_classes)]
    return model


@pytest.fixture(scope="module")
def thousand(tmp_path_factory):
    folder = tmp_path_factory.mktemp("thousand")
    make_images(folder, 1000)
    return folder


def _key(row):
    """A row with its scores rounded: batches of other sizes may round the last bit differently."""
    return {**row, "topk_scores": None if row["topk_scores"] is None else [round(s, 5) for s in row["topk_scores"]],
            "pred_score": None if row["pred_score"] is None else round(row["pred_score"], 5)}


# ---------------------------------------------------------------------------------------------------- the inputs
def test_inputs_expand_once_in_argument_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = make_images(Path("shots"), 6)
    Path("shots/notes.txt").write_text("not an image")
    Path("shots/sub/UPPER.PNG").write_bytes(Path(images[1]).read_bytes())
    Path("other.webp").write_bytes(b"")  # named by path: taken as given, whatever its extension
    folder = sorted(str(p) for p in Path("shots").rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    assert expand_inputs(["shots"]) == folder  # recursive, the dataset's extensions in any case, sorted
    assert "shots/sub/UPPER.PNG" in folder and not any(p.endswith(".txt") for p in folder)
    assert expand_inputs(["shots/**/*.png"]) == sorted(p for p in folder if p.endswith(".png"))
    assert expand_inputs(["shots/**"]) == folder  # each folder the pattern matches listed once
    Path("list.txt").write_bytes(b"other.webp\r\n\r\nshots/0001.png\r\n")  # CRLF, a blank line
    stdin = io.StringIO("shots/0002.jpg\nshots/sub/0000.jpg\n")
    # argument order kept; a path named twice (also as ./path, or inside a folder) is kept at its first place
    assert expand_inputs(["@list.txt", "-", "./shots/0001.png", "shots/sub"], stdin=stdin) == [
        "other.webp", "shots/0001.png", "shots/0002.jpg", "shots/sub/0000.jpg", "shots/sub/0003.png",
        "shots/sub/UPPER.PNG"]
    assert expand_inputs(["missing.jpg", "https://example.com/a.jpg?x=1"]) == [
        "missing.jpg", "https://example.com/a.jpg?x=1"]  # for the reader to name, in its row or its error


@reliability("predict-glob-no-match", "predict-folder-without-images", "predict-list-unreadable",
             "predict-no-inputs")
def test_inputs_that_name_no_image_are_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("empty/deep").mkdir(parents=True)
    Path("empty/deep/readme.txt").write_text("x")
    cases = {("*.jpg",): "'*.jpg' matches no image (.jpg, .jpeg, .png",
             ("empty",): "folder 'empty' holds no images",
             ("@nope.txt",): "@nope.txt: list file 'nope.txt' does not exist",
             ("-",): "no images in -: give files, folders, globs, @LIST files or - (paths on stdin)"}
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n\n"))
    monkeypatch.setattr(predict_cli, "load_model", _no_model)
    for args, message in cases.items():
        with pytest.raises(InvalidOptionError, match=re.escape(message)):
            expand_inputs(list(args))
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
        assert cli(["predict", *args, "--output", "out.jsonl"]) == 2
        assert "cspnet predict: error:" in capsys.readouterr().err
    assert not Path("out.jsonl").exists()


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the inputs were checked")


# -------------------------------------------------------------------------------------------------- the rows file
def test_rows_in_input_order_with_the_scores_of_inference_model(tmp_path, small_model):
    images = [str(p) for p in make_images(tmp_path / "imgs", 11)]
    out = tmp_path / "preds.jsonl"
    done = cspnet.predict_files(small_model, [str(tmp_path / "imgs")], out, batch_size=4, num_workers=0, topk=3)
    assert (done.written, done.resumed, done.num_inputs, done.errors, done.rows) == (11, 0, 11, [], None)
    got = rows.read_rows(out)
    assert [r["path"] for r in got] == sorted(images) and [r["index"] for r in got] == list(range(11))
    expected = cspnet.inference_model(small_model, sorted(images), topk=3, num_workers=0)
    for row, res in zip(got, expected):
        assert row["topk_labels"] == [t[0] for t in res["topk"]] and row["pred_label"] == res["pred_label"]
        assert row["topk_scores"] == pytest.approx([t[1] for t in res["topk"]], abs=1e-6)
        assert row["topk_classes"] == [f"class{t[0]}" for t in res["topk"]] and row["error"] is None
        assert row["label"] is None and row["labels"] is None
    meta = rows.read_meta(out)
    assert meta["topk"] == 3 and meta["classes"] == small_model.classes and meta["eval"]["crop"] == 32
    # without an output file: the same rows, returned
    mem = cspnet.predict_files(small_model, [str(tmp_path / "imgs")], batch_size=5, num_workers=0, topk=3)
    assert [_key(r) for r in mem.rows] == [_key(r) for r in got]


def test_csv_and_parquet_hold_the_rows_of_jsonl(tmp_path, small_model):
    pytest.importorskip("pyarrow")
    make_images(tmp_path / "imgs", 9)
    files = {ext: tmp_path / f"preds{ext}" for ext in (".jsonl", ".csv", ".parquet")}
    for file in files.values():
        cspnet.predict_files(small_model, [str(tmp_path / "imgs")], file, batch_size=4, num_workers=0)
    want = rows.read_rows(files[".jsonl"])
    assert len(want) == 9
    assert rows.read_rows(files[".csv"]) == want and rows.read_rows(files[".parquet"]) == want
    assert not list(tmp_path.glob("*.part*"))  # parquet goes through a part (it cannot be read till closed)


@reliability("predict-output-exists", "predict-output-format", "predict-output-fifo")
def test_an_existing_output_is_never_overwritten(tmp_path, small_model, monkeypatch, capsys):
    make_images(tmp_path / "imgs", 3)
    out = tmp_path / "preds.jsonl"
    out.write_text('{"index": 0, "path": "x"}\n')
    with pytest.raises(InvalidOptionError, match="preds.jsonl' exists: continue it with --resume, or give another "
                                                 "name"):
        cspnet.predict_files(small_model, [str(tmp_path / "imgs")], out, num_workers=0)
    assert out.read_text() == '{"index": 0, "path": "x"}\n'
    monkeypatch.setattr(predict_cli, "load_model", _no_model)
    assert cli(["predict", str(tmp_path / "imgs"), "--output", str(tmp_path / "preds.txt")]) == 2
    assert "the extension decides the format; use one of .jsonl, .csv, .parquet" in capsys.readouterr().err
    assert cli(["predict", str(tmp_path / "imgs"), "--resume"]) == 2
    assert "--resume continues an --output file" in capsys.readouterr().err
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jsonl")  # opening it to write would wait for a reader, for ever
        assert cli(["predict", str(tmp_path / "imgs"), "--output", str(tmp_path / "pipe.jsonl")]) == 2
        assert "pipe.jsonl' is a FIFO (named pipe), not a regular file" in capsys.readouterr().err


@reliability("predict-bad-image", "predict-skip-bad")
def test_a_bad_image_stops_with_complete_rows_or_gets_an_error_row(tmp_path, small_model):
    images = sorted(str(p) for p in make_images(tmp_path / "imgs", 10))
    bad = images[6]
    Path(bad).write_bytes(b"not an image at all")
    out = tmp_path / "preds.csv"
    with pytest.raises(ImageError, match=f"{bad}.*--skip-bad.*the 6 rows in .*preds.csv' are complete") as e:
        cspnet.predict_files(small_model, [str(tmp_path / "imgs")], out, batch_size=4, num_workers=0)
    assert "continue with --resume --skip-bad" in str(e.value)
    assert [r["path"] for r in rows.read_rows(out)] == images[:6]  # every row before it, nothing half-written
    done = cspnet.predict_files(small_model, [str(tmp_path / "imgs")], out, batch_size=4, num_workers=0,
                                skip_bad=True, resume=True)
    assert (done.resumed, done.written) == (6, 4) and [p for p, _ in done.errors] == [bad]
    got = rows.read_rows(out)
    assert [r["path"] for r in got] == images and [r["index"] for r in got] == list(range(10))
    err = got[6]
    assert bad in err["error"] and "is not an image Pillow can read" in err["error"]
    assert all(err[k] is None for k in ("pred_label", "pred_score", "topk_labels", "topk_scores"))
    assert all(r["error"] is None and r["pred_label"] is not None for r in got if r is not err)


def test_resume_after_a_torn_last_line_gives_every_image_once(tmp_path, small_model):
    make_images(tmp_path / "imgs", 12)
    fresh, out = tmp_path / "fresh.jsonl", tmp_path / "preds.jsonl"
    cspnet.predict_files(small_model, [str(tmp_path / "imgs")], fresh, num_workers=0)
    lines = fresh.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:40])  # killed mid-write
    (tmp_path / "preds.jsonl.meta.json").write_text((tmp_path / "fresh.jsonl.meta.json").read_text())
    done = cspnet.predict_files(small_model, [str(tmp_path / "imgs")], out, batch_size=3, num_workers=0, resume=True)
    assert (done.resumed, done.written) == (5, 7)
    assert [_key(r) for r in rows.read_rows(out)] == [_key(r) for r in rows.read_rows(fresh)]
    assert out.read_text().count("\n") == 12 and out.read_text().endswith("}\n")  # the torn tail was cut


@reliability("predict-resume-other-inputs", "predict-resume-other-model")
def test_resume_refuses_rows_of_other_inputs_or_another_model(tmp_path, small_model):
    make_images(tmp_path / "imgs", 6)
    make_images(tmp_path / "more", 2, seed=1)
    out = tmp_path / "preds.jsonl"
    cspnet.predict_files(small_model, [str(tmp_path / "imgs")], out, num_workers=0)
    with pytest.raises(InvalidOptionError, match="it was written for other inputs"):
        cspnet.predict_files(small_model, [str(tmp_path / "more"), str(tmp_path / "imgs")], out, resume=True)
    with pytest.raises(InvalidOptionError, match="holds rows of another kind \\(topk: 5 then, 3 now\\)"):
        cspnet.predict_files(small_model, [str(tmp_path / "imgs")], out, resume=True, topk=3)
    # more inputs after the same ones: resumed, the new ones appended
    done = cspnet.predict_files(small_model, [str(tmp_path / "imgs"), str(tmp_path / "more")], out, resume=True,
                                num_workers=0)
    assert (done.resumed, done.written) == (6, 2) and len(rows.read_rows(out)) == 8


def test_parts_of_a_killed_multi_process_run_are_resumed_by_one(tmp_path, small_model):
    make_images(tmp_path / "imgs", 14)
    fresh, out = tmp_path / "fresh.jsonl", tmp_path / "preds.csv"
    cspnet.predict_files(small_model, [str(tmp_path / "imgs")], fresh, num_workers=0)
    every = fresh.read_text().splitlines(keepends=True)
    # 2 ranks killed after 4 and 3 rows of their shards (rank r: r, r+2, ...), rank 1 mid-line
    part_path(out, 0, 2).write_text("".join(every[0::2][:4]))
    part_path(out, 1, 2).write_text("".join(every[1::2][:3]) + every[7][:30])
    plan = plan_predict([str(tmp_path / "imgs")], out, resume=True)
    assert plan.resumed == 7 and plan.todo == list(range(7, 14))  # the torn row 7 is predicted again
    done = cspnet.predict_files(small_model, plan, num_workers=0, batch_size=4)
    assert (done.resumed, done.written) == (7, 7) and not list(tmp_path.glob("preds.csv.part*"))
    got = rows.read_rows(out)
    assert sorted(r["index"] for r in got) == list(range(14))  # every image exactly once
    assert sorted(map(json.dumps, map(_key, got))) == sorted(map(json.dumps, map(_key, rows.read_rows(fresh))))
    # a run killed after its merge, before removing its parts: they are found stale, not counted twice
    part_path(out, 0, 3).write_text("".join(every[0::3]))
    done = cspnet.predict_files(small_model, [str(tmp_path / "imgs")], out, resume=True)
    assert (done.resumed, done.written) == (14, 0) and not part_path(out, 0, 3).exists()
    assert len(rows.read_rows(out)) == 14


# ---------------------------------------------------------------------------------------------- the command line
def test_the_command_line_reads_lists_and_stdin_and_prints_small_runs(tmp_path, small_model, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    images = sorted(str(p) for p in make_images(Path("imgs"), 4))
    monkeypatch.setattr(predict_cli, "load_model", lambda args, device=None: small_model)
    Path("list.txt").write_text("\n".join(images[:2]) + "\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(images[3] + "\n"))
    assert cli(["predict", "@list.txt", "-", "--topk", "2", "--json", "--num-workers", "0"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [s["image"] for s in shown] == [images[0], images[1], images[3]] and len(shown[0]["topk"]) == 2
    Path(images[2]).write_bytes(b"broken")
    assert cli(["predict", "imgs", "--skip-bad", "--num-workers", "0"]) == 0
    out = capsys.readouterr().out
    assert f"{images[2]}  (cspresnet50)\n  error: {images[2]!r} is not an image" in out and out.count("  1. ") == 3
    assert cli(["predict", "imgs/**/*.jpg", "--output", "q.jsonl", "--skip-bad", "--json", "--num-workers", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 2 and summary["inputs"] == 2 and [e["path"] for e in summary["errors"]] == [
        images[2]] and images[2].endswith(".jpg")
    # without --skip-bad: exit 2 naming the image, the rows before it complete; --resume --skip-bad goes on
    assert cli(["predict", "imgs", "--output", "p.jsonl", "--num-workers", "0"]) == 2
    err = capsys.readouterr().err
    assert f"cspnet predict: error: {images[2]!r} is not an image" in err and "the 2 rows in 'p.jsonl'" in err
    assert cli(["predict", "imgs", "--output", "p.jsonl", "--resume", "--skip-bad", "--num-workers", "0"]) == 0
    assert "wrote 2 rows to p.jsonl after the 2 already there (4 inputs" in capsys.readouterr().out
    assert sorted(r["path"] for r in rows.read_rows("p.jsonl")) == sorted(images)


# ------------------------------------------------------------------------------------------- processes: kill, torchrun
_SCRIPT = """
import sys, torch
import cspnet.cli.predict
model = torch.load(sys.argv[1], weights_only=False)
cspnet.cli.predict.load_model = lambda args, device=None: model.to(device)
sys.exit(cspnet.cli.main(sys.argv[2:]))
"""


@pytest.fixture
def launcher(tmp_path, small_model):
    """``[python, script, model file]``: ``cspnet ...`` in a new process, with the small model as the one loaded."""
    import torch

    model_file, script = tmp_path / "model.pt", tmp_path / "run_cli.py"
    torch.save(small_model, model_file)
    script.write_text(_SCRIPT)
    return [str(script), str(model_file)]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}


@pytest.mark.slow
def test_a_run_killed_halfway_and_resumed_gives_every_image_once(thousand, tmp_path, launcher, small_model,
                                                                  monkeypatch, capsys):
    out = tmp_path / "preds.jsonl"
    args = ["predict", str(thousand), "--output", str(out), "--batch-size", "8", "--num-workers", "0"]
    proc = subprocess.Popen([sys.executable, *launcher, *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while (not out.exists() or out.read_bytes().count(b"\n") < 300) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    first = out.read_bytes().count(b"\n")
    assert 300 <= first < 1000, first  # killed halfway, not after the end
    assert proc.returncode == -signal.SIGKILL
    monkeypatch.setattr(predict_cli, "load_model", lambda args, device=None: small_model)
    assert cli([*args, "--resume"]) == 0  # in this process: a process start less
    assert f"after the {first} already there (1000 inputs" in capsys.readouterr().out
    got = rows.read_rows(out)
    fresh = cspnet.predict_files(small_model, [str(thousand)], batch_size=32, num_workers=0).rows
    assert [r["index"] for r in got] == list(range(1000))  # every image exactly once, in input order
    assert [_key(r) for r in got] == [_key(r) for r in fresh]


@pytest.mark.slow
def test_two_torchrun_processes_write_the_rows_of_one(thousand, tmp_path, launcher, small_model):
    out = tmp_path / "two.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *launcher,
           "predict", str(thousand), "--output", str(out), "--launcher", "pytorch", "--device", "cpu",
           "--batch-size", "16", "--num-workers", "0"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote 1000 rows") == 1  # rank 0 says it
    one = cspnet.predict_files(small_model, [str(thousand)], tmp_path / "one.jsonl", batch_size=16, num_workers=0)
    assert one.written == 1000
    two = rows.read_rows(out)
    assert [r["index"] for r in two] == list(range(1000))  # merged in index order, every input once
    assert [_key(r) for r in two] == [_key(r) for r in rows.read_rows(tmp_path / "one.jsonl")]
    assert not list(tmp_path.glob("two.jsonl.part*"))  # the parts are removed after the merge
