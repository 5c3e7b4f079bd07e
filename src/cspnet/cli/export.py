"""``cspnet export``: ONNX, TorchScript or ``torch.export`` files, checked against PyTorch before they are written."""

from __future__ import annotations

import argparse

HELP = "export a model to ONNX, TorchScript or a torch.export program, verified against PyTorch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model name (see `cspnet list`)")
    p.add_argument("--weights", default=None, metavar="FILE|URL",
                   help="checkpoint to load (timm, mmpretrain or cspnet layout); default: the published weights")
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript", "exported-program"),
                   help="output format (default %(default)s)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (ONNX/torch.export: a 'batch' axis)")
    p.add_argument("--with-preprocessing", action="store_true",
                   help="take uint8 NCHW RGB 0-255 (resized, centre-cropped) and normalise inside the graph")
    p.add_argument("--output", default=None, metavar="PATH",
                   help="output file (default: <weights name>.onnx / .torchscript.pt / .pt2 in the current folder)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset, 11 to 20 (default 17)")
    p.add_argument("--image-size", type=int, nargs="+", default=None, metavar="N",
                   help="input H [W] (default: the model's eval crop)")
    p.add_argument("--batch-size", type=int, default=1, help="the fixed batch without --dynamic-batch (default 1)")
    p.add_argument("--no-verify", action="store_true", help="skip running the file and comparing it with PyTorch")
    p.add_argument("--atol", type=float, default=1e-3,
                   help="largest max-abs logit difference the check accepts (default %(default)g)")


def run(args: argparse.Namespace) -> int:
    from ..analysis import resolution
    from ..errors import InvalidOptionError
    from ..export import DEFAULT_OPSET, FORMATS, export_model
    from ..zoo import get_model

    if args.opset is not None and args.format != "onnx":
        raise InvalidOptionError(f"--opset applies to --format onnx only, not {args.format}")
    if args.image_size is not None:  # before the weights download
        resolution(args.image_size, "--image-size", minimum=32)
    model = get_model(args.model, pretrained=args.weights or True, device="cpu")
    output = args.output or f"{model.weights.name}{FORMATS[args.format]}"
    res = export_model(
        model,
        output,
        args.format,
        dynamic_batch=args.dynamic_batch,
        with_preprocessing=args.with_preprocessing,
        opset=args.opset or DEFAULT_OPSET,
        image_size=args.image_size,
        batch_size=args.batch_size,
        verify=not args.no_verify,
        atol=args.atol,
    )
    inp = res.metadata["model"]["input"]
    print(f"wrote {res.path} ({args.format}; input {inp['name']!r} {inp['dtype']} {inp['shape']} NCHW RGB; "
          f"output 'logits')")
    if res.max_abs_diff is not None:
        print(f"verified with {res.verified_with}: max abs diff vs PyTorch {res.max_abs_diff:.3g} "
              f"(batch {', '.join(map(str, res.checked_batches))})")
    elif not args.no_verify:
        print("not verified: onnxruntime is not installed (pip install 'cspnet[export]')")
    return 0
