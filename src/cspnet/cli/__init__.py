"""The ``cspnet`` command line. Each subcommand is a module here with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; modules import their heavy dependencies inside ``run`` so ``cspnet --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import CSPNetError

# subcommand -> module in this package
COMMANDS = {
    "predict": "predict",
    "list": "listing",
    "convert": "convert",
    "download": "download",
    "export": "export",
    "analyze": "analyze",
    "cam": "cam",
    "test": "test",
    "train": "train",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cspnet", description="CSPNet image classification backbones.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f".{module}", __name__)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except CSPNetError as e:
        print(f"cspnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cspnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
