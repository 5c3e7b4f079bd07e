"""The evaluation report of a ``cspnet test --out`` rows file: top-k accuracy, per-class precision/recall/F1, the
confusion matrix, the worst classes, and a gallery of the most confident mistakes and least confident hits, linked
from one HTML page (no server needed).

Torch-free: numpy and Pillow, and matplotlib (the ``plot`` extra) for the confusion PNG. Bounded by what it writes:
a dense ``(K, K)`` int64 matrix (8 MB at 1000 classes), one pass over the rows, a gallery of ``2 * n`` thumbnails of
at most :data:`THUMB` pixels, and tables of ``n`` lines (the full per-class table goes to CSV, never into the HTML).

Per-class metrics follow scikit-learn's ``precision_recall_fscore_support``: a class that is never predicted has
precision 0, one never present recall 0, and the macro average is taken over the classes present in the true or
the predicted labels (not over every class of the model: a 10-class subset of ImageNet would otherwise average
990 zeros). For ReaL rows (``labels`` set) the top-k accuracy counts an image as correct when a top-k prediction
is in its label set, over the images whose set is not empty (Beyer et al., arXiv 2006.07159); the per-class
metrics and the confusion matrix still use ``label``, the original label.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ._io import atomic_write, check_folder, output_path
from .errors import DatasetError, InvalidOptionError

THUMB = 256  # the longest side of a gallery picture, caption included
PLOT_HINT = 'pip install "cspnet[plot]"'
FILES = {"html": "index.html", "per_class": "per_class.csv", "pairs": "confusion_pairs.csv",
         "png": "confusion.png", "metrics": "metrics.json"}
_FULL_MATRIX_MAX = 100  # classes up to which the PNG shows the whole matrix (a 1000 x 1000 image is unreadable)
_NAMED_TICKS_MAX = 30  # classes up to which the matrix's axes carry names rather than indices


@dataclass(frozen=True)
class Predictions:
    """A rows file's labelled predictions as arrays, ``N`` images (rows with an ``error`` left out) of ``K`` classes.

    ``label``, ``pred`` int64 ``(N,)``; ``score`` float64 ``(N,)``; ``topk`` int64 ``(N, k)`` (the smallest top-k
    length over the rows); ``real``: a tuple of N frozensets (ReaL label sets) or None; ``classes``: K names.
    """

    source: str
    label: np.ndarray
    pred: np.ndarray
    score: np.ndarray
    topk: np.ndarray
    paths: tuple[str, ...]
    index: tuple[int, ...]
    classes: tuple[str, ...]
    real: tuple[frozenset, ...] | None = None
    skipped: int = 0  # rows with an error (an image predict --skip-bad could not read)
    named: bool = True  # False when no names were found and classes are "class <i>"

    @property
    def rule(self) -> str:
        """How the top-k accuracy counts a hit, in words (the report says which rule was used)."""
        if self.real is None:
            return "a hit when the true label is among the top-k predictions"
        return ("ReaL: a hit when a top-k prediction is in the image's ReaL label set, over the images whose set is "
                "not empty; per-class metrics and the confusion matrix use the original label")

    def correct(self) -> np.ndarray:
        """bool ``(N,)``: the top-1 prediction is a hit by :attr:`rule` (False for an empty ReaL set)."""
        if self.real is None:
            return self.pred == self.label
        return np.array([p in s for p, s in zip(self.pred.tolist(), self.real)], dtype=bool)

    def judged(self) -> np.ndarray:
        """bool ``(N,)``: the images the top-k accuracy counts (all, or those with a non-empty ReaL set)."""
        if self.real is None:
            return np.ones(len(self.label), dtype=bool)
        return np.array([len(s) > 0 for s in self.real], dtype=bool)


def predictions(rows: Sequence[dict], source: str, classes: Sequence[str] | None = None) -> Predictions:
    """Check and convert ``rows`` (cspnet.rows' columns) of the file ``source``; ``classes`` from its sidecar.

    Without ``classes`` the class count is the largest label seen plus one and the names are those the rows carry
    (``pred_class``, ``topk_classes``), else ``class <i>``.

    Raises:
        DatasetError: no rows, only error rows, rows without a true label (a predict output), a mix of ReaL and
            plain rows, or a label or prediction outside the class list; each names ``source``.
    """
    if not rows:
        raise DatasetError(f"{source}: no rows; expected the per-image rows of `cspnet test --out FILE`")
    good = [r for r in rows if r.get("error") is None]
    if not good:
        raise DatasetError(f"{source}: all {len(rows)} rows are errors (images that could not be read); nothing to "
                           f"report")
    unlabelled = [r for r in good if r.get("label") is None]
    if len(unlabelled) == len(good):
        raise DatasetError(f"{source}: no row has a true label (a `cspnet predict` output?); the report needs "
                           f"`cspnet test CONFIG CHECKPOINT --out FILE`, whose rows carry the labels")
    if unlabelled:
        raise DatasetError(f"{source}: {len(unlabelled)} of {len(good)} rows have no label (the first: index "
                           f"{unlabelled[0].get('index')}, {unlabelled[0].get('path')!r}); every row needs one")
    with_real = sum(r.get("labels") is not None for r in good)
    if 0 < with_real < len(good):
        raise DatasetError(f"{source}: {with_real} of {len(good)} rows carry ReaL labels and the others do not; "
                           f"expected all or none")
    no_pred = next((r for r in good if r.get("pred_label") is None or r.get("pred_score") is None), None)
    if no_pred is not None:
        raise DatasetError(f"{source}: row index {no_pred.get('index')} ({no_pred.get('path')!r}) has no prediction "
                           f"and no error; expected the rows of `cspnet test --out FILE`")
    k = min(len(r.get("topk_labels") or [r["pred_label"]]) for r in good)
    label = np.fromiter((r["label"] for r in good), dtype=np.int64, count=len(good))
    pred = np.fromiter((r["pred_label"] for r in good), dtype=np.int64, count=len(good))
    topk = np.array([(r.get("topk_labels") or [r["pred_label"]])[:k] for r in good], dtype=np.int64).reshape(-1, k)
    real = tuple(frozenset(r["labels"]) for r in good) if with_real else None

    names = {}  # label -> name, as the rows carry them
    for r in good:
        if r.get("pred_class") is not None:
            names.setdefault(r["pred_label"], r["pred_class"])
        for lab, name in zip(r.get("topk_labels") or (), r.get("topk_classes") or ()):
            if name is not None:
                names.setdefault(lab, name)
    num = len(classes) if classes is not None else max(int(label.max()), int(pred.max()), int(topk.max())) + 1
    known = f"the {num} classes of its sidecar's class list" if classes is not None else f"0..{num - 1}"
    for what, arr, per_row in (("label", label, 1), ("pred_label", pred, 1), ("topk_labels", topk.reshape(-1), k)):
        bad = np.flatnonzero((arr < 0) | (arr >= num))
        if len(bad):
            at = good[bad[0] // per_row]
            raise DatasetError(f"{source}: {what} {int(arr[bad[0]])} of row index {at.get('index')} "
                               f"({at.get('path')!r}) is outside {known}; was the file written by another model?")
    for r, s in zip(good, real or ()):
        if any(not 0 <= lab < num for lab in s):
            raise DatasetError(f"{source}: ReaL labels {sorted(s)} of row index {r.get('index')} ({r.get('path')!r}) "
                               f"are outside {known}")
    if classes is not None:
        # the rows name their predictions too: a sidecar that disagrees is another model's (or another order's)
        clash = next(((lab, name) for lab, name in names.items() if classes[lab] != name), None)
        if clash is not None:
            raise DatasetError(f"{source}: the rows name class {clash[0]} {clash[1]!r}, its sidecar "
                               f"{classes[clash[0]]!r}; the sidecar belongs to another model: write both again")
        names_out, named = tuple(str(c) for c in classes), True
    else:
        names_out, named = tuple(str(names.get(i, f"class {i}")) for i in range(num)), bool(names)
    return Predictions(source=source, label=label, pred=pred, score=np.array([float(r["pred_score"]) for r in good]),
                       topk=topk, paths=tuple(str(r.get("path")) for r in good),
                       index=tuple(i if r.get("index") is None else int(r["index"]) for i, r in enumerate(good)),
                       classes=names_out, real=real, skipped=len(rows) - len(good), named=named)


def load(path: str | os.PathLike) -> Predictions:
    """:func:`predictions` of a rows file and its ``.meta.json`` sidecar's classes, read by :mod:`cspnet.rows`."""
    from . import rows

    if not os.path.isfile(path):
        raise DatasetError(f"predictions file {str(path)!r} does not exist (expected the rows of `cspnet test --out`)")
    rows.check_format(path, "PREDICTIONS")
    classes = (rows.read_meta(path) or {}).get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise DatasetError(f"{str(rows.meta_path(path))!r}: 'classes' is not a list of names; remove it or write "
                           f"the sidecar again")
    return predictions(rows.read_rows(path), str(path), classes)


def confusion_matrix(label: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 ``(K, K)``: row = true class, column = predicted class (as scikit-learn's ``confusion_matrix``)."""
    return np.bincount(label * num_classes + pred, minlength=num_classes * num_classes).reshape(num_classes,
                                                                                                num_classes)


def per_class(conf: np.ndarray) -> dict[str, np.ndarray]:
    """Per class of a ``(K, K)`` confusion matrix: ``support``, ``predicted``, ``correct`` (int64 ``(K,)``) and
    ``precision``, ``recall``, ``f1`` (float64 ``(K,)``; 0 where undefined, as scikit-learn's zero_division=0)."""
    correct, support, predicted = np.diag(conf).copy(), conf.sum(axis=1), conf.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, correct / predicted, 0.0)
        recall = np.where(support > 0, correct / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"support": support, "predicted": predicted, "correct": correct,
            "precision": precision, "recall": recall, "f1": f1}


def averages(pc: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{'macro': {'precision', 'recall', 'f1'}, 'weighted': {...}}`` of :func:`per_class`: macro over the
    classes present in the true or predicted labels, weighted by support."""
    present = (pc["support"] > 0) | (pc["predicted"] > 0)
    weights = pc["support"] / pc["support"].sum()
    return {"macro": {m: float(pc[m][present].mean()) for m in ("precision", "recall", "f1")},
            "weighted": {m: float((pc[m] * weights).sum()) for m in ("precision", "recall", "f1")}}


def topk_accuracy(p: Predictions, ks: Sequence[int]) -> dict[int, float]:
    """``{k: accuracy in %}`` by :attr:`Predictions.rule`, for each ``k`` <= the rows' top-k length."""
    judged = p.judged()
    out = {}
    for k in ks:
        if k > p.topk.shape[1]:
            raise InvalidOptionError(f"top-{k} accuracy: the rows of {p.source} carry only the top "
                                     f"{p.topk.shape[1]} predictions; ask for k <= {p.topk.shape[1]}")
        if p.real is None:
            hit = (p.topk[:, :k] == p.label[:, None]).any(axis=1)
        else:
            hit = np.array([not s.isdisjoint(t) for s, t in zip(p.real, p.topk[:, :k].tolist())], dtype=bool)
        out[k] = 100.0 * float(hit[judged].mean()) if judged.any() else float("nan")
    return out


def confused_pairs(conf: np.ndarray, n: int) -> list[tuple[int, int, int]]:
    """The ``n`` largest off-diagonal cells ``(true, pred, count)``, count > 0, largest first (ties: by index)."""
    off = conf.copy()
    np.fill_diagonal(off, 0)
    flat = off.reshape(-1)
    nz = np.flatnonzero(flat)  # at most N cells: a full sort of them decides ties the same way every time
    top = nz[np.lexsort((nz, -flat[nz]))][:n]
    k = conf.shape[0]
    return [(int(i // k), int(i % k), int(flat[i])) for i in top]


@dataclass(frozen=True)
class Metrics:
    """What the report states. ``per_class`` as :func:`per_class`; ``conf`` int64 ``(K, K)``."""

    topk: dict[int, float]
    top1_label: float  # % of images whose pred_label is their original label (the rule for plain rows)
    conf: np.ndarray
    per_class: dict[str, np.ndarray]
    averages: dict[str, dict[str, float]]

    def summary(self, p: Predictions) -> dict:
        """The JSON-able summary, mmpretrain's names where it has them (``accuracy/top1``, ``single-label/...``)."""
        out = {f"accuracy/top{k}": v for k, v in self.topk.items()}
        if p.real is not None:
            out["accuracy/top1_original_label"] = self.top1_label
        for avg, values in self.averages.items():
            for m, v in values.items():
                out[f"single-label/{'f1-score' if m == 'f1' else m}_{avg}"] = 100.0 * v
        return out


def default_topk(p: Predictions) -> tuple[int, ...]:
    """Top-1 and top-5, or top-1 alone when the rows carry fewer than 5 predictions (a 4-class model's)."""
    return (1, 5) if p.topk.shape[1] >= 5 else (1,)


def compute(p: Predictions, ks: Sequence[int] | None = None) -> Metrics:
    """:class:`Metrics` of ``p``; ``ks`` the top-k accuracies (default :func:`default_topk`)."""
    ks = default_topk(p) if ks is None else ks
    conf = confusion_matrix(p.label, p.pred, len(p.classes))
    pc = per_class(conf)
    return Metrics(topk=topk_accuracy(p, ks), top1_label=100.0 * float((p.pred == p.label).mean()), conf=conf,
                   per_class=pc, averages=averages(pc))


def worst_classes(m: Metrics, n: int) -> list[int]:
    """The ``n`` present classes of lowest recall (then F1, then most images), worst first."""
    pc = m.per_class
    present = np.flatnonzero(pc["support"] > 0)
    order = np.lexsort((present, -pc["support"][present], pc["f1"][present], pc["recall"][present]))
    return present[order[:n]].tolist()


def _most_confused_with(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per true class: the other class it is most often predicted as, and how often (int64 ``(K,)`` each)."""
    off = conf.copy()
    np.fill_diagonal(off, -1)
    other = off.argmax(axis=1)
    return other, np.maximum(off[np.arange(len(off)), other], 0)


def per_class_csv(m: Metrics, classes: Sequence[str]) -> str:
    """The per-class table as CSV text: one line per class, in class order."""
    pc = m.per_class
    other, times = _most_confused_with(m.conf)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "name", "support", "predicted", "correct", "precision", "recall", "f1",
                "most_confused_with", "times"])
    for i, name in enumerate(classes):
        w.writerow([i, name, int(pc["support"][i]), int(pc["predicted"][i]), int(pc["correct"][i]),
                    f"{pc['precision'][i]:.6f}", f"{pc['recall'][i]:.6f}", f"{pc['f1'][i]:.6f}",
                    classes[other[i]] if times[i] else "", int(times[i])])
    return buf.getvalue()


def pairs_csv(conf: np.ndarray, classes: Sequence[str]) -> str:
    """Every non-zero cell of the confusion matrix (diagonal included) as CSV ``true,true_name,pred,pred_name,
    count``, largest count first: the whole matrix, in at most N lines."""
    t, pr = np.nonzero(conf)
    counts = conf[t, pr]
    order = np.lexsort((pr, t, -counts))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["true", "true_name", "pred", "pred_name", "count"])
    for j in order.tolist():
        w.writerow([int(t[j]), classes[t[j]], int(pr[j]), classes[pr[j]], int(counts[j])])
    return buf.getvalue()


def save_confusion(conf: np.ndarray, classes: Sequence[str], path: str | os.PathLike,
                   inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Write the dense ``(K, K)`` matrix to ``path`` by its suffix: ``.npy`` (int64), ``.csv`` (a header of class
    names, a row per true class) or ``.json`` (``{"classes", "matrix"}``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".npy", ".csv", ".json"):
        raise InvalidOptionError(f"confusion matrix file {str(path)!r}: the suffix decides the format; use .npy, "
                                 f".csv or .json")
    output_path(path, "confusion matrix file", inputs)
    if suffix == ".npy":
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the temporary name
                np.save(f, conf)
    elif suffix == ".csv":
        def write(tmp: Path) -> None:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["true \\ pred", *classes])
            w.writerows([name, *row] for name, row in zip(classes, conf.tolist()))
            tmp.write_text(buf.getvalue(), encoding="utf-8")
    else:
        def write(tmp: Path) -> None:
            tmp.write_text(json.dumps({"classes": list(classes), "matrix": conf.tolist()}) + "\n", encoding="utf-8")
    return atomic_write(path, write, what="confusion matrix file")


def require_matplotlib(cmap: str = "viridis") -> None:
    """Raise InvalidOptionError naming the extra when matplotlib is not installed, or naming ``cmap`` when it is
    not a colour map matplotlib knows (checked before any work)."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise InvalidOptionError(f"the confusion matrix PNG needs matplotlib, which is not installed: "
                                 f"{PLOT_HINT} adds it (or pass --no-plot for a report without it)") from None
    if cmap not in matplotlib.colormaps:
        raise InvalidOptionError(f"--cmap {cmap!r} is not a matplotlib colour map (e.g. viridis, Blues, magma)")


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def draw_confusion(conf: np.ndarray, classes: Sequence[str], pairs: Sequence[tuple[int, int, int]],
                   include_values: bool = False, cmap: str = "viridis"):
    """A matplotlib ``Figure``: the most-confused ``pairs`` as a bar chart, and beside it the whole ``(K, K)``
    matrix (counts, ``cmap``; with ``include_values`` the non-zero counts written in their cells) when
    K <= 100."""
    from matplotlib.figure import Figure  # a bare Figure: no pyplot backend is chosen (as cspnet.plotting)
    from matplotlib.ticker import MaxNLocator

    k = conf.shape[0]
    full = k <= _FULL_MATRIX_MAX
    bar_h = max(4.0, 0.28 * len(pairs) + 1.5)
    fig = Figure(figsize=(20 if full else 10, max(bar_h, 10.0) if full else bar_h))
    if full:
        ax_m, ax_b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
        im = ax_m.imshow(conf, cmap=cmap, interpolation="nearest")
        fig.colorbar(im, ax=ax_m, fraction=0.046, pad=0.04, label="images")
        if k <= _NAMED_TICKS_MAX:
            ax_m.set_xticks(range(k), [_short(c, 18) for c in classes], rotation=90, fontsize=7)
            ax_m.set_yticks(range(k), [_short(c, 18) for c in classes], fontsize=7)
        if include_values:
            size = max(4, min(9, 300 // k))
            bright = conf.max() / 2  # dark text on the bright end of the colour map
            for t, pr in zip(*np.nonzero(conf)):
                ax_m.text(pr, t, str(conf[t, pr]), ha="center", va="center", fontsize=size,
                          color="k" if conf[t, pr] > bright else "w")
        ax_m.set(xlabel="predicted class", ylabel="true class", title=f"confusion matrix ({k} classes)")
    else:
        ax_b = fig.subplots(1, 1)
    if pairs:
        names = [f"{_short(classes[t], 28)} → {_short(classes[pr], 28)}" for t, pr, _ in pairs]
        counts = [c for _, _, c in pairs]
        ax_b.barh(range(len(pairs)), counts, color="C3")
        ax_b.set_yticks(range(len(pairs)), names, fontsize=8)
        ax_b.invert_yaxis()  # the most confused pair on top
        for y, c in enumerate(counts):
            ax_b.text(c, y, f" {c}", va="center", fontsize=7)
    else:
        ax_b.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax_b.transAxes)
    ax_b.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts of images, not 1.25
    ax_b.set(xlabel="images", title=f"the {len(pairs)} most confused pairs (true → predicted)")
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class GalleryItem:
    """One gallery picture: the row it shows, the file written, and the caption lines drawn on it."""

    kind: str  # "mistake" (most confident wrong top-1) or "hit" (least confident right top-1)
    index: int
    source: str
    file: Path
    true_name: str
    pred_name: str
    score: float
    lines: tuple[str, ...]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, cut with an ellipsis until it is at most ``width`` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def caption_thumbnail(image: Image.Image, lines: Sequence[str], hit: bool) -> tuple[Image.Image, tuple[str, ...]]:
    """``image`` scaled to fit :data:`THUMB` with ``lines`` in a band beneath it (green for a hit, red for a
    mistake); returns the picture (RGB, both sides <= THUMB) and the lines as drawn (cut to fit)."""
    font = _font(12)
    line_h, pad = 15, 4
    band = pad * 2 + line_h * len(lines)
    img = ImageOps.exif_transpose(image).convert("RGB")
    # scaled both ways (a 32 x 32 CIFAR image is enlarged too, or there would be nothing to see), each side at least
    # one pixel (a 100000 x 1 image stays a line)
    scale = min(THUMB / img.width, (THUMB - band) / img.height)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC,
                     reducing_gap=3.0)
    canvas = Image.new("RGB", (max(img.width, 160), img.height + band), (20, 20, 20))
    canvas.paste(img, ((canvas.width - img.width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, img.height, canvas.width, canvas.height), fill=(30, 110, 40) if hit else (150, 30, 30))
    drawn = tuple(_fit(draw, line, font, canvas.width - 2 * pad) for line in lines)
    for i, line in enumerate(drawn):
        draw.text((pad, img.height + pad + i * line_h), line, fill=(255, 255, 255), font=font)
    return canvas, drawn


def _image_file(path: str, base: Path) -> Path | None:
    """The image a row names: its path, or (relative) beside the rows file; None when neither is a regular file."""
    for cand in (Path(path), base / path):
        if cand.is_file():  # is_file: a FIFO would block the open for ever
            return cand
        if cand.is_absolute():
            break
    return None


def _draw_one(p: Predictions, i: int, kind: str, rank: int, base: Path, show_dir: Path, missing: list[str],
              unreadable: list[str]) -> GalleryItem | None:
    """Draw row ``i`` as the ``rank``-th ``kind`` into ``show_dir``; None (and a line in ``missing`` or
    ``unreadable``) when its image cannot be read."""
    src = _image_file(p.paths[i], base)
    if src is None:
        missing.append(p.paths[i])
        return None
    true_name, pred_name = p.classes[p.label[i]], p.classes[p.pred[i]]
    lines = [f"true: {true_name}", f"pred: {pred_name}", f"score: {100 * p.score[i]:.1f}%  #{p.index[i]}"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is skipped, not decoded
            with Image.open(src) as im:
                im.draft("RGB", (THUMB, THUMB))  # JPEG: decode at a reduced scale, not the whole photo
                pic, drawn = caption_thumbnail(im, lines, kind == "hit")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        unreadable.append(f"{p.paths[i]} ({type(e).__name__}: {str(e)[:80]})")
        return None
    dst = show_dir / f"{kind}s" / f"{rank:03d}-{p.index[i]}.jpg"  # the rank first: the files sort as shown
    output_path(dst, "gallery image", [src])  # a --show-dir among the images must not replace one
    atomic_write(dst, lambda tmp: pic.save(tmp, format="JPEG", quality=88), what="gallery image")
    return GalleryItem(kind, p.index[i], str(src), dst, true_name, pred_name, float(p.score[i]), drawn)


def gallery(p: Predictions, show_dir: str | os.PathLike, n: int, notes: list[str]) -> list[GalleryItem]:
    """Write the ``n`` most confident mistakes and ``n`` least confident hits (by :attr:`Predictions.rule`) as
    JPEG thumbnails into ``show_dir``/mistakes and ``show_dir``/hits; an image that is missing or unreadable is
    skipped with a line in ``notes``. Returns what was drawn, mistakes first."""
    judged, correct = p.judged(), p.correct()
    mistakes = np.flatnonzero(judged & ~correct)
    hits = np.flatnonzero(judged & correct)
    base, show_dir = Path(p.source).resolve().parent, Path(show_dir)
    items, missing, unreadable = [], [], []
    # down each ranking until n are drawn: an image that is gone gives its place to the next one
    for kind, ranked in (("mistake", mistakes[np.lexsort((mistakes, -p.score[mistakes]))]),
                         ("hit", hits[np.lexsort((hits, p.score[hits]))])):
        drawn_here = 0
        for i in ranked.tolist():
            if drawn_here == n:
                break
            item = _draw_one(p, i, kind, drawn_here + 1, base, show_dir, missing, unreadable)
            if item is not None:
                items.append(item)
                drawn_here += 1
    if missing:
        gone = list(dict.fromkeys(missing))  # one line per file: many rows may name the same moved image
        notes.append(f"gallery: {len(missing)} image(s) not found, skipped (paths are taken as given, then beside "
                     f"{p.source}): {', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''}")
    if unreadable:
        notes.append(f"gallery: {len(unreadable)} image(s) could not be read, skipped: {'; '.join(unreadable[:5])}")
    return items


@dataclass(frozen=True)
class ReportOptions:
    """What :func:`write_report` writes. ``show_dir`` None: ``<output>/gallery``."""

    output: Path
    show_dir: Path | None = None
    gallery: int = 20
    pairs: int = 30
    worst: int = 20
    topk: tuple[int, ...] | None = None  # None: (1, 5), or (1,) when the rows carry fewer than 5 predictions
    plot: bool = True
    include_values: bool = False
    cmap: str = "viridis"

    @property
    def gallery_dir(self) -> Path:
        return self.show_dir if self.show_dir is not None else self.output / "gallery"

    def check(self, inputs: Sequence[str | os.PathLike] = ()) -> None:
        """Refuse, before any work, an output that cannot be written or would replace one of ``inputs``, and a
        PNG without matplotlib."""
        check_folder(self.output, "--output")
        for key, name in FILES.items():
            if key != "png" or self.plot:
                output_path(self.output / name, f"--output {key}", inputs)
        if self.gallery:
            check_folder(self.gallery_dir, "--show-dir")
        if self.plot:
            require_matplotlib(self.cmap)


@dataclass
class Report:
    """What :func:`write_report` did: the files, the metrics and the gallery, and notes for the reader."""

    files: dict[str, Path]
    metrics: Metrics
    gallery: list[GalleryItem]
    notes: list[str] = field(default_factory=list)


def write_report(p: Predictions, opts: ReportOptions, inputs: Sequence[str | os.PathLike] = ()) -> Report:
    """Compute :class:`Metrics` of ``p`` and write the report into ``opts.output`` (see :data:`FILES`), every
    file atomically; ``inputs`` (the rows file and its sidecar) are never written over."""
    opts.check([p.source, *inputs])
    notes: list[str] = []
    if opts.topk is None and 5 not in default_topk(p):
        notes.append(f"no top-5 accuracy: the rows carry only the top {p.topk.shape[1]} prediction(s)")
    m = compute(p, opts.topk)
    if p.skipped:
        notes.append(f"{p.skipped} row(s) with an error (an image that could not be read) are left out")
    if p.real is not None and not p.judged().all():
        notes.append(f"ReaL: {int((~p.judged()).sum())} image(s) with an empty label set are not counted in top-k")
    if not p.named:
        notes.append("no class names (no sidecar, no names in the rows): classes are 'class <i>'")
    absent = int(((m.per_class["support"] == 0) & (m.per_class["predicted"] == 0)).sum())
    if absent:
        notes.append(f"{absent} of {len(p.classes)} classes neither occur nor are predicted: the macro average "
                     f"leaves them out")
    if opts.include_values and len(p.classes) > _FULL_MATRIX_MAX:
        notes.append(f"--include-values: no full matrix is drawn at {len(p.classes)} classes (only up to "
                     f"{_FULL_MATRIX_MAX}); the pair bars carry their counts")
    out = opts.output
    files = {}

    def text(key: str, content: str) -> None:
        files[key] = atomic_write(out / FILES[key], lambda tmp: tmp.write_text(content, encoding="utf-8"),
                                  what=f"report {FILES[key]}")

    text("per_class", per_class_csv(m, p.classes))
    text("pairs", pairs_csv(m.conf, p.classes))
    pairs = confused_pairs(m.conf, opts.pairs)
    png = None
    if opts.plot:
        fig = draw_confusion(m.conf, p.classes, pairs, opts.include_values, opts.cmap)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        png = buf.getvalue()
        files["png"] = atomic_write(out / FILES["png"], lambda tmp: tmp.write_bytes(png), what="confusion PNG")
    items = gallery(p, opts.gallery_dir, opts.gallery, notes) if opts.gallery else []
    summary = {"source": p.source, "images": len(p.label), "skipped": p.skipped, "classes": len(p.classes),
               "rule": p.rule, "metrics": m.summary(p), "notes": notes,
               "worst_classes": [{"class": c, "name": p.classes[c], "recall": float(m.per_class["recall"][c]),
                                  "f1": float(m.per_class["f1"][c]), "support": int(m.per_class["support"][c])}
                                 for c in worst_classes(m, opts.worst)],
               "confused_pairs": [{"true": t, "pred": pr, "count": c} for t, pr, c in pairs],
               "gallery": [{"kind": g.kind, "index": g.index, "image": g.source, "file": str(g.file),
                            "true": g.true_name, "pred": g.pred_name, "score": g.score} for g in items]}
    text("metrics", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    text("html", render_html(p, m, pairs, worst_classes(m, opts.worst), items, notes, png, out))
    return Report(files=files, metrics=m, gallery=items, notes=notes)


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td.n,th.n{text-align:left}"
        "figure{display:inline-block;margin:4px}figcaption{font-size:11px;max-width:256px}"
        "img.cm{max-width:100%}.note{color:#a40}")


def _table(head: Sequence[str], rows: Sequence[Sequence], left: Sequence[int] = ()) -> str:
    cells = "".join(f"<th{' class=n' if i in left else ''}>{html.escape(h)}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td{' class=n' if i in left else ''}>{html.escape(str(v))}</td>"
                                    for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _href(target: Path, page_dir: Path) -> str:
    """A link from the page to ``target``: relative when it can be, else a file URI."""
    try:
        rel = os.path.relpath(target.resolve(), page_dir.resolve())
    except ValueError:  # another drive (Windows)
        return target.resolve().as_uri()
    return html.escape(urllib.parse.quote(Path(rel).as_posix()), quote=True)


def render_html(p: Predictions, m: Metrics, pairs, worst: Sequence[int], items: Sequence[GalleryItem],
                notes: Sequence[str], png: bytes | None, page_dir: Path) -> str:
    """The report page: summary, notes, the confusion PNG (embedded as a data URI) and the top pairs, the worst
    classes, and the gallery (thumbnails linked by relative path). Every table has at most ``len(pairs)``,
    ``len(worst)`` or ``len(items)`` lines: the full per-class table is the CSV it links."""
    e = html.escape
    pc, cls = m.per_class, p.classes
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cspnet report: {e(Path(p.source).name)}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>Evaluation report</h1><p>{e(p.source)}: {len(p.label)} images, {len(cls)} classes.</p>",
             f"<p>Top-k rule: {e(p.rule)}.</p>"]
    summary = [(f"top-{k} accuracy", f"{v:.2f}%") for k, v in m.topk.items()]
    if p.real is not None:
        summary.append(("top-1 accuracy by the original label", f"{m.top1_label:.2f}%"))
    for avg, vals in m.averages.items():
        summary += [(f"{avg} {name}", f"{100 * vals[name]:.2f}%") for name in ("precision", "recall", "f1")]
    parts.append(_table(["metric", "value"], summary, left=(0,)))
    parts.append(f"<p><a href='{FILES['per_class']}'>per-class metrics (CSV, every class)</a> · "
                 f"<a href='{FILES['pairs']}'>confusion matrix (CSV, every non-zero cell)</a> · "
                 f"<a href='{FILES['metrics']}'>metrics.json</a></p>")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class=note>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Confusion</h2>")
    if png is not None:
        parts.append(f"<p><a href='{FILES['png']}'><img class=cm alt='confusion matrix' "
                     f"src='data:image/png;base64,{base64.b64encode(png).decode()}'></a></p>")
    parts.append(_table(["true", "predicted as", "images", "% of the true class"],
                        [(cls[t], cls[pr], c, f"{100 * c / pc['support'][t]:.1f}") for t, pr, c in pairs], left=(0, 1)))
    other, times = _most_confused_with(m.conf)
    parts.append(f"<h2>The {len(worst)} worst classes (lowest recall)</h2>")
    parts.append(_table(["class", "name", "images", "recall", "precision", "F1", "most confused with", "times"],
                        [(c, cls[c], pc["support"][c], f"{pc['recall'][c]:.3f}", f"{pc['precision'][c]:.3f}",
                          f"{pc['f1'][c]:.3f}", cls[other[c]] if times[c] else "", times[c]) for c in worst],
                        left=(1, 6)))
    for kind, title in (("mistake", "Most confident mistakes"), ("hit", "Least confident hits")):
        shown = [g for g in items if g.kind == kind]
        parts.append(f"<h2>{title} ({len(shown)})</h2><div>")
        for g in shown:
            caption = " · ".join(g.lines)
            parts.append(f"<figure><a href='{_href(g.file, page_dir)}'><img src='{_href(g.file, page_dir)}' "
                         f"alt='{e(caption, quote=True)}'></a><figcaption>{e(caption)}<br>{e(g.source)}"
                         f"</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "".join(parts)
