#!/usr/bin/env python
"""The confusion matrix, as mmpretrain's tools/analysis_tools/confusion_matrix.py:
``python tools/analysis_tools/confusion_matrix.py [CONFIG] RESULT [--out cm.npy] [--show-path cm.png]
[--include-values] [--cmap viridis] [--show]``.

RESULT is the rows file of ``python tools/test.py CONFIG CHECKPOINT --out rows.jsonl`` (a checkpoint is not
evaluated here: run tools/test.py first; mmpretrain's ``.pkl`` is not read, as unpickling runs code). A CONFIG
before it is accepted and ignored: the rows carry the labels and their sidecar the class names. ``--out`` writes the
dense matrix (rows: true class, columns: predicted) as .npy, .csv or .json. ``--show-path`` draws the PNG of
``cspnet report``: the most confused pairs, and the full matrix up to 100 classes. ``--show`` opens that picture in
the system's image viewer. ``cspnet report RESULT`` gives the same PNG with per-class metrics and an HTML page.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from cspnet._io import atomic_write, output_path
from cspnet.cli import at_least
from cspnet.cli.report import tool_parser
from cspnet.errors import CSPNetError, InvalidOptionError

CHECKPOINTS = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = tool_parser("confusion_matrix.py", __doc__)
    parser.add_argument("--out", default=None, metavar="FILE", help="the matrix as .npy, .csv or .json")
    parser.add_argument("--show", action="store_true", help="open the picture in the image viewer")
    parser.add_argument("--show-path", default=None, metavar="PNG", help="draw the picture into this file")
    parser.add_argument("--include-values", action="store_true", help="write the counts in the full matrix's cells")
    parser.add_argument("--cmap", default="viridis", help="matplotlib colour map (default viridis)")
    parser.add_argument("--pairs", type=at_least(1), default=30, metavar="N",
                        help="most confused pairs drawn (default 30)")
    args = parser.parse_args(argv)
    return args


def run(args: argparse.Namespace) -> int:
    from cspnet.report import compute, confused_pairs, draw_confusion, load, require_matplotlib, save_confusion
    from cspnet.rows import meta_path

    result = Path(args.result)
    if result.suffix.lower() in CHECKPOINTS:
        raise InvalidOptionError(f"{result} is a checkpoint: evaluate it first with `python tools/test.py CONFIG "
                                 f"{result} --out rows.jsonl`, then pass rows.jsonl")
    inputs = [result, meta_path(result)]
    for path, what in ((args.out, "--out"), (args.show_path, "--show-path")):  # before any work
        if path is not None:
            output_path(path, what, inputs)
    picture = args.show or args.show_path is not None
    if picture:
        require_matplotlib(args.cmap)
    preds = load(result)
    conf = compute(preds, (1,)).conf
    if args.out is not None:
        print(f"wrote {save_confusion(conf, preds.classes, args.out, inputs)} ({conf.shape[0]} x {conf.shape[1]})")
    if picture:
        fig = draw_confusion(conf, preds.classes, confused_pairs(conf, args.pairs), args.include_values, args.cmap)
        png = Path(args.show_path) if args.show_path else Path(tempfile.mkdtemp()) / "confusion.png"
        atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100), what="--show-path")
        print(f"The confusion matrix is saved at {png}.")
        if args.show:
            from PIL import Image

            Image.open(png).show()
    if args.out is None and not picture:
        for t, p, n in confused_pairs(conf, 10):
            print(f"{n:6d}  {preds.classes[t]} -> {preds.classes[p]}")
    return 0


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    try:
        sys.exit(run(args))
    except CSPNetError as e:
        print(f"confusion_matrix.py: error: {e}", file=sys.stderr)
        sys.exit(2)
