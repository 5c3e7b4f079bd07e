"""``cspnet predict``: classify images and print the top-k classes, or write one row per image to a file.

A few images: their top-k printed (text or ``--json``). Many: ``--output preds.jsonl`` (or ``.csv``, ``.parquet``)
receives one row per image as results come (:mod:`cspnet.rows`), ``--resume`` continues a killed run, and under
``torchrun ... --launcher pytorch`` each process classifies a disjoint shard (:func:`cspnet.predict_files`).
"""

from __future__ import annotations

import argparse
import json
import sys

from . import add_launcher_arguments, add_dtype_argument, add_model_arguments, at_least, load_model, use_local_rank

HELP = "classify images and print the top-k classes with their names and scores (or write them to --output)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="INPUT",
                   help="images: files (any format Pillow reads), folders (their images, in subfolders too), globs "
                        "(quoted: 'shots/**/*.jpg'), @LIST (a text file of paths, one a line) or - (paths on stdin); "
                        "a path named twice is predicted once")
    add_model_arguments(p)
    add_dtype_argument(p)
    p.add_argument("--topk", type=at_least(1), default=5, help="classes to show per image (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text (with --output: the summary)")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="write one row per image to FILE as results come, flushed per batch, instead of printing "
                        "them: .jsonl, .csv or .parquet (needs pyarrow); an existing FILE is an error (see --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the --output FILE of a killed or failed run: the images already in it are skipped, "
                        "the others appended (the same inputs, model and --topk)")
    p.add_argument("--skip-bad", action="store_true",
                   help="give an unreadable image a row with its error and go on (default: stop, naming it; the rows "
                        "written before it stay complete, for --resume)")
    p.add_argument("--batch-size", type=at_least(1), default=16, help="images per forward pass (default 16)")
    p.add_argument("--num-workers", type=at_least(0), default=None,
                   help="processes decoding images while the model runs (default: one per CPU core when there is "
                        "more than one batch)")
    p.add_argument("--save-vis", default=None, metavar="PATH",
                   help="also save each image with its top-k drawn on it: a file (.png/.jpg, one image) or a folder "
                        "(receives <image stem>.png per image); not with --output")
    add_launcher_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..errors import InvalidOptionError

    if args.save_vis and (args.output or args.launcher != "none"):
        raise InvalidOptionError("--save-vis draws each image for a look at a few: use it without --output and "
                                 "--launcher")
    from ..engine.distributed import destroy_distributed, init_distributed, rank0_first
    from ..inference import plan_predict, run_predict

    use_local_rank(args)
    dist = init_distributed(args.launcher, args.device)
    try:
        plan = plan_predict(args.images, args.output, resume=args.resume)  # bad inputs fail before the model loads
        if args.save_vis:
            from .._io import output_path
            from ..visualize import vis_paths

            for path in vis_paths(plan.paths, args.save_vis):  # never over an input image (--save-vis IMAGE_FOLDER)
                output_path(path, "--save-vis", [*plan.paths, args.model, args.weights])
        model = rank0_first(lambda: load_model(args, device=dist.device), "the model")
        # a bar on stderr only when it is a terminal: stdout carries the results, a redirected stderr no bar lines
        result = run_predict(model, plan, batch_size=args.batch_size, num_workers=args.num_workers, topk=args.topk,
                             skip_bad=args.skip_bad, dtype=args.dtype,
                             progress=None if len(plan.paths) > 1 else False)
    finally:
        destroy_distributed()
    if not dist.is_main:
        return 0
    if args.output:
        return _summary(args, result)
    return _show(args, model, result.rows)


def _summary(args: argparse.Namespace, result) -> int:
    summary = {"output": str(result.output), "inputs": result.num_inputs, "resumed": result.resumed,
               "written": result.written, "errors": [{"path": p, "error": e} for p, e in result.errors],
               "seconds": round(result.seconds, 3), "images_per_second": round(result.images_per_second, 1)}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    resumed = f" after the {result.resumed} already there" if result.resumed else ""
    print(f"wrote {result.written} rows to {result.output}{resumed} ({result.num_inputs} inputs; "
          f"{result.seconds:.1f} s, {result.images_per_second:.1f} images/s)")
    for path, why in result.errors:
        print(f"  error row: {path}: {why}")
    return 0


def _show(args: argparse.Namespace, model, rows: list[dict]) -> int:
    """The rows on stdout, for a few images: text, or ``--json``."""
    from ..data.classes import imagenet_classes, imagenet_synsets

    imagenet = model.classes is not None and tuple(model.classes) == imagenet_classes()
    synsets = imagenet_synsets() if imagenet else None
    shown = []
    for row in rows:
        if row["error"] is not None:
            shown.append({"image": row["path"], "model": model.name, "error": row["error"]})
            continue
        names = row["topk_classes"] or [None] * len(row["topk_labels"])
        top = [{"label": label, "score": score, "class": name, **({"synset": synsets[label]} if synsets else {})}
               for label, score, name in zip(row["topk_labels"], row["topk_scores"], names)]
        shown.append({"image": row["path"], "model": model.name, "topk": top})
    if args.save_vis:
        from ..visualize import save_predictions

        good = [s for s in shown if "topk" in s]
        results = [{"topk": [(t["label"], t["score"], t["class"]) for t in s["topk"]]} for s in good]
        for s, path in zip(good, save_predictions([s["image"] for s in good], results, args.save_vis)):
            s["vis"] = str(path)
            print(f"saved {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    for s in shown:
        print(f"{s['image']}  ({s['model']})")
        if "error" in s:
            print(f"  error: {s['error']}")
        for rank, t in enumerate(s.get("topk", ()), 1):
            name = t["class"] if t["class"] is not None else f"class {t['label']}"
            print(f"  {rank}. {100 * t['score']:6.2f}%  {name}  [{t['label']}]")
    return 0
