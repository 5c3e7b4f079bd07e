"""``cspnet export``: ONNX, TorchScript or ``torch.export`` files, checked against PyTorch before they are written."""

from __future__ import annotations

import argparse
import json

from . import add_model_arguments, at_least, load_model

HELP = "export a model to ONNX, TorchScript or a torch.export program, verified against PyTorch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, positional=True)
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript", "exported-program"),
                   help="output format (default %(default)s)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (ONNX/torch.export: a 'batch' axis)")
    p.add_argument("--with-preprocessing", action="store_true",
                   help="take uint8 NCHW RGB 0-255 (resized, centre-cropped) and normalise inside the graph")
    p.add_argument("--output", default=None, metavar="PATH",
                   help="output file (default: <model name>.onnx / .torchscript.pt / .pt2 in the current folder)")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset, 11 to the newest the installed torch writes (20 with torch 2.13; default 17)")
    p.add_argument("--image-size", type=int, nargs="+", default=None, metavar="N",
                   help="input H [W], each 32 to 4096, and batch x H x W at most 4096 x 4096 (default: the model's "
                        "eval crop)")
    p.add_argument("--batch-size", type=at_least(1), default=1, help="the fixed batch without --dynamic-batch")
    p.add_argument("--no-verify", action="store_true", help="skip running the file and comparing it with PyTorch")
    p.add_argument("--atol", type=float, default=1e-3,
                   help="largest max-abs logit difference the check accepts (default %(default)g)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .._io import check_folder, output_path
    from ..analysis import resolution
    from ..engine.distributed import default_device
    from ..errors import InvalidOptionError
    from ..export import DEFAULT_OPSET, FORMATS, MAX_SIDE, OPSETS, check_atol, check_size, export_model

    # Every option is checked before the weights load (a download, seconds of work): nothing fails after it but
    # the export itself.
    if args.opset is not None and args.format != "onnx":
        raise InvalidOptionError(f"--opset applies to --format onnx only, not {args.format}")
    if args.opset is not None and args.opset not in OPSETS:  # 0 is an opset to refuse, not "unset"
        raise InvalidOptionError(f"--opset {args.opset}: the installed exporter writes opsets {OPSETS.start} to "
                                 f"{OPSETS.stop - 1}")
    check_atol(args.atol, "--atol")
    if args.image_size is not None:
        hw = resolution(args.image_size, "--image-size", minimum=32, maximum=MAX_SIDE)
        check_size(hw, args.batch_size, args.dynamic_batch, ("--image-size", "--batch-size"))
    if args.device is not None:  # the export runs on the CPU; a device that does not exist is still a typo
        default_device(args.device)
    inputs = (args.model, args.weights)
    if args.output:
        output_path(args.output, "--output", inputs)
    else:  # named after the model, in the current folder
        check_folder(Path.cwd(), "--output (default: the current folder)")
    model = load_model(args, device="cpu")
    output = args.output or f"{model.name}{FORMATS[args.format]}"
    if not args.output:  # the default name is known only now
        output_path(output, "--output", inputs)
    res = export_model(model, output, args.format, dynamic_batch=args.dynamic_batch,
                       with_preprocessing=args.with_preprocessing,
                       opset=DEFAULT_OPSET if args.opset is None else args.opset, image_size=args.image_size,
                       batch_size=args.batch_size, verify=not args.no_verify, atol=args.atol)
    if args.json:
        print(json.dumps({"path": str(res.path), "format": res.format, "max_abs_diff": res.max_abs_diff,
                          "checked_batches": list(res.checked_batches), "verified_with": res.verified_with,
                          "metadata": res.metadata}, indent=2))
        return 0
    inp = res.metadata["model"]["input"]
    print(f"wrote {res.path} ({args.format}; {res.metadata['spec']['num_classes']} classes; input {inp['name']!r} "
          f"{inp['dtype']} {inp['shape']} NCHW RGB; output 'logits')")
    if res.max_abs_diff is not None:
        print(f"verified with {res.verified_with}: max abs diff vs PyTorch {res.max_abs_diff:.3g} "
              f"(batch {', '.join(map(str, res.checked_batches))})")
    elif not args.no_verify:
        print("not verified: onnxruntime is not installed (pip install 'cspnet[export]')")
    return 0
