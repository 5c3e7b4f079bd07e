"""Seeing a run: :mod:`cspnet.plotting` on synthetic ``log.jsonl`` files, ``cspnet plot`` and mmpretrain's
``tools/analysis_tools/analyze_logs.py plot_curve``; and ``inference_model``'s progress bar on stderr."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cspnet.cli import main
from cspnet.plotting import draw_runs, plot_runs, read_log

import golden

ANALYZE_LOGS = Path(__file__).resolve().parents[1] / "tools" / "analysis_tools" / "analyze_logs.py"


def write_log(folder: Path, epochs: int = 2, iters: int = 3, scale: float = 1.0, ema: bool = True) -> Path:
    """A trainer's log.jsonl in ``folder``: ``iters`` train rows and one val row per epoch (loss 2/step, lr 0.1/step,
    top-1 10*epoch, EMA top-1 10*epoch+1, top-5 20*epoch, all times ``scale``)."""
    rows = []
    for epoch in range(1, epochs + 1):
        for it in range(1, iters + 1):
            step = (epoch - 1) * iters + it
            rows.append({"mode": "train", "epoch": epoch, "iter": it, "iters": iters, "step": step,
                         "lr": scale * 0.1 / step, "loss": scale * 2 / step, "img_s": 100.0, "time": 0.1})
        val = {"mode": "val", "epoch": epoch, "step": epoch * iters, "top1": scale * 10 * epoch,
               "top5": scale * 20 * epoch}
        rows.append({**val, "ema_top1": scale * 10 * epoch + 1, "ema_top5": 50.0} if ema else val)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder / "log.jsonl"


def lines(ax) -> dict[str, tuple[list, list, str, str]]:
    """legend label -> (xs, ys, colour, line style) of every line drawn on ``ax``."""
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata()), ln.get_color(), ln.get_linestyle())
            for ln in ax.get_lines()}


def assert_png(path: Path, size=(1600, 450)) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:  # figsize (16, 4.5) at dpi 100
        assert im.size == size


def test_one_run_draws_its_loss_accuracy_and_lr(tmp_path):
    log = write_log(tmp_path / "run_a")
    fig = draw_runs([log])
    loss, val, lr = fig.axes
    assert lines(loss) == {"run_a": ([1, 2, 3, 4, 5, 6], [2 / s for s in range(1, 7)], "C0", "-")}
    assert lines(lr)["run_a"][:2] == ([1, 2, 3, 4, 5, 6], [0.1 / s for s in range(1, 7)])
    drawn = lines(val)
    assert drawn["run_a top-1"] == ([1, 2], [10, 20], "C0", "-")
    assert drawn["run_a EMA top-1"] == ([1, 2], [11, 21], "C0", "--")  # dashed, the run's colour
    assert drawn["run_a top-5"][:2] == ([1, 2], [20, 40])
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["run_a"]
    out = plot_runs([log], tmp_path / "out" / "curves.png")
    assert out == tmp_path / "out" / "curves.png" and 10_000 < out.stat().st_size < 1_000_000
    assert_png(out)
    assert not list(out.parent.glob(".*partial"))  # atomic: no temporary file left


def test_two_runs_one_colour_each_and_their_labels(tmp_path):
    a, b = write_log(tmp_path / "a"), write_log(tmp_path / "b", epochs=3, scale=2.0, ema=False)
    loss, val, lr = draw_runs([a, b], labels=["base", "wide"]).axes
    drawn = lines(loss)
    assert drawn["base"][2] == "C0" and drawn["wide"][2] == "C1"
    assert drawn["wide"][1] == [4 / s for s in range(1, 10)]
    assert set(lines(val)) == {"base top-1", "base EMA top-1", "base top-5", "wide top-1", "wide top-5"}
    assert lines(val)["wide top-1"][:3] == ([1, 2, 3], [20, 40, 60], "C1")
    assert set(lines(lr)) == {"base", "wide"}
    assert_png(plot_runs([a, b], tmp_path / "both.png", labels=["base", "wide"]))
    with pytest.raises(ValueError, match="1 labels for 2 runs"):
        draw_runs([a, b], labels=["base"])


def test_a_half_written_last_line_is_skipped_and_an_empty_log_gives_empty_panels(tmp_path):
    log = write_log(tmp_path / "killed")
    whole = read_log(log)
    with open(log, "a", encoding="utf-8") as f:
        f.write('{"mode": "train", "epoch": 3, "iter": 1, "st')  # killed while writing
    assert read_log(log) == whole and len(whole["loss"]) == 6 and whole["ema_top1"] == [(1, 11), (2, 21)]
    assert_png(plot_runs([log], tmp_path / "killed.png"))
    empty = tmp_path / "empty" / "log.jsonl"
    empty.parent.mkdir()
    empty.write_text("")
    assert all(not ax.get_lines() for ax in draw_runs([empty]).axes)
    assert_png(plot_runs([empty], tmp_path / "empty.png"))


def test_without_matplotlib_nothing_is_written_and_the_log_says_how_to_add_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # `from matplotlib.figure import` now fails
    assert plot_runs([write_log(tmp_path / "r")], tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists() and "pip install 'cspnet[plot]'" in caplog.text


def test_cli_plots_a_run_folder_into_it(tmp_path, capsys):
    write_log(tmp_path / "run")
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert_png(tmp_path / "run" / "curves.png")
    assert f"wrote {tmp_path / 'run' / 'curves.png'}" in capsys.readouterr().out


def test_cli_takes_the_newest_run_of_a_work_dir(tmp_path, capsys):
    work = tmp_path / "work_dirs" / "cspdarknet53"
    write_log(work / "20261201_120000")
    write_log(work / "20261202_031100")
    (work / "20261203_000000").mkdir()  # a run that died before its first log line: not taken
    assert main(["plot", str(work)]) == 0
    out = capsys.readouterr().out
    assert "newest of its 2 run(s), 20261202_031100" in out
    assert (work / "20261202_031100" / "curves.png").is_file()
    assert not (work / "20261201_120000" / "curves.png").exists()


def test_cli_several_runs_go_to_the_current_folder(tmp_path, monkeypatch, capsys):
    a, b = write_log(tmp_path / "a"), write_log(tmp_path / "b")
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(a), str(b.parent), "--labels", "x", "y"]) == 0
    assert_png(tmp_path / "curves.png")
    assert main(["plot", str(a), str(b), "--labels", "x"]) == 2
    assert "--labels: 1 label(s) for 2 run(s)" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["missing", "empty folder"])
def test_cli_a_run_without_a_log_is_an_error_naming_it(tmp_path, capsys, make):
    run = tmp_path / "nope"
    if make == "empty folder":
        (run / "sub").mkdir(parents=True)
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"cspnet plot: error: {run}: " in err and "expected a log.jsonl file, a run folder holding log.jsonl" in err


def test_analyze_logs_plot_curve_as_mmpretrain(tmp_path):
    a, b = write_log(tmp_path / "a"), write_log(tmp_path / "b")
    out = tmp_path / "x.png"
    proc = subprocess.run([sys.executable, str(ANALYZE_LOGS), "plot_curve", str(a), str(b), "--keys", "loss", "lr",
                           "--out", str(out), "--legend", "A", "B"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    assert_png(out)
    proc = subprocess.run([sys.executable, str(ANALYZE_LOGS), "plot_curve", str(a), "--keys", "loss", "grad_norm"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--keys grad_norm: not drawn; the figure shows loss, lr, top1" in proc.stderr


def test_inference_model_progress_bar_goes_to_stderr_only(tiny_classifier, capsys, monkeypatch):
    import functools

    import cspnet
    import cspnet.inference
    from tqdm import tqdm

    # every update drawn (tqdm skips those within 0.1 s of the last, i.e. all of them here)
    monkeypatch.setattr(cspnet.inference, "tqdm", functools.partial(tqdm, mininterval=0, miniters=1))
    model, images = tiny_classifier(), [str(golden.DEMO / "dog.jpg")] * 3
    cspnet.inference_model(model, images, batch_size=2, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "predict" in err and "2/3" in err and "3/3" in err and "img/s" in err
    cspnet.inference_model(model, images, batch_size=2, progress=None)  # None: a bar only on a terminal
    assert capsys.readouterr() == ("", "")
