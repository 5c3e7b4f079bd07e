"""The ``cspnet`` command line. Each subcommand is a module here with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; modules import their heavy dependencies inside ``run`` so ``cspnet --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import os
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


def add_launcher_arguments(p: argparse.ArgumentParser) -> None:
    """``--launcher none|pytorch`` (mmpretrain's), and the ``--local-rank`` that ``torch.distributed.launch`` passes."""
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none",
                   help="'pytorch' under torchrun: one process per GPU (gloo processes on CPU)")
    p.add_argument("--local-rank", "--local_rank", type=int, default=None, help=argparse.SUPPRESS)


def use_local_rank(args: argparse.Namespace) -> None:
    """torch.distributed.launch passes ``--local-rank`` instead of setting ``LOCAL_RANK``: set it from there."""
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))


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
