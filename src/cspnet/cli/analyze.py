"""``cspnet analyze``: parameters, MACs and activations at a stated resolution (mmpretrain's get_flops.py)."""

from __future__ import annotations

import argparse

HELP = "count parameters, MACs per stage and activations of a model at a given input size"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model name (see `cspnet list`)")
    p.add_argument("--image-size", "--shape", dest="image_size", type=int, nargs="+", default=[224], metavar="N",
                   help="input H [W] (default 224, as mmpretrain's get_flops.py and the seed's FLOPs column)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from ..analysis import analyze, resolution
    from ..weights.records import get_weights_info

    res = analyze(args.model, resolution(args.image_size, "--image-size (--shape)"))
    if args.json:
        print(res.to_json())
        return 0
    print(res.format())
    crop = get_weights_info(args.model).eval.crop
    if res.resolution != (crop, crop):
        print(f"(this model is evaluated at {crop}x{crop}: `cspnet analyze {args.model} --image-size {crop}`)")
    return 0
