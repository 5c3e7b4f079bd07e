"""``cspnet report``: the evaluation report of a ``cspnet test --out`` rows file (metrics, confusion, gallery, HTML)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import at_least

HELP = ("the evaluation report of `cspnet test --out FILE`: top-k accuracy, per-class precision/recall/F1 (CSV), the "
        "confusion matrix (PNG), the worst classes and a gallery of mistakes, in one HTML page")


def tool_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The parser of a ``tools/analysis_tools`` script with mmpretrain's name (``doc``: its docstring): its
    ``[CONFIG] RESULT`` positionals, the CONFIG accepted and ignored because the rows carry what it would give."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("config", nargs="?", metavar="CONFIG", help="accepted and ignored (see below)")
    parser.add_argument("result", metavar="RESULT", help="the rows file of `tools/test.py ... --out FILE`")
    return parser


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("predictions", metavar="PREDICTIONS",
                   help="the per-image rows of `cspnet test ... --out FILE` (.jsonl, .csv, .parquet); class names "
                        "come from its FILE.meta.json sidecar, else from the rows")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="the report folder (default: <PREDICTIONS without suffix>-report beside it): index.html, "
                        "per_class.csv, confusion_pairs.csv, confusion.png, metrics.json")
    p.add_argument("--show-dir", default=None, metavar="DIR",
                   help="where the gallery thumbnails go, in mistakes/ and hits/ (default: DIR/gallery)")
    p.add_argument("--gallery", type=at_least(0), default=20, metavar="N",
                   help="the N most confident mistakes and the N least confident hits (default 20; 0: no gallery)")
    p.add_argument("--pairs", type=at_least(1), default=30, metavar="N",
                   help="the N most confused (true, predicted) pairs in the PNG and the page (default 30)")
    p.add_argument("--worst", type=at_least(1), default=20, metavar="N",
                   help="the N worst classes (lowest recall) in the page (default 20; every class is in the CSV)")
    p.add_argument("--topk", type=at_least(1), nargs="+", default=None, metavar="K",
                   help="the top-k accuracies (default: 1 5, or 1 when the rows carry fewer than 5 predictions)")
    p.add_argument("--no-plot", dest="plot", action="store_false",
                   help="no confusion PNG (the one part that needs matplotlib)")
    p.add_argument("--include-values", action="store_true",
                   help="write the counts in the cells of the full matrix (drawn up to 100 classes)")
    p.add_argument("--cmap", default="viridis", help="the matrix's matplotlib colour map (default viridis)")
    p.add_argument("--metrics-only", action="store_true", help="print the metrics; write no files")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    from ..report import ReportOptions, compute, load, write_report
    from ..rows import check_format, meta_path

    source = Path(args.predictions)
    check_format(source, "PREDICTIONS")
    inputs = [source, meta_path(source)]
    topk = tuple(dict.fromkeys(args.topk)) if args.topk else None
    opts = ReportOptions(output=Path(args.output) if args.output else source.with_name(f"{source.stem}-report"),
                         show_dir=Path(args.show_dir) if args.show_dir else None, gallery=args.gallery,
                         pairs=args.pairs, worst=args.worst, topk=topk, plot=args.plot,
                         include_values=args.include_values, cmap=args.cmap)
    if not args.metrics_only:
        opts.check(inputs)  # before the rows are read
    preds = load(source)
    if args.metrics_only:
        metrics, notes = compute(preds, topk), []
    else:
        rep = write_report(preds, opts, inputs)
        metrics, notes = rep.metrics, rep.notes
    summary = metrics.summary(preds)
    if args.json:
        files = {} if args.metrics_only else {k: str(v) for k, v in rep.files.items()}
        print(json.dumps({"images": len(preds.label), "classes": len(preds.classes), "rule": preds.rule, **summary,
                          "notes": notes, "files": files}, ensure_ascii=False))
        return 0
    print(f"{source}: {len(preds.label)} images, {len(preds.classes)} classes (top-k: {preds.rule})")
    for key, value in summary.items():
        print(f"  {key:<36} {value:.2f}")
    for note in notes:
        print(f"note: {note}")
    if not args.metrics_only:
        made = f", {len(rep.gallery)} gallery images in {opts.gallery_dir}" if opts.gallery else ""
        print(f"wrote {rep.files['html']} ({', '.join(f.name for k, f in rep.files.items() if k != 'html')}{made})")
    return 0
