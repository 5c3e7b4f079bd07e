"""``cspnet predict``: classify images and print the top-k classes."""

from __future__ import annotations

import argparse
import json

HELP = "classify images and print the top-k classes with their names and scores"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--model", default="cspdarknet53", help="model name (see `cspnet list`; default %(default)s)")
    p.add_argument("--weights", default=None, metavar="FILE|URL",
                   help="checkpoint to load (timm, mmpretrain or cspnet layout); default: the published weights")
    p.add_argument("--topk", type=int, default=5, help="classes to show per image (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default %(default)s)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="processes decoding images while the model runs (default: one per CPU core when there is "
                        "more than one batch)")
    p.add_argument("--save-vis", default=None, metavar="PATH",
                   help="also save each image with its top-k drawn on it: a file (.png/.jpg, one image) or a folder "
                        "(receives <image stem>.png per image)")


def run(args: argparse.Namespace) -> int:
    from ..data.classes import imagenet_synsets
    from ..engine.distributed import default_device
    from ..errors import InvalidOptionError
    from ..inference import inference_model
    from ..zoo import get_model

    if args.topk < 1:
        raise InvalidOptionError(f"--topk must be at least 1, got {args.topk}")
    if args.save_vis:
        from ..visualize import vis_paths

        vis_paths(args.images, args.save_vis)  # a bad --save-vis fails before the model loads
    device = default_device(args.device)
    model = get_model(args.model, pretrained=args.weights or True, device=device)
    results = inference_model(model, list(args.images), batch_size=args.batch_size, topk=args.topk,
                              num_workers=args.num_workers)
    synsets = imagenet_synsets() if model.num_classes == 1000 else None
    rows = []
    for image, res in zip(args.images, results):
        top = [
            {"label": label, "score": score, "class": name, **({"synset": synsets[label]} if synsets else {})}
            for label, score, name in res["topk"]
        ]
        rows.append({"image": image, "model": model.weights.name, "topk": top})
    if args.save_vis:
        import sys

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
