"""``cspnet convert``: rewrite a checkpoint in the cspnet, timm or mmpretrain layout, losslessly, with its model."""

from __future__ import annotations

import argparse
import json

from . import add_source_arguments, where

HELP = "convert a checkpoint between the cspnet, timm and mmpretrain layouts (lossless; strict key/shape checks)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="checkpoint file (.pth/.bin/.safetensors) in any of the three layouts")
    p.add_argument("dst", metavar="DST", help="output file; .safetensors writes safetensors, anything else torch.save")
    p.add_argument("--to", required=True, choices=("cspnet", "timm", "mmpretrain"), help="layout to write")
    p.add_argument("--model", default=None, help="architecture (default: the checkpoint's)")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.add_argument("--unsafe-load", action="store_true",
                   help="read a pickle that weights_only refuses (e.g. timm train.py's, with argparse.Namespace) with "
                        "torch.load(weights_only=False): RUNS ANY CODE IN IT; only for a file you trust, to rewrite "
                        "it as a safe DST")
    add_source_arguments(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .. import weights
    from .._io import output_path
    from ..errors import InvalidOptionError
    from ..weights import convert
    from ..weights.files import save_state_dict
    from ..weights.records import get_weights_info

    src, dst = Path(args.src), Path(args.dst)
    # before reading SRC: DST the same file as SRC (a link or hard link to it too; --force or not), a folder, a
    # device or FIFO, or an unwritable folder
    output_path(dst, "DST", [src])
    if dst.exists() and not args.force:
        raise InvalidOptionError(f"{str(dst)!r} exists; pass --force to overwrite it")
    found = weights.read(src, get_weights_info(args.model).arch if args.model else None, use_ema=args.ema,
                         unsafe_load=args.unsafe_load, **where(args))
    out = convert.from_cspnet(found.state_dict, found.spec.arch, args.to)
    save_state_dict(out, dst, args.to, found.spec)
    done = {"src": str(src), "src_layout": found.layout, "dst": str(dst), "layout": args.to, "tensors": len(out),
            "ema": found.ema, "spec": found.spec.to_meta()}
    if args.json:
        print(json.dumps(done, indent=2))
    else:
        print(f"{src} ({found.layout}, {found.spec.arch}{', EMA' if found.ema else ''}) -> {dst} ({args.to}, "
              f"{len(out)} tensors, {found.spec.num_classes} classes)")
    return 0
