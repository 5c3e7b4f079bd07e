"""``cspnet test`` = ``python tools/test.py``: evaluate a checkpoint on a config's test set (mmpretrain's arguments).

``cspnet test CONFIG CHECKPOINT`` builds the config's model, loads CHECKPOINT (a file, a URL, or a seed URL, which
is resolved through every weight source), reads ``test_dataloader.dataset`` and prints ``accuracy/top1`` and
``accuracy/top5`` with the eval setting. Under ``torchrun ... --launcher pytorch`` each process evaluates an
unpadded shard and the numbers are those of one process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from ..data.presets import INTERPOLATIONS
from . import (add_cfg_options, add_dtype_argument, add_launcher_arguments, add_source_arguments, at_least,
               use_local_rank, where)

HELP = "evaluate a checkpoint on a config's test set (top-1/top-5), like mmpretrain's tools/test.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="config file, e.g. configs/cspnet/cspdarknet50_8xb32_in1k.py")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="weights file or URL (timm, mmpretrain or cspnet layout)")
    p.add_argument("--work-dir", metavar="DIR", help="also write the log, the metrics (JSON) and the config here")
    p.add_argument("--output", "--out", dest="output", metavar="FILE",
                   help="per-image results, by the extension: .jsonl, .csv or .parquet (a row per image as it is "
                        "computed: path, label, top-5 classes and scores; the summary in FILE.meta.json; read by "
                        "`cspnet report`), .pkl (mmpretrain's --out pickle) or .json (the summary with the "
                        "predictions); --out is mmpretrain's name")
    p.add_argument("--out-item", choices=["pred", "metrics"], default="pred",
                   help="with --out: 'pred' (default) the per-image results, 'metrics' the metrics alone (.json/.pkl)")
    add_cfg_options(p, "test_dataloader.dataset.data_root=/data/imagenet "
                       "test_dataloader.dataset.pipeline.1.scale=256")
    p.add_argument("--tta", action="store_true", help="average the softmax of each image and its horizontal flip")
    p.add_argument("--crop-pct", type=_fraction, default=None, metavar="F",
                   help="evaluate as timm does: resize the short edge to floor(crop / F), then centre-crop (timm's "
                        "published CSPNet figures: 0.887 at 256, with --interpolation bilinear); default: the "
                        "config's test pipeline")
    p.add_argument("--crop-size", type=at_least(1), default=None, metavar="N",
                   help="with --crop-pct: the centre crop (timm's input size) instead of the config's; timm "
                        "evaluates all three CSPNets at 256, the CSPResNeXt-50 config crops 224")
    p.add_argument("--interpolation", choices=INTERPOLATIONS, default=None,
                   help="the resize filter instead of the config's (mmpretrain's CSPNet configs: bicubic; timm: "
                        "bilinear)")
    p.add_argument("--amp", action="store_true", help="bfloat16 (the same as --dtype bf16)")
    add_dtype_argument(p, weights="given as CHECKPOINT")
    add_launcher_arguments(p)
    p.add_argument("--skip-bad", action="store_true",
                   help="continue past unreadable or corrupt images; they are listed and left out of the metrics")
    p.add_argument("--batch-size", type=at_least(1), help="images per process per step (default: the config's)")
    p.add_argument("--num-workers", type=at_least(0),
                   help="data loading processes per rank (default: the config's, at most the rank's share of the "
                        "CPU cores)")
    p.add_argument("--resize", choices=["auto", "loader", "device"], default="auto",
                   help="where the exact Pillow resize + centre crop runs: 'loader' (in the loader workers) or "
                        "'device' (on the evaluation device: the workers only decode, so they feed it about twice "
                        "as many images/s; the same pixels, bit for bit); default 'auto': 'device' on CUDA, else "
                        "'loader'")
    p.add_argument("--decode", choices=["cpu", "gpu"], default="cpu",
                   help="'gpu': decode JPEGs with nvJPEG (needs torchvision; not bit-exact: see "
                        "benchmarks/RESULTS.md), then resize on the GPU; default 'cpu': Pillow in the loader workers")
    p.add_argument("--no-optimize", action="store_true",
                   help="run the model as built (default: BatchNorm folded and channels_last, the same results up "
                        "to float rounding; see cspnet.optimize_for_inference)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (the first batch compiles)")
    p.add_argument("--cuda-graph", action="store_true", help="replay the forward as a CUDA graph (CUDA only)")
    p.add_argument("--json", action="store_true", help="print the summary (settings and metrics) as JSON")
    add_source_arguments(p)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], such as 0.887; got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from .._io import check_folder, output_path
    from ..config import eval_spec, load_config
    from ..engine.distributed import destroy_distributed, init_distributed, setup_logging
    from ..engine.evaluate import check_output, run_test
    from ..errors import InvalidOptionError

    if args.output:  # before the model and data load: a link to stdout, a FIFO, the checkpoint, a read-only folder
        output_path(args.output, "--out", [args.config, args.checkpoint])
        check_output(args.output, args.out_item)
    elif args.out_item != "pred":
        raise InvalidOptionError("--out-item needs --out FILE")
    if args.work_dir:
        check_folder(args.work_dir, "--work-dir")
    int8 = args.checkpoint.lower().endswith(".onnx")
    if args.dtype == "int8" and not int8:
        raise InvalidOptionError(f"--dtype int8 evaluates the int8 .onnx file that `cspnet export --dtype int8 "
                                 f"--calib IMAGES` writes; {args.checkpoint!r} is not one")
    if int8 and (args.dtype not in (None, "int8") or args.amp or args.compile or args.cuda_graph):
        raise InvalidOptionError(f"{args.checkpoint!r} is an int8 model, which runs as it was quantized: no --dtype "
                                 f"{args.dtype or 'bf16'}, --amp, --compile or --cuda-graph with it")
    use_local_rank(args)
    spec = eval_spec(load_config(args.config, args.cfg_options))
    if args.crop_size is not None and args.crop_pct is None:
        raise InvalidOptionError("--crop-size sets timm's crop, whose resize --crop-pct decides: give --crop-pct "
                                 "too (timm's CSPNet figures: --crop-pct 0.887 --crop-size 256), or set the config's "
                                 "test pipeline with --cfg-options")
    if args.crop_pct is not None or args.interpolation is not None:  # timm's eval, beside mmpretrain's
        spec = dataclasses.replace(spec, model=spec.model.replace(
            eval=spec.model.eval.with_crop_pct(args.crop_pct, args.interpolation, crop=args.crop_size)))
    dist = init_distributed(args.launcher, args.device)
    try:
        work_dir = Path(args.work_dir) if args.work_dir else None
        setup_logging(dist.rank, log_file=work_dir / f"test_{time.strftime('%Y%m%d_%H%M%S')}.log" if work_dir else None)
        done = run_test(spec, args.checkpoint, dist, batch_size=args.batch_size, num_workers=args.num_workers,
                        resize=args.resize, decode=args.decode, tta=args.tta, amp=args.amp or args.dtype == "bf16",
                        skip_bad=args.skip_bad,
                        optimize=not args.no_optimize, compile=args.compile, cuda_graph=args.cuda_graph,
                        use_ema=args.ema, output=args.output, out_item=args.out_item, work_dir=work_dir,
                        say=lambda line: print(line, flush=True, file=sys.stderr if args.json else sys.stdout),
                        **where(args))
    finally:
        destroy_distributed()
    if not dist.is_main:
        return 0
    result = done.result
    if args.json:
        print(json.dumps(done.summary, indent=1))
        return 0
    print("  ".join(f"{k}: {v:.4f}" for k, v in result.metrics.items()))
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s):")
        for path, why in result.skipped:
            print(f"  {path}: {why}")
    print(f"over {result.num_samples} of {result.num_images} images, {result.seconds:.1f} s "
          f"({result.images_per_second:.1f} images/s)")
    if args.output:
        print(f"wrote {args.output}")
    return 0
