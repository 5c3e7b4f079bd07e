"""``cspnet export``: ONNX, TorchScript or ``torch.export`` files, checked against PyTorch before they are written;
``--dtype int8 --calib IMAGES...``: an int8 ONNX file calibrated on those images (:mod:`cspnet.quantize`)."""

from __future__ import annotations

import argparse
import json

from . import add_model_arguments, at_least, load_model

HELP = "export a model to ONNX, TorchScript or a torch.export program, verified against PyTorch (or int8 ONNX)"


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
    p.add_argument("--batch-size", type=at_least(1), default=None,
                   help="the fixed batch without --dynamic-batch (default 1)")
    p.add_argument("--no-verify", action="store_true", help="skip running the file and comparing it with PyTorch")
    p.add_argument("--atol", type=float, default=None,
                   help="largest max-abs logit difference the check accepts (default 1e-3)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "int8"),
                   help="fp32 (default), or int8: static quantization calibrated on --calib, an ONNX file of any batch "
                        "at the eval crop, run by ONNX Runtime on the CPU (bf16 is a run-time choice: --dtype bf16 of "
                        "predict/test/serve)")
    p.add_argument("--calib", nargs="+", default=None, metavar="IMAGES",
                   help="with --dtype int8: images like the ones the model will see (100-500 from its training "
                        "set): files, folders (their images, in subfolders too), globs or @LIST")
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
    calib = _check_int8_options(args)
    batch_size, atol = args.batch_size or 1, 1e-3 if args.atol is None else args.atol
    check_atol(atol, "--atol")
    if args.image_size is not None:
        hw = resolution(args.image_size, "--image-size", minimum=32, maximum=MAX_SIDE)
        check_size(hw, batch_size, args.dynamic_batch, ("--image-size", "--batch-size"))
    if args.device is not None:  # the export runs on the CPU; a device that does not exist is still a typo
        default_device(args.device)
    inputs = (args.model, args.weights)
    if args.output:
        output_path(args.output, "--output", inputs)
    else:  # named after the model, in the current folder
        check_folder(Path.cwd(), "--output (default: the current folder)")
    inputs = (*inputs, *(calib or ()))
    model = load_model(args, device="cpu")
    suffix = ".int8.onnx" if calib else FORMATS[args.format]
    output = args.output or f"{model.name}{suffix}"
    if not args.output:  # the default name is known only now
        output_path(output, "--output", inputs)
    if calib:
        return _write_int8(model, calib, output, inputs, args.json)
    res = export_model(model, output, args.format, dynamic_batch=args.dynamic_batch,
                       with_preprocessing=args.with_preprocessing,
                       opset=DEFAULT_OPSET if args.opset is None else args.opset, image_size=args.image_size,
                       batch_size=batch_size, verify=not args.no_verify, atol=atol)
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


def _check_int8_options(args: argparse.Namespace) -> list[str] | None:
    """The calibration image paths of ``--dtype int8`` (None for fp32), after refusing the options it cannot honour."""
    from ..errors import InvalidOptionError

    if args.dtype != "int8":
        if args.calib is not None:
            raise InvalidOptionError("--calib calibrates an int8 export: add --dtype int8")
        return None
    if args.calib is None:
        raise InvalidOptionError("--dtype int8 needs calibration images: --calib IMAGES... (100-500 like the ones the "
                                 "model will see, e.g. from its training set)")
    # an int8 file is ONNX at the eval crop with any batch, checked against float32 on the calibration images
    fixed = {"--format": args.format != "onnx", "--with-preprocessing": args.with_preprocessing,
             "--opset": args.opset is not None, "--image-size": args.image_size is not None,
             "--batch-size": args.batch_size is not None, "--dynamic-batch": args.dynamic_batch,
             "--no-verify": args.no_verify, "--atol": args.atol is not None}
    given = [name for name, on in fixed.items() if on]
    if given:
        raise InvalidOptionError(f"{', '.join(given)}: not with --dtype int8, which writes ONNX (opset 17) at the "
                                 f"eval crop for any batch, normalised float32 input, and measures its agreement with "
                                 f"float32 on the calibration images instead of an --atol check")
    from ..inference import expand_inputs
    from ..quantize import MAX_CALIBRATION_IMAGES

    paths = expand_inputs(args.calib)
    if len(paths) > MAX_CALIBRATION_IMAGES:  # refused before the weights load
        raise InvalidOptionError(f"--calib names {len(paths):,} images: at most {MAX_CALIBRATION_IMAGES:,} (the "
                                 f"ranges settle within a few hundred); give a random subset")
    return paths


def _write_int8(model, calib: list[str], output: str, inputs, as_json: bool) -> int:
    from ..quantize import quantize

    q = quantize(model, calib)
    q.save(output, inputs)
    info = q.metadata["quantization"]
    if as_json:
        print(json.dumps({"path": output, "format": "onnx", "dtype": "int8", "metadata": q.metadata}, indent=2))
        return 0
    check = info["check"]
    print(f"wrote {output} (onnx int8, {info['weights']} weights, {info['activations']} activations; "
          f"{q.num_classes} classes; input 'input' float32 [batch, 3, {q.image_size[0]}, {q.image_size[1]}])")
    print(f"calibrated on {info['calibration']['images']} images; on them, top-1 agreement with float32 "
          f"{check['top1_agreement']:.2f}%, max rel logit diff {check['max_rel_diff']:.3g}")
    return 0
