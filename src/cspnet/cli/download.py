"""``cspnet download``: fetch published weights into the caches, or into a folder for an offline machine."""

from __future__ import annotations

import argparse

HELP = "fetch the published weights (for offline use: --dest DIR, then CSPNET_WEIGHTS_DIR=DIR on the other machine)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help="models to fetch (default: all three)")
    p.add_argument("--dest", default=None, help="also copy each file here as <weights name>.<ext>")
    p.add_argument("--mirror", default=None, help="base URL of a mirror (as $CSPNET_MIRROR)")
    p.add_argument("--json", action="store_true", help="print where each file is as JSON")


def run(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from .._io import atomic_write, check_folder
    from ..weights.sources import resolve
    from ..weights.records import WEIGHTS, get_weights_info

    infos = list(dict.fromkeys(get_weights_info(n) for n in args.names)) if args.names else list(WEIGHTS)
    if args.dest:  # before any download
        check_folder(args.dest, "--dest")
    rows = []
    for info in infos:
        path = resolve(info.name, info.sources, mirror=args.mirror)
        rows.append({"name": info.name, "path": str(path)})
        if args.dest:
            suffix = ".safetensors" if path.suffix == ".safetensors" else ".pth"
            dst = Path(args.dest) / f"{info.name}{suffix}"
            if not (dst.is_file() and dst.samefile(path)):  # --dest is the cache itself: the file is there already
                atomic_write(dst, lambda tmp: shutil.copyfile(path, tmp), what="--dest file")
            rows[-1]["dest"] = str(dst)
        if not args.json:
            print(f"{info.name}: {path}" + (f" -> {rows[-1]['dest']}" if args.dest else ""))
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
    return 0
