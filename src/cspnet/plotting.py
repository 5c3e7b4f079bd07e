"""Seeing a training run: the curves of one or several runs' ``log.jsonl`` in one figure (matplotlib, optional).

The log is the trainer's: one JSON object per line, ``{"mode": "train", "step", "lr", "loss", ...}`` per logged
optimizer step and ``{"mode": "val", "epoch", "top1", "top5", "ema_top1"?, ...}`` per validation.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

from ._io import atomic_write
from .errors import InvalidOptionError

log = logging.getLogger("cspnet")

# (panel, x key, y key): each series of read_log, in the panel that draws it
SERIES = [("loss", "step", "loss"), ("lr", "step", "lr"),
          ("val", "epoch", "top1"), ("val", "epoch", "ema_top1"), ("val", "epoch", "top5")]
_MODE = {"loss": "train", "lr": "train", "val": "val"}


def read_log(path: str | os.PathLike) -> dict[str, list[tuple[float, float]]]:
    """The curves of one run: ``{'loss': [(step, loss), ...], 'lr': [(step, lr)], 'top1': [(epoch, top1)],
    'ema_top1': [...], 'top5': [...]}``, in log order; a series the log lacks is ``[]``.

    A line that is not a JSON object (the half-written last line of a killed run) is skipped, as is a row without
    the keys of a series.
    """
    rows = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    rows = [r for r in rows if isinstance(r, dict)]
    return {y: [(r[x], r[y]) for r in rows if r.get("mode") == _MODE[panel] and x in r and r.get(y) is not None]
            for panel, x, y in SERIES}


def draw_runs(logs: Sequence[str | os.PathLike], labels: Sequence[str] | None = None):
    """A matplotlib ``Figure`` of three axes: training loss per step, validation accuracy per epoch (top-1 solid,
    EMA top-1 dashed, top-5 dotted, in the run's colour) and learning rate per step; one colour per run.

    ``labels`` name the runs in the legends (default: each log's folder name). Raises ImportError without
    matplotlib.
    """
    # A bare Figure, not pyplot: no backend is chosen or switched (a notebook's stays) and nothing needs closing
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    labels = list(labels) if labels is not None else [Path(p).resolve().parent.name for p in logs]
    if len(labels) != len(logs):
        raise InvalidOptionError(f"{len(labels)} labels for {len(logs)} runs: give one per run")
    fig = Figure(figsize=(16, 4.5))
    ax_loss, ax_val, ax_lr = fig.subplots(1, 3)
    for i, (path, label) in enumerate(zip(logs, labels)):
        curves, colour = read_log(path), f"C{i % 10}"
        for ax, key, style, name in ((ax_loss, "loss", "-", label), (ax_lr, "lr", "-", label),
                                     (ax_val, "top1", "-", f"{label} top-1"),
                                     (ax_val, "ema_top1", "--", f"{label} EMA top-1"),
                                     (ax_val, "top5", ":", f"{label} top-5")):
            if curves[key]:
                xs, ys = zip(*curves[key])
                marker = "o" if ax is ax_val else None  # one point per epoch: the dots show where they are
                ax.plot(xs, ys, style, color=colour, lw=1 if ax is ax_loss else 1.5, marker=marker, ms=3, label=name)
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", title="loss")
    ax_val.set(xlabel="epoch", ylabel="accuracy (%)", title="validation")
    ax_val.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, not 2.5
    ax_lr.set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    for ax in (ax_loss, ax_val, ax_lr):
        if ax.get_lines():  # an empty legend only warns
            ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_runs(logs: Sequence[str | os.PathLike], output: str | os.PathLike,
              labels: Sequence[str] | None = None) -> Path | None:
    """Draw :func:`draw_runs` of ``logs`` into the PNG ``output`` (dpi 100, written atomically); returns its path,
    or None (with a log line) when matplotlib is not installed."""
    try:
        fig = draw_runs(logs, labels)
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install 'cspnet[plot]' adds it)", output)
        return None
    return atomic_write(output, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
