"""``cspnet test`` = ``python tools/test.py``: evaluate a checkpoint on a config's test set (mmpretrain's arguments).

``cspnet test CONFIG CHECKPOINT`` builds the config's model, loads CHECKPOINT (a file, a URL, or a seed URL, which
is resolved through every weight source), reads ``test_dataloader.dataset`` and prints ``accuracy/top1`` and
``accuracy/top5`` with the eval setting. Under ``torchrun ... --launcher pytorch`` each process evaluates an
unpadded shard and the numbers are those of one process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import add_launcher_arguments, use_local_rank

HELP = "evaluate a checkpoint on a config's test set (top-1/top-5), like mmpretrain's tools/test.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="config file, e.g. configs/cspnet/cspdarknet50_8xb32_in1k.py")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or URL (timm, mmpretrain or cspnet layout)")
    p.add_argument("--work-dir", metavar="DIR", help="also write the log, the metrics (JSON) and the resolved config here")
    p.add_argument("--out", metavar="FILE.json", help="write metrics and per-sample predictions to this JSON file")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. test_dataloader.dataset.data_root=/data/imagenet "
                        "test_dataloader.dataset.pipeline.1.scale=256 (lists: key=[a,b] or key=a,b)")
    p.add_argument("--tta", action="store_true", help="average the softmax of each image and its horizontal flip")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    add_launcher_arguments(p)
    p.add_argument("--skip-bad", action="store_true",
                   help="continue past unreadable or corrupt images; they are listed and left out of the metrics")
    p.add_argument("--batch-size", type=int, default=None, help="images per process per step (default: the config's)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="data loading processes per rank (default: one per CPU core, shared by the ranks of a "
                        "machine; the config's value is for mmpretrain's 8-GPU nodes and is not used)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available; under torchrun "
                                                  "cuda:LOCAL_RANK)")
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


def run(args: argparse.Namespace) -> int:
    from ..engine.distributed import destroy_distributed, init_distributed

    use_local_rank(args)
    info = init_distributed(args.launcher, args.device)
    try:
        return _test(args, info)
    finally:
        destroy_distributed()


def _input_path(args: argparse.Namespace, transform, device):
    """``(description, dataset transform run by the loader workers, decode run on the device or None)``."""
    from ..errors import InvalidOptionError

    if args.decode == "gpu":
        from ..fast import GpuJpegDecoder, JpegReader

        if device.type != "cuda":
            raise InvalidOptionError(f"--decode gpu needs a CUDA device; this run is on {device}")
        if args.resize == "loader":
            raise InvalidOptionError("--decode gpu decodes on the GPU, so it resizes there too: drop --resize loader")
        return ("nvJPEG decode and exact resize on the GPU", JpegReader(transform.preset),
                GpuJpegDecoder(transform.preset, device))
    from ..data.resample import split_transform

    read, resize = split_transform(transform, device, args.resize)
    if resize is None:
        return "Pillow decode and resize in the loader", read, None
    return f"Pillow decode in the loader, exact resize on {device.type}", read, resize


def _test(args: argparse.Namespace, info) -> int:
    from .. import config as C
    from ..data.datasets import build_dataset
    from ..data.transforms import EvalTransform
    from ..engine.distributed import rank0_first, setup_logging
    from ..engine.evaluate import build_eval_loader, evaluate
    from ..errors import ConfigError, InvalidOptionError

    if args.out and Path(args.out).suffix.lower() in (".pkl", ".pickle"):
        raise InvalidOptionError(f"--out {args.out}: results are written as JSON; name the file *.json")
    if args.batch_size is not None and args.batch_size < 1:
        raise InvalidOptionError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.num_workers is not None and args.num_workers < 0:
        raise InvalidOptionError(f"--num-workers must be 0 or more, got {args.num_workers}")
    stamp = time.strftime("%Y%m%d_%H%M%S")
    work_dir = Path(args.work_dir) if args.work_dir else None
    setup_logging(info.rank, log_file=work_dir / f"test_{stamp}.log" if work_dir else None)

    cfg = C.load_config(args.config, args.cfg_options)
    transform = EvalTransform(C.eval_preset(cfg))
    input_path, read, decoder = _input_path(args, transform, info.device)
    # The data before the model: a wrong path fails in a second, not after a checkpoint download.
    dataset = build_dataset(**C.dataset_kwargs(cfg, "test"), transform=read)
    num_classes = C.model_kwargs(cfg)["num_classes"]
    if num_classes != dataset.num_classes:
        raise ConfigError(
            f"the model predicts {num_classes} classes (model.head.num_classes) but the test set has "
            f"{dataset.num_classes} ({dataset.source}); set model.head.num_classes or the dataset's classes"
        )
    # rank 0 first: only one process downloads the checkpoint
    model = rank0_first(lambda: C.build_model(cfg, pretrained=args.checkpoint, device=info.device), "the checkpoint")
    batch_size = args.batch_size or C.loader_kwargs(cfg, "test")["batch_size"]
    loader = build_eval_loader(dataset, batch_size, args.num_workers, info.rank, info.world_size,
                               pin_memory=info.device.type == "cuda")

    setting = (f"{transform.preset.describe()}; {'bf16 autocast' if args.amp else 'fp32'}; "
               f"{'flip TTA' if args.tta else 'no TTA'}; {info.world_size} process(es) x batch {batch_size} "
               f"on {info.device.type}; {input_path}")
    say = print if info.is_main else (lambda *a, **k: None)
    say(f"model: {C.model_name(cfg)} ({args.config}), checkpoint: {args.checkpoint}")
    say(f"data:  {dataset.describe()}")
    say(f"eval:  {setting}", flush=True)

    result = evaluate(model, loader, transform, device=info.device, tta=args.tta, amp=args.amp,
                      skip_bad=args.skip_bad, keep_predictions=bool(args.out), optimize=not args.no_optimize,
                      compile=args.compile, cuda_graph=args.cuda_graph, decode=decoder)
    if not info.is_main:
        return 0
    metrics_line = "  ".join(f"{k}: {v:.4f}" for k, v in result.metrics.items())
    print(metrics_line)
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s):")
        for path, why in result.skipped:
            print(f"  {path}: {why}")
    print(f"over {result.num_samples} of {result.num_images} images, {result.seconds:.1f} s "
          f"({result.images_per_second:.1f} images/s)")

    summary = {
        "config": str(args.config), "checkpoint": str(args.checkpoint), "model": C.model_name(cfg),
        "dataset": {"root": dataset.root, "source": dataset.source, "layout": dataset.layout,
                    "num_images": result.num_images, "num_classes": dataset.num_classes},
        "eval": {"resize": transform.preset.resize, "crop": transform.preset.crop,
                 "interpolation": transform.preset.interpolation, "mean": list(transform.preset.mean),
                 "std": list(transform.preset.std), "amp": args.amp, "tta": args.tta,
                 "world_size": info.world_size, "batch_size": batch_size},
        "num_samples": result.num_samples,
        "skipped": [{"path": p, "error": e} for p, e in result.skipped],
        "metrics": result.metrics,
    }
    if work_dir:
        _write_json(work_dir / f"test_{stamp}.json", summary)
        cfg.dump(work_dir / Path(args.config).name)
    if args.out:
        _write_json(Path(args.out), {**summary, "predictions": result.predictions})
        print(f"wrote {args.out}")
    return 0


def _write_json(path: Path, obj) -> None:
    from .._io import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    """``python tools/test.py CONFIG CHECKPOINT [options]``: the same command as ``cspnet test``."""
    import sys

    from . import main as cli_main

    return cli_main(["test", *(sys.argv[1:] if argv is None else argv)])
