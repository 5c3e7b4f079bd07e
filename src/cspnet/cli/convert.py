"""``cspnet convert``: rewrite a checkpoint in the cspnet, timm or mmpretrain layout, losslessly."""

from __future__ import annotations

import argparse

HELP = "convert a checkpoint between the cspnet, timm and mmpretrain layouts (lossless; strict key/shape checks)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="checkpoint file (.pth/.bin/.safetensors) in any of the three layouts")
    p.add_argument("dst", metavar="DST", help="output file; .safetensors writes safetensors, anything else torch.save")
    p.add_argument("--to", required=True, choices=("cspnet", "timm", "mmpretrain"), help="layout to write")
    p.add_argument("--model", default=None, help="architecture (default: recognised from the tensors)")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import CheckpointError, InvalidOptionError
    from ..weights import convert
    from ..weights.checkpoint import read_state_dict, save_state_dict
    from ..zoo import get_weights_info

    src, dst = Path(args.src), Path(args.dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise InvalidOptionError(f"DST {str(dst)!r} is the source file; write to another path")
    if dst.exists() and not args.force:
        raise InvalidOptionError(f"{str(dst)!r} exists; pass --force to overwrite it")
    sd, meta = read_state_dict(src)
    arch = get_weights_info(args.model).arch if args.model else convert.guess_arch(sd)
    if arch is None:
        layout = convert.detect_layout(sd)
        raise CheckpointError(
            f"{str(src)!r} ({layout} layout) matches none of the architectures exactly; pass --model to see "
            f"the mismatching keys"
        )
    out = convert.convert_state_dict(sd, arch, args.to)
    save_state_dict(out, dst, args.to, {"arch": arch, **meta})
    print(f"{src} ({convert.detect_layout(sd)}, {arch}) -> {dst} ({args.to}, {len(out)} tensors)")
    return 0
