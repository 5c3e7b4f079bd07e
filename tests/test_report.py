"""`cspnet report`: per-class metrics and the confusion matrix against an independent computation (numpy and
scikit-learn), the PNG and the HTML page as a reader opens them, the gallery's names, and bad input."""

import base64
import csv
import io
import json
import runpy
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cspnet import rows as rowsmod
from cspnet.cli import main
from cspnet.errors import DatasetError, InvalidOptionError
from cspnet.report import (THUMB, ReportOptions, caption_thumbnail, compute, confused_pairs, load, predictions,
                           write_report)

from test_evaluate import data as evaluation_data  # noqa: F401 (a fixture: the end-to-end test's data set)

TOOLS = Path(__file__).resolve().parents[1] / "tools" / "analysis_tools"


def synthetic(n: int, k: int, seed: int = 0, used: int | None = None, real: bool = False, images: Path | None = None):
    """``n`` rows of a ``k``-class model whose labels are drawn from the first ``used`` classes (the others never
    occur), right about 70% of the time; with ``images``, each row names a small picture there of its own colour."""
    rng = np.random.default_rng(seed)
    classes = [f"cls-{i}" for i in range(k)]
    used = k if used is None else used
    label = rng.integers(0, used, n)
    out = []
    for i in range(n):
        logits = rng.normal(size=k)
        logits[label[i]] += 1.5
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        top = np.argsort(-prob)[:5]
        path = f"img-{i}.png"
        if images is not None:
            Image.new("RGB", (40 + i % 7, 30), tuple(int(c) for c in rng.integers(0, 255, 3))).save(images / path)
        labels = None
        if real:  # ReaL: the original label, sometimes with a second one, sometimes none at all
            labels = [] if i % 5 == 0 else sorted({int(label[i]), int(rng.integers(0, used))})
        out.append(rowsmod.make_row(i, str(images / path) if images else path, top, prob[top], classes,
                                    int(label[i]), labels))
    return out, classes


def write_rows(path: Path, rows, classes=None) -> Path:
    with rowsmod.open_writer(path) as w:
        w.write(rows)
    if classes is not None:
        rowsmod.write_meta(path, {"classes": classes})
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_per_class_metrics_and_confusion_equal_numpy_and_sklearn(tmp_path, suffix):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rows, classes = synthetic(600, 12, used=10)  # classes 10 and 11 never occur (one is predicted, surely)
    path = write_rows(tmp_path / f"r{suffix}", rows, classes)
    p = load(path)
    m = compute(p, (1, 5))
    y = np.array([r["label"] for r in rows])
    yhat = np.array([r["pred_label"] for r in rows])

    # the confusion matrix, counted one image at a time, and by scikit-learn
    want = np.zeros((12, 12), dtype=np.int64)
    for t, q in zip(y, yhat):
        want[t, q] += 1
    assert (m.conf == want).all() and m.conf.sum() == 600
    assert (m.conf == confusion_matrix(y, yhat, labels=range(12))).all()

    prec, rec, f1, sup = precision_recall_fscore_support(y, yhat, labels=range(12), zero_division=0)
    np.testing.assert_allclose(m.per_class["precision"], prec, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.per_class["recall"], rec, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.per_class["f1"], f1, rtol=0, atol=1e-12)
    assert (m.per_class["support"] == sup).all() and sup[10:].sum() == 0
    for avg in ("macro", "weighted"):  # macro over the classes seen in y or yhat: scikit-learn's default labels
        want_p, want_r, want_f, _ = precision_recall_fscore_support(y, yhat, average=avg, zero_division=0)
        assert m.averages[avg] == pytest.approx({"precision": want_p, "recall": want_r, "f1": want_f}, abs=1e-12)
    top5 = np.array([r["topk_labels"] for r in rows])
    assert m.topk[1] == pytest.approx(100 * (yhat == y).mean())
    assert m.topk[5] == pytest.approx(100 * np.mean([t in row for t, row in zip(y, top5)]))
    assert 0 < m.topk[1] < m.topk[5] < 100

    # the files say the same: the CSV per class, and the pairs CSV rebuilds the whole matrix
    rep = write_report(p, ReportOptions(tmp_path / "rep", gallery=0, plot=False))
    table = list(csv.DictReader(open(rep.files["per_class"], encoding="utf-8")))
    assert [r["name"] for r in table] == classes
    for name, col in (("precision", prec), ("recall", rec), ("f1", f1)):
        np.testing.assert_allclose([float(r[name]) for r in table], col, atol=1e-6)
    assert [int(r["support"]) for r in table] == sup.tolist()
    rebuilt = np.zeros_like(want)
    for r in csv.DictReader(open(rep.files["pairs"], encoding="utf-8")):
        rebuilt[int(r["true"]), int(r["pred"])] += int(r["count"])
    assert (rebuilt == want).all()
    off = want.copy()
    np.fill_diagonal(off, 0)
    pairs = confused_pairs(m.conf, 5)
    assert [c for _, _, c in pairs] == sorted(off.reshape(-1), reverse=True)[:5]
    assert all(off[t, q] == c for t, q, c in pairs)


