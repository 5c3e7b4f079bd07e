"""``cspnet predict``: classify images and print the top-k classes."""

from __future__ import annotations

import argparse
import json
import sys

from . import add_model_arguments, at_least, load_model

HELP = "classify images and print the top-k classes with their names and scores"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    add_model_arguments(p)
    p.add_argument("--topk", type=at_least(1), default=5, help="classes to show per image (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--batch-size", type=at_least(1), default=16, help="images per forward pass (default 16)")
    p.add_argument("--num-workers", type=at_least(0), default=None,
                   help="processes decoding images while the model runs (default: one per CPU core when there is "
                        "more than one batch)")
    p.add_argument("--save-vis", default=None, metavar="PATH",
                   help="also save each image with its top-k drawn on it: a file (.png/.jpg, one image) or a folder "
                        "(receives <image stem>.png per image)")


def run(args: argparse.Namespace) -> int:
    from ..data.classes import imagenet_classes, imagenet_synsets
    from ..inference import inference_model

    if args.save_vis:  # a bad --save-vis fails before the model loads
        from .._io import output_path
        from ..visualize import vis_paths

        for path in vis_paths(args.images, args.save_vis):  # never over an input image (--save-vis IMAGE_FOLDER)
            output_path(path, "--save-vis", [*args.images, args.model, args.weights])
    model = load_model(args)
    # a bar on stderr only when it is a terminal: stdout carries the results, a redirected stderr no bar lines
    results = inference_model(model, list(args.images), batch_size=args.batch_size, topk=args.topk,
                              num_workers=args.num_workers, progress=None if len(args.images) > 1 else False)
    imagenet = model.classes is not None and tuple(model.classes) == imagenet_classes()
    synsets = imagenet_synsets() if imagenet else None
    rows = []
    for image, res in zip(args.images, results):
        top = [
            {"label": label, "score": score, "class": name, **({"synset": synsets[label]} if synsets else {})}
            for label, score, name in res["topk"]
        ]
        rows.append({"image": image, "model": model.name, "topk": top})
    if args.save_vis:
        from ..visualize import save_predictions

        for row, path in zip(rows, save_predictions(args.images, results, args.save_vis)):
            row["vis"] = str(path)
            print(f"saved {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['image']}  ({row['model']})")
        for rank, t in enumerate(row["topk"], 1):
            name = t["class"] if t["class"] is not None else f"class {t['label']}"
            print(f"  {rank}. {100 * t['score']:6.2f}%  {name}  [{t['label']}]")
    return 0
