"""``cspnet plot``: the loss, validation accuracy and learning-rate curves of one or several training runs (PNG)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidOptionError
from ..workdirs import run_dirs

HELP = "draw the loss, validation accuracy and learning rate of training runs from their log.jsonl (PNG)"
EXPECTED = "a log.jsonl file, a run folder holding log.jsonl, or a work dir whose run folders hold one"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help=f"{EXPECTED} (then its newest run: run folders are named by their start time)")
    p.add_argument("--output", default=None, metavar="PNG",
                   help="output image (default: <run folder>/curves.png for one run, ./curves.png for several)")
    p.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                   help="one legend label per RUN (default: each run folder's name)")


def find_log(run: str) -> tuple[Path, str | None]:
    """The ``log.jsonl`` that ``run`` names, and a note saying which run it took when ``run`` is a work dir (its
    newest run folder that holds a log). Raises InvalidOptionError when none."""
    path = Path(run)
    if path.is_file():
        return path, None
    if (path / "log.jsonl").is_file():
        return path / "log.jsonl", None
    if not path.exists():
        raise InvalidOptionError(f"{run}: no such file or folder (expected {EXPECTED})")
    logs = [p / "log.jsonl" for p in run_dirs(path) if (p / "log.jsonl").is_file()]
    if not logs:
        raise InvalidOptionError(f"{run}: no log.jsonl in it or in its subfolders (expected {EXPECTED})")
    return logs[-1], f"{run}: the newest of its {len(logs)} run(s), {logs[-1].parent.name}"


def run(args: argparse.Namespace) -> int:
    from ..plotting import plot_runs

    found = [find_log(r) for r in args.runs]  # every RUN checked before anything is drawn
    if args.labels is not None and len(args.labels) != len(args.runs):
        raise InvalidOptionError(f"--labels: {len(args.labels)} label(s) for {len(args.runs)} run(s); give one per RUN")
    for _, note in found:
        if note:
            print(note)
    logs = [log for log, _ in found]
    if args.output:
        output = Path(args.output)
    else:
        output = logs[0].parent / "curves.png" if len(logs) == 1 else Path("curves.png")
    written = plot_runs(logs, output, args.labels)
    if written is None:
        print("cspnet plot: error: matplotlib is not installed (pip install 'cspnet[plot]' adds it)", file=sys.stderr)
        return 2
    print(f"wrote {written} ({len(logs)} run(s): {', '.join(str(p) for p in logs)})")
    return 0