def test_real_rows_count_a_hit_in_the_label_set_and_per_class_uses_the_original_label(tmp_path):
    from sklearn.metrics import precision_recall_fscore_support

    rows, classes = synthetic(300, 8, seed=1, real=True)
    p = predictions(rows, "real.jsonl", classes)
    m = compute(p, (1, 5))
    judged = [r for r in rows if r["labels"]]
    assert len(judged) == 240
    assert m.topk[1] == pytest.approx(100 * np.mean([r["pred_label"] in r["labels"] for r in judged]))
    assert m.topk[5] == pytest.approx(100 * np.mean([bool(set(r["topk_labels"]) & set(r["labels"])) for r in judged]))
    y, yhat = [r["label"] for r in rows], [r["pred_label"] for r in rows]
    assert m.top1_label == pytest.approx(100 * np.mean(np.array(y) == np.array(yhat)))
    assert m.topk[1] > m.top1_label  # a second label only adds hits
    _, rec, _, _ = precision_recall_fscore_support(y, yhat, labels=range(8), zero_division=0)
    np.testing.assert_allclose(m.per_class["recall"], rec, atol=1e-12)
    assert p.rule.startswith("ReaL") and m.summary(p)["accuracy/top1_original_label"] == m.top1_label
    rep = write_report(p, ReportOptions(tmp_path / "rep", gallery=0, plot=False))
    text = "".join(parse_page(rep.files["html"]).text)
    assert f"Top-k rule: {p.rule}." in text and "top-1 accuracy by the original label" in text
    assert "ReaL: 60 image(s) with an empty label set are not counted in top-k" in rep.notes


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.tables, self.rows, self.text = [], [], 0, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "table":
            self.tables += 1
            self.rows.append(0)
        elif tag == "tr":
            self.rows[-1] += 1

    def handle_data(self, data):
        self.text.append(data)


