#!/usr/bin/env python
"""Offline metrics, as mmpretrain's tools/analysis_tools/eval_metric.py:
``python tools/analysis_tools/eval_metric.py [CONFIG] RESULT [--metric type=Accuracy topk=1,5] [--metric ...]``.

The same as ``cspnet report RESULT --metrics-only --topk 1 5``. RESULT is the rows file of
``python tools/test.py CONFIG CHECKPOINT --out rows.jsonl`` (mmpretrain's ``.pkl`` is not read: unpickling runs code).
A CONFIG before RESULT is accepted and ignored: the rows and their sidecar carry the labels and the class names it
would give. It prints every metric cspnet computes (top-k accuracy; precision, recall and F1, macro and weighted):
``--metric`` chooses the top-k and is checked, not a choice of what is printed.
"""

import argparse
import sys

from cspnet.cli import main
from cspnet.cli.report import tool_parser

# mmpretrain's metric types and the keys of theirs that cspnet honours
KEYS = {"Accuracy": {"type", "topk"}, "SingleLabelMetric": {"type", "items", "average"}}
ITEMS = {"precision", "recall", "f1-score"}


def topk_of(metrics: list[list[str]], error) -> list[int]:
    """The top-k of ``--metric`` options (each a list of ``key=value``), after checking every key."""
    topk = []
    for option in metrics:
        cfg = dict(kv.split("=", 1) if "=" in kv else (kv, None) for kv in option)
        kind = cfg.get("type")
        if kind not in KEYS:
            error(f"--metric {' '.join(option)}: type must be one of {', '.join(KEYS)}")
        unknown = sorted(set(cfg) - KEYS[kind])
        if unknown:
            error(f"--metric type={kind}: {', '.join(unknown)} not supported (only {', '.join(sorted(KEYS[kind]))})")
        if kind == "Accuracy":
            text = (cfg.get("topk") or "1").strip("()[] ")
            if not all(t.strip().isdigit() and int(t) > 0 for t in text.split(",")):
                error(f"--metric type=Accuracy topk={cfg['topk']}: expected integers >= 1, e.g. topk=1,5")
            topk += [int(t) for t in text.split(",")]
        else:
            if cfg.get("average", "macro") != "macro":
                error(f"--metric type=SingleLabelMetric average={cfg['average']}: macro (and weighted) averages "
                      "are printed; the per-class values are in `cspnet report RESULT`'s per_class.csv")
            items = set((cfg.get("items") or "precision").strip("()[] ").replace(" ", "").split(","))
            if not items <= ITEMS:
                error(f"--metric type=SingleLabelMetric items: {', '.join(sorted(items - ITEMS))} not one of "
                      f"{', '.join(sorted(ITEMS))} (support: `cspnet report RESULT`'s per_class.csv)")
    return topk


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[int]]:
    parser = tool_parser("eval_metric.py", __doc__)
    parser.add_argument("--metric", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                        help="type=Accuracy topk=1,5 | type=SingleLabelMetric (default: both)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = parser.parse_args(argv)
    return args, topk_of(args.metric, parser.error)


if __name__ == "__main__":
    args, topk = parse(sys.argv[1:])
    sys.exit(main(["report", args.result, "--metrics-only", *(["--topk", *map(str, topk)] if topk else []),
                   *(["--json"] if args.json else [])]))
