"""The ``cspnet`` command line. Each subcommand is a module here with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; modules import their heavy dependencies inside ``run`` so ``cspnet --help`` starts without
torch. One vocabulary for all: :func:`add_model_arguments` (the model and where its weights come from), ``--output``
for a file, ``--work-dir`` for a folder, ``--json`` for structured output, ``--image-size`` for an input size."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .._version import __version__
from ..errors import CSPNetError

COMMANDS = {"predict": "predict", "list": "listing", "convert": "convert", "download": "download",  # -> module
            "export": "export", "analyze": "analyze", "cam": "cam", "test": "test", "train": "train", "plot": "plot",
            "report": "report", "serve": "serve"}


def at_least(least: int):
    """An argparse ``type``: an integer >= ``least``; anything else is a usage error that names the option."""
    def parse(text: str) -> int:
        if not text.strip().lstrip("-").isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
        return int(text)
    return parse


def add_model_arguments(p: argparse.ArgumentParser, positional: bool = False) -> None:
    """The model (``MODEL`` or ``--model``: a name, a config file, or a checkpoint file, which carries its model),
    ``--weights`` and :func:`add_source_arguments`: every subcommand that loads a model by name."""
    what = "a name (see `cspnet list`), a config file, or a checkpoint file (which names its own model)"
    default = "default: the --weights file's model, else cspdarknet53"
    if positional:  # MODEL may be left out when --weights names the model
        p.add_argument("model", metavar="MODEL", nargs="?", default=None, help=f"{what}; {default}")
    else:
        p.add_argument("--model", default=None, help=f"{what}; {default}")
    p.add_argument("--weights", default=None, metavar="FILE|URL",
                   help="weights to load (timm, mmpretrain or cspnet layout; a cspnet checkpoint brings its classes "
                        "and preprocessing); default: the published weights")
    p.add_argument("--num-classes", type=at_least(0), default=None, metavar="N",
                   help="confirm the weights' head width, or replace their head by a new, untrained N-class one "
                        "(to fine-tune elsewhere: say so, as its predictions mean nothing yet)")
    add_source_arguments(p)


def add_dtype_argument(p: argparse.ArgumentParser, weights: str = "given as --weights") -> None:
    """``--dtype``: the numerics of the fast inference copy (predict, test, serve); ``weights`` says where the
    command takes an int8 file."""
    p.add_argument("--dtype", choices=("fp32", "bf16", "int8"), default=None,
                   help="fp32 (default); bf16: bf16 weights and activations (on a CPU only with AMX or AVX512-BF16, "
                        "refused where it would be emulated; any CUDA GPU); int8: the .onnx file `cspnet export "
                        f"--dtype int8 --calib IMAGES` writes, {weights} (CPU; an int8 .onnx runs as int8 without "
                        "--dtype too)")


def add_source_arguments(p: argparse.ArgumentParser, training: bool = False) -> None:
    """Where weights come from (``--weights-dir``, ``--mirror``, ``--offline``) and, but for training, which of a
    checkpoint's weights (``--ema``/``--no-ema``) and the ``--device``."""
    if not training:
        p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                       help="a training checkpoint's EMA weights (--ema) or raw weights (--no-ema); default: those "
                            "its run chose its best epoch by")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda if available; under "
                                                      "torchrun cuda:LOCAL_RANK)")
    p.add_argument("--weights-dir", default=None, metavar="DIR", help="look for weight files here first "
                                                                     "(as $CSPNET_WEIGHTS_DIR)")
    p.add_argument("--mirror", default=None, metavar="URL", help="a server of the weight files (as $CSPNET_MIRROR)")
    p.add_argument("--offline", action="store_true", default=None, help="no downloads (as $CSPNET_OFFLINE=1)")


def where(args: argparse.Namespace) -> dict:
    """The arguments of :func:`add_source_arguments`, for ``get_model``/``weights.read``."""
    return {"weights_dir": args.weights_dir, "mirror": args.mirror, "offline": args.offline}


def load_model(args: argparse.Namespace, device=None, **kwargs):
    """The model that :func:`add_model_arguments` describes, on ``device`` (default: ``--device``), in eval mode."""
    from ..engine.distributed import default_device
    from ..inference import get_model

    name = args.model if args.model is not None or args.weights is not None else "cspdarknet53"
    return get_model(name, args.weights or True, device=device or default_device(args.device), use_ema=args.ema,
                     num_classes=args.num_classes, **where(args), **kwargs)


def add_cfg_options(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help=f"override config keys, e.g. {example} (lists: key=[a,b] or key=a,b)")


def add_launcher_arguments(p: argparse.ArgumentParser) -> None:
    """``--launcher none|pytorch`` (mmpretrain's), and the ``--local-rank`` that ``torch.distributed.launch`` passes."""
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none",
                   help="'pytorch' under torchrun: one process per GPU (gloo processes on CPU)")
    p.add_argument("--local-rank", "--local_rank", type=int, default=None, help=argparse.SUPPRESS)


def use_local_rank(args: argparse.Namespace) -> None:
    """torch.distributed.launch passes ``--local-rank`` instead of setting ``LOCAL_RANK``: set it from there."""
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="cspnet", description="CSPNet image classification backbones.")
    parser.add_argument("--version", action="version", version=f"cspnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f".{module}", __name__)
        commands[name] = p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser, commands


def script(command: str) -> int:
    """``python tools/<command>.py ...`` (mmpretrain's scripts): the same as ``cspnet <command> ...``."""
    return main([command, *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    parser, commands = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's usage, not the top level's
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
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