def parse_page(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


@pytest.mark.parametrize("k, full", [(12, True), (1000, False)])
def test_png_and_html_open_and_link_what_they_show(tmp_path, capsys, k, full):
    images = tmp_path / "images"
    images.mkdir()
    rows, classes = synthetic(400 if full else 3000, k, images=images if full else None)
    path = write_rows(tmp_path / "r.jsonl", rows, classes)
    out = tmp_path / "report"
    assert main(["report", str(path), "--output", str(out), "--gallery", "4", "--include-values"]) == 0
    said = capsys.readouterr().out
    assert "accuracy/top1" in said and f"wrote {out / 'index.html'}" in said

    with Image.open(out / "confusion.png") as png:
        png.load()
        # the matrix panel beside the pairs only up to 100 classes: at 1000 it is the pairs' bar chart alone
        assert png.format == "PNG" and png.size[0] == (2000 if full else 1000)
    page = parse_page(out / "index.html")
    data = [s for s in page.imgs if s.startswith("data:image/png;base64,")]
    assert len(data) == 1 and base64.b64decode(data[0].split(",", 1)[1]) == (out / "confusion.png").read_bytes()
    for link in [*page.links, *page.imgs]:
        if not link.startswith("data:"):
            assert (out / link).is_file(), link  # every relative link resolves: the page needs no server
    assert "per_class.csv" in page.links
    # tables: summary, the 30 pairs, the 20 worst: bounded, whatever the class count (1000 classes stay in the CSV)
    assert page.tables == 3 and max(page.rows) <= 31
    assert "a hit when the true label is among the top-k predictions" in "".join(page.text)
    gallery = [s for s in page.imgs if not s.startswith("data:")]
    assert (len(gallery) == 8) == full and all(s.startswith("gallery/") for s in gallery)
    if not full:  # rows naming images that are not there: the report says so and goes on
        assert "gallery: 3000 image(s) not found, skipped" in said
        assert "--include-values: no full matrix is drawn at 1000 classes" in said
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["classes"] == k and len(summary["worst_classes"]) == min(20, k)
    assert len(summary["confused_pairs"]) == 30


def test_gallery_shows_the_right_names_and_picks_the_right_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows, classes = synthetic(120, 6, seed=3, images=images)
    p = predictions(rows, str(tmp_path / "r.jsonl"), classes)
    rep = write_report(p, ReportOptions(tmp_path / "rep", show_dir=tmp_path / "shown", gallery=5, plot=False))
    mistakes = [g for g in rep.gallery if g.kind == "mistake"]
    hits = [g for g in rep.gallery if g.kind == "hit"]
    wrong = sorted((r for r in rows if r["pred_label"] != r["label"]), key=lambda r: -r["pred_score"])
    right = sorted((r for r in rows if r["pred_label"] == r["label"]), key=lambda r: r["pred_score"])
    assert [g.index for g in mistakes] == [r["index"] for r in wrong[:5]]
    assert [g.index for g in hits] == [r["index"] for r in right[:5]]
    page = parse_page(rep.files["html"])  # a --show-dir beside the report: linked as ../shown/...
    assert sorted(page.imgs) == sorted(f"../shown/{g.kind}s/{g.file.name}" for g in rep.gallery)
    assert all((tmp_path / "rep" / src).is_file() for src in page.imgs)
    by_index = {r["index"]: r for r in rows}
    for g in rep.gallery:
        r = by_index[g.index]
        assert g.true_name == classes[r["label"]] and g.pred_name == classes[r["pred_label"]]
        assert g.lines[0] == f"true: {classes[r['label']]}" and g.lines[1] == f"pred: {classes[r['pred_label']]}"
        assert f"{100 * r['pred_score']:.1f}%" in g.lines[2]
        assert g.file.parent == tmp_path / "shown" / f"{g.kind}s" and g.source == r["path"]
        with Image.open(g.file) as pic, Image.open(r["path"]) as src:
            assert max(pic.size) <= THUMB
            assert pic.size != src.size and pic.width == THUMB  # enlarged to the thumbnail's width
            rgb = np.asarray(pic.convert("RGB"), dtype=np.int16)
            photo_h = round(src.height * THUMB / src.width)
            colour = np.asarray(src.convert("RGB"))[0, 0]
            assert np.abs(rgb[5: photo_h - 5] - colour).max() < 12  # the photo on top (JPEG's error)...
            band = rgb[photo_h + 2:]
            assert len(np.unique(band.reshape(-1, 3), axis=0)) > 10  # ...and beneath it a band of drawn text


def test_caption_text_is_drawn_and_cut_to_fit():
    src = Image.new("RGB", (400, 300), (0, 0, 200))
    plain, _ = caption_thumbnail(src, ["", "", ""], hit=True)
    drawn, lines = caption_thumbnail(src, ["true: tabby", "pred: " + "very long name " * 10, "score: 9.0%"], True)
    assert plain.size == drawn.size and max(drawn.size) <= THUMB
    assert (np.asarray(plain) != np.asarray(drawn)).any()
    assert lines[0] == "true: tabby" and lines[1].endswith("…") and len(lines[1]) < 60
    line, _ = caption_thumbnail(Image.new("RGB", (100000, 1)), ["a"], hit=False)  # an extreme aspect ratio
    assert line.size == (THUMB, 1 + 4 * 2 + 15)


@pytest.mark.reliability("report-empty-rows", "report-predict-output", "report-label-outside-classes",
                         "report-sidecar-mismatch")
def test_bad_rows_are_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError, match=f"{empty}: no rows; expected the per-image rows of `cspnet test"):
        load(empty)
    rows, classes = synthetic(20, 5)
    unlabelled = write_rows(tmp_path / "pred.csv", [{**r, "label": None} for r in rows])
    with pytest.raises(DatasetError, match=r"pred.csv: no row has a true label \(a `cspnet predict` output\?\)"):
        load(unlabelled)
    outside = write_rows(tmp_path / "out.jsonl", rows, classes[:3])  # a sidecar of another, smaller model
    with pytest.raises(DatasetError, match=r"out.jsonl: (label|pred_label|topk_labels) \d of row index \d+ .* is "
                                           r"outside the 3 classes of its sidecar's class list"):
        load(outside)
    other = write_rows(tmp_path / "other.jsonl", rows, [f"x{i}" for i in range(5)])
    with pytest.raises(DatasetError, match=r"other.jsonl: the rows name class \d 'cls-\d', its sidecar 'x\d'; the "
                                           r"sidecar belongs to another model"):
        load(other)
    assert main(["report", str(empty), "--output", str(tmp_path / "r")]) == 2


