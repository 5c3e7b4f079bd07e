"""``cspnet train`` = ``python tools/train.py``: train or fine-tune from a config (mmpretrain's arguments).

One process: ``cspnet train CONFIG``. DDP: ``torchrun --nproc-per-node N tools/train.py CONFIG --launcher pytorch``
(``--nnodes M --node-rank R --master-addr HOST`` for several machines). Only rank 0 writes the log and checkpoints,
into the run's own folder of ``--work-dir`` (default ``work_dirs/<config name>``). Exit status: 0 done, 2 bad input
or a NaN loss, 128 + signal number after SIGTERM/Ctrl-C (a checkpoint was written first; ``--resume`` continues
from it).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from . import add_cfg_options, add_launcher_arguments, add_source_arguments, use_local_rank, where

HELP = "train or fine-tune a model from a config (one process, or DDP under torchrun), like mmpretrain's tools/train.py"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="config file, e.g. configs/cspnet/cspresnet50_finetune_custom.py")
    p.add_argument("--work-dir", metavar="DIR", help="each run writes into its own folder DIR/<YYYYmmdd_HHMMSS> "
                                                     "(default DIR: the config's work_dir, else work_dirs/<config "
                                                     "name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue a run exactly where it stopped, in its folder: from CHECKPOINT, or with no value "
                        "from the newest run in the work dir that has a checkpoint (a new run if none has)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision (optim_wrapper.type='AmpOptimWrapper'): fp16 + loss scaling on GPUs, "
                        "bf16 on CPUs; set optim_wrapper.dtype=bfloat16 for bf16 on GPUs")
    add_cfg_options(p, "train_dataloader.batch_size=64 optim_wrapper.optimizer.lr=0.01")
    add_launcher_arguments(p)
    p.add_argument("--no-validate", action="store_true", help="do not evaluate during training")
    p.add_argument("--auto-scale-lr", action="store_true",
                   help="scale the lr linearly by (total batch) / auto_scale_lr.base_batch_size, as mmpretrain")
    p.add_argument("--seed", type=int, default=None, help="random seed (randomness.seed); default: the config's, "
                                                          "else a random one (recorded in the checkpoints)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (randomness.deterministic): reproducible, somewhat slower")
    add_source_arguments(p, training=True)


def spec_from_args(args: argparse.Namespace):
    """The :class:`~cspnet.config.TrainSpec` of the config with the command-line switches applied as overrides, so
    that the resolved config a run saves records them (as mmpretrain's tools/train.py does)."""
    from ..config import load_config, parse_cfg_options, train_spec

    switches = {"optim_wrapper.type": "AmpOptimWrapper" if args.amp else None,  # None: the switch is not given
                "auto_scale_lr.enable": args.auto_scale_lr or None, "randomness.seed": args.seed,
                "randomness.deterministic": args.deterministic or None, "work_dir": args.work_dir,
                "launcher": None if args.launcher == "none" else args.launcher}
    options = {**parse_cfg_options(args.cfg_options), **{k: v for k, v in switches.items() if v is not None}}
    cfg = load_config(args.config, options)
    if not cfg.get("work_dir"):
        cfg["work_dir"] = str(Path("work_dirs") / Path(args.config).stem)
    return train_spec(cfg, validate=not args.no_validate)


def resume_path(args: argparse.Namespace, spec) -> Path | None:
    """``--resume CKPT``, ``--resume`` (latest in the work dir) or the config's ``resume=True`` (+ ``load_from``)."""
    from ..workdirs import find_latest

    if args.resume not in (None, "auto"):
        return Path(args.resume)
    if args.resume == "auto" or spec.resume:
        if args.resume is None and isinstance(spec.load_from, str):
            return Path(spec.load_from)  # mmengine: resume=True resumes from load_from when it is set
        latest = find_latest(spec.work_dir)
        if latest is None:
            logging.getLogger("cspnet").warning("--resume: no checkpoint in %s; starting a new run", spec.work_dir)
        return latest
    return None


def run(args: argparse.Namespace) -> int:
    from ..engine.train import Interrupted, fit

    use_local_rank(args)
    spec = spec_from_args(args)
    try:
        result = fit(spec, spec.work_dir, resume_from=resume_path(args, spec), **where(args))
    except Interrupted as e:
        print(f"cspnet train: {e}; continue with --resume", flush=True)
        return e.exit_code
    if result["best_top1"] is not None:
        print(f"best {result['best_metric']} {result['best_top1']:.3f} at epoch {result['best_epoch']}; checkpoints in "
              f"{result['work_dir']}", flush=True)
    return 0
