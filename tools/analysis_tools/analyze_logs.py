#!/usr/bin/env python
"""Training curves, as mmpretrain's tools/analysis_tools/analyze_logs.py:
``python tools/analysis_tools/analyze_logs.py plot_curve LOG [LOG ...] [--keys loss] [--out X.png] [--legend A B]``.

The same as ``cspnet plot LOG ... --output X.png --labels A B``, which always draws the training loss, the
validation top-1 (and EMA top-1, top-5) and the learning rate: ``--keys`` is checked against those, not a choice of
panels. A LOG may also be a run folder or a work dir (its newest run).
"""

import argparse
import sys

from cspnet.cli import main

# mmpretrain's names for what `cspnet plot` draws
DRAWN = ("loss", "lr", "top1", "accuracy/top1", "ema_top1", "top5", "accuracy/top5")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="analyze_logs.py", description="Training curves (cspnet plot).")
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    p = sub.add_parser("plot_curve", help="draw the curves of training logs into a PNG")
    p.add_argument("logs", nargs="+", metavar="LOG", help="log.jsonl files, run folders or work dirs")
    p.add_argument("--keys", nargs="+", default=["loss"], help=f"checked against what is drawn: {', '.join(DRAWN)}")
    p.add_argument("--out", default=None, metavar="FILE", help="output PNG (default: as cspnet plot's --output)")
    p.add_argument("--legend", nargs="+", default=None, help="one label per LOG (default: the run folder's name)")
    args = parser.parse_args(argv)
    unknown = [k for k in args.keys if k not in DRAWN]
    if unknown:
        p.error(f"--keys {' '.join(unknown)}: not drawn; the figure shows {', '.join(DRAWN)} "
                "(always all of them, in three panels)")
    return args


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    sys.exit(main(["plot", *args.logs, *(["--output", args.out] if args.out else []),
                   *(["--labels", *args.legend] if args.legend else [])]))