@pytest.mark.reliability("report-error-rows")
def test_rows_of_unreadable_images_are_left_out_and_counted(tmp_path):
    rows, classes = synthetic(30, 4)
    bad = [rowsmod.error_row(30 + i, f"gone-{i}.jpg", "image file does not exist") for i in range(3)]
    p = predictions(rows + bad, "r.jsonl", classes)
    assert len(p.label) == 30 and p.skipped == 3
    rep = write_report(p, ReportOptions(tmp_path / "rep", gallery=0, plot=False))
    assert "3 row(s) with an error (an image that could not be read) are left out" in rep.notes
    assert compute(p).conf.sum() == 30
    with pytest.raises(DatasetError, match="all 3 rows are errors"):
        predictions(bad, "r.jsonl", classes)


@pytest.mark.reliability("report-gallery-missing-image")
def test_a_missing_gallery_image_is_skipped_and_named(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows, classes = synthetic(60, 4, seed=2, images=images)
    worst = max((r for r in rows if r["pred_label"] != r["label"]), key=lambda r: r["pred_score"])
    Path(worst["path"]).unlink()
    p = predictions(rows, str(tmp_path / "r.jsonl"), classes)
    rep = write_report(p, ReportOptions(tmp_path / "rep", gallery=3, plot=False))
    assert [g.kind for g in rep.gallery] == ["mistake"] * 3 + ["hit"] * 3  # the next one takes its place
    assert worst["index"] not in [g.index for g in rep.gallery]
    assert any("gallery: 1 image(s) not found, skipped" in n and worst["path"] in n for n in rep.notes)
    assert worst["path"] in (tmp_path / "rep" / "index.html").read_text()


@pytest.mark.reliability("report-output-checked-first", "report-output-is-input")
def test_outputs_are_checked_before_the_rows_are_read(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InvalidOptionError, match="--output .* is a file, not a folder"):
        ReportOptions(blocker / "rep").check([bad])
    assert main(["report", str(bad), "--output", str(blocker / "rep")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err  # not the rows' bad line: that was never read
    rows, classes = synthetic(20, 4)
    (tmp_path / "rep").mkdir()
    inside = write_rows(tmp_path / "rep" / "per_class.csv", rows, classes)  # the rows where the table would go
    before = inside.read_bytes()
    capsys.readouterr()
    assert main(["report", str(inside), "--output", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert "per_class.csv' is the input" in err and "writing it would replace the input" in err
    assert inside.read_bytes() == before and not (tmp_path / "rep" / "index.html").exists()


@pytest.mark.reliability("report-no-matplotlib")
def test_without_matplotlib_the_error_says_how_to_add_it_and_no_plot_works(tmp_path, monkeypatch, capsys):
    rows, classes = synthetic(30, 4)
    path = write_rows(tmp_path / "r.jsonl", rows, classes)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # `import matplotlib.figure` now fails
    assert main(["report", str(path), "--output", str(tmp_path / "a")]) == 2
    assert 'matplotlib, which is not installed: pip install "cspnet[plot]" adds it' in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(["report", str(path), "--output", str(tmp_path / "b"), "--no-plot", "--gallery", "0"]) == 0
    assert sorted(f.name for f in (tmp_path / "b").iterdir()) == [
        "confusion_pairs.csv", "index.html", "metrics.json", "per_class.csv"]


def test_metrics_only_prints_and_writes_nothing(tmp_path, capsys):
    rows, classes = synthetic(50, 4)
    path = write_rows(tmp_path / "r.jsonl", rows, classes)
    assert main(["report", str(path), "--metrics-only", "--json", "--topk", "1", "3"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["accuracy/top1"] == pytest.approx(100 * np.mean([r["pred_label"] == r["label"] for r in rows]))
    assert got["accuracy/top3"] == pytest.approx(100 * np.mean([r["label"] in r["topk_labels"][:3] for r in rows]))
    assert "accuracy/top5" not in got and got["files"] == {}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.meta.json"]


def tool(monkeypatch, name: str, *argv: str) -> int:
    """Run tools/analysis_tools/<name> in this process, as `python <name> argv...` would."""
    monkeypatch.setattr(sys, "argv", [name, *argv])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(TOOLS / name), run_name="__main__")
    return e.value.code


def test_mmpretrain_named_tools(tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rows, classes = synthetic(80, 5, images=images)
    path = write_rows(tmp_path / "r.jsonl", rows, classes)
    conf = compute(load(path), (1,)).conf

    assert tool(monkeypatch, "eval_metric.py", "cfg.py", str(path), "--metric", "type=Accuracy", "topk=1,2",
                "--json") == 0
    got = json.loads(capsys.readouterr().out)
    assert got["accuracy/top2"] == pytest.approx(100 * np.mean([r["label"] in r["topk_labels"][:2] for r in rows]))
    assert tool(monkeypatch, "eval_metric.py", str(path), "--metric", "type=Accuracy", "thrs=0.5") == 2
    assert "thrs not supported" in capsys.readouterr().err

    assert tool(monkeypatch, "confusion_matrix.py", "cfg.py", str(path), "--out", str(tmp_path / "cm.npy"),
                "--show-path", str(tmp_path / "cm.png"), "--include-values") == 0
    assert (np.load(tmp_path / "cm.npy") == conf).all()
    with Image.open(tmp_path / "cm.png") as png:
        assert png.format == "PNG"
    assert tool(monkeypatch, "confusion_matrix.py", str(path), "--out", str(tmp_path / "cm.csv")) == 0
    table = list(csv.reader(io.StringIO((tmp_path / "cm.csv").read_text())))
    assert table[0][1:] == classes and np.array([r[1:] for r in table[1:]], dtype=int).tolist() == conf.tolist()
    assert tool(monkeypatch, "confusion_matrix.py", "cfg.py", "epoch_3.pth") == 2
    assert "is a checkpoint: evaluate it first with `python tools/test.py" in capsys.readouterr().err

    assert tool(monkeypatch, "analyze_results.py", "cfg.py", str(path), "--out-dir", str(tmp_path / "ar"),
                "--topk", "2") == 0
    assert len(list((tmp_path / "ar" / "gallery" / "mistakes").iterdir())) == 2
    assert len(list((tmp_path / "ar" / "gallery" / "hits").iterdir())) == 2


@pytest.mark.slow
def test_a_whole_report_runs_without_torch(tmp_path):
    import subprocess

    images = tmp_path / "images"
    images.mkdir()
    rows, classes = synthetic(40, 4, images=images)
    path = write_rows(tmp_path / "r.csv", rows, classes)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "cspnet", "report", str(path), "--gallery", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")}
    assert "cspnet.report" in imported and "matplotlib.figure" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
    assert (tmp_path / "r-report" / "index.html").is_file()  # the default folder, beside the rows
    assert len(list((tmp_path / "r-report" / "gallery" / "hits").iterdir())) == 2


def test_the_rows_of_cspnet_test_make_a_report_with_its_numbers(tmp_path, capsys, evaluation_data):  # noqa: F811
    # the 7-image folder dataset and cspresnet50 checkpoint of tests/test_evaluate.py: the rows as `cspnet test` writes
    from test_evaluate import R50, SMALL

    data = evaluation_data
    out = tmp_path / "res.jsonl"
    assert main(["test", R50, data["ckpt"], "--out", str(out), "--num-workers", "0", "--cfg-options", *SMALL,
                 f"test_dataloader.dataset.data_root={data['roots']['folder']}"]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--gallery", "3", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    meta = rowsmod.read_meta(out)
    assert got["classes"] == 1000 and got["images"] == 7
    assert got["accuracy/top1"] == pytest.approx(meta["metrics"]["accuracy/top1"])
    assert got["accuracy/top5"] == pytest.approx(meta["metrics"]["accuracy/top5"])
    summary = json.loads((tmp_path / "res-report" / "metrics.json").read_text())
    names = meta["classes"]
    by_index = {r["index"]: r for r in rowsmod.read_rows(out)}
    assert summary["gallery"] and all(g["true"] == names[by_index[g["index"]]["label"]] for g in summary["gallery"])
