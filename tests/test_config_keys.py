"""Every key the config schema accepts is honoured or refused: nothing is accepted and ignored.

Each leaf of ``cspnet.config.SCHEMA`` is set, on the real cspresnet50 recipe, to a value other than its default;
the resolved specs must show the value's effect, or loading/resolving must refuse it with a message. A ``Fixed``
key is checked with a value outside its allowed ones; a key inside a config-file ``Variable`` (``test_pipeline``)
with an override, which is refused. ``test_every_schema_key_has_a_case`` fails when a key is added without one.
``test_every_spec_field_is_read_below_config`` checks that the engine and data code read every setting the specs
carry, so an effect on a spec is an effect on a run.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import fnmatch
import logging
import re
from pathlib import Path
from typing import Any, Callable

import pytest

from cspnet import config as C
from cspnet.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "cspnet" / "cspresnet50_8xb32_in1k.py"
STEP = re.compile(r"^(.*?)\[\]<(\w+)>$")


def leaves(schema: Any = None, path: str = "", variable: bool = False) -> list[tuple[str, Any, bool]]:
    """``(leaf path, its schema, inside a Variable)``; list items as ``[]`` and typed dicts as ``[]<Type>``."""
    schema = C.SCHEMA if schema is None and not path else schema
    if isinstance(schema, C.Variable):
        return leaves(schema.schema, path, True)
    if isinstance(schema, C.Items):
        if isinstance(schema.schema, C.Typed):
            return [leaf for kind, sub in schema.schema.schemas.items()
                    for leaf in leaves(sub, f"{path}[]<{kind}>", variable)]
        return leaves(schema.schema, f"{path}[]", variable)
    if isinstance(schema, dict):
        return [leaf for k, v in schema.items() if k != "_delete_" for leaf in leaves(v, f"{path}.{k}".lstrip("."),
                                                                                     variable)]
    return [(path, schema, variable)]


def set_leaf(values: dict, path: str, value: Any) -> None:
    """Set ``path`` (as :func:`leaves` writes it) in ``values``; a missing list item of a type is appended."""
    node: Any = values
    parts = path.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        m = STEP.match(part)
        if m or part.endswith("[]"):
            key, kind = (m.group(1), m.group(2)) if m else (part[:-2], None)
            items = node.get(key)
            items = items if isinstance(items, list) else [items] if isinstance(items, dict) else []
            node[key] = items
            found = [it for it in items if kind is None or it.get("type") == kind]
            if not found:
                items.insert(len(items) - 1 if kind and items and items[-1].get("type") == "PackInputs" else len(items),
                             {"type": kind} if kind else {})
                found = [it for it in items if kind is None or it.get("type") == kind]
            node = found[0]
        elif last:
            node[part] = value
        else:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]


@dataclasses.dataclass
class Resolved:
    train: Any
    eval: Any
    said: str = ""  # what the resolution logged

    def error(self) -> str:
        return " | ".join(str(x) for x in (self.train, self.eval) if isinstance(x, Exception))


def resolve_with(settings: dict[str, Any]) -> Resolved:
    values = C.load_config(BASE).to_dict()
    for path, value in settings.items():
        set_leaf(values, path, copy.deepcopy(value))
    try:
        C.validate(values, C.SCHEMA, where="case")
    except ConfigError as e:
        return Resolved(e, e)
    cfg = C.Config(values, filename=str(BASE))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger, level = logging.getLogger("cspnet"), logging.getLogger("cspnet").level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    out = []
    try:
        for make in (C.train_spec, C.eval_spec):
            try:
                out.append(make(cfg))
            except ConfigError as e:
                out.append(e)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return Resolved(*out, said="\n".join(r.getMessage() for r in records))


def effect(check: Callable[[Any], bool], spec: str = "train") -> Callable[[Resolved, str], None]:
    def run(res: Resolved, leaf: str) -> None:
        got = getattr(res, spec)
        assert not isinstance(got, Exception), f"{leaf}: {got}"
        assert check(got), f"{leaf}: no effect on the {spec} spec"

    return run


def said(pattern: str) -> Callable[[Resolved, str], None]:
    def run(res: Resolved, leaf: str) -> None:
        assert re.search(pattern, res.said), f"{leaf}: expected a log line matching {pattern!r}, got {res.said!r}"

    return run


def same_as_default(res: Resolved, leaf: str) -> None:
    """An allowed value that means what the default means (both give the same pixels, the same counting)."""
    default = resolve_with({})
    for spec in ("train", "eval"):
        got, want = getattr(res, spec), getattr(default, spec)
        assert dataclasses.replace(got, source=None) == dataclasses.replace(want, source=None), leaf


def refused(pattern: str) -> Callable[[Resolved, str], None]:
    def run(res: Resolved, leaf: str) -> None:
        assert re.search(pattern, res.error()), f"{leaf}: expected a refusal matching {pattern!r}, got {res.error()!r}"

    return run


def on(leaf: str, spec: Any, attr: str) -> Any:
    """The loader or data spec of ``leaf``'s ``{train,val,test}_dataloader``."""
    which = leaf.split("_dataloader")[0]
    if which == "test":
        return getattr(spec, {"loader": "loader", "data": "data"}[attr])
    return getattr(spec, f"{which}_loader" if attr == "loader" else which)


def loader(field: str, value: Any, section: str) -> Callable[[Resolved, str], None]:
    spec = "eval" if section == "test" else "train"
    return effect(lambda s: getattr(on(f"{section}_dataloader", s, "loader"), field) == value, spec)


EVAL_ONLY = "apply to training only"
# (leaf pattern, value, extra settings, check); the first matching case covers a leaf
CASES: list[tuple[str, Any, dict, Callable[[Resolved, str], None]]] = [
    ("val_cfg.fp16", True, {}, effect(lambda s: s.val_fp16)),
    ("test_cfg.fp16", True, {}, effect(lambda s: s.fp16, "eval")),
    ("train_cfg.max_epochs", 7, {}, effect(lambda s: s.max_epochs == 7)),
    ("train_cfg.val_interval", 2, {}, effect(lambda s: s.val_interval == 2)),
    ("train_cfg.val_begin", 3, {}, effect(lambda s: s.val_begin == 3)),
    ("auto_scale_lr.enable", True, {}, effect(lambda s: s.auto_scale_lr)),
    ("auto_scale_lr.base_batch_size", 64, {}, effect(lambda s: s.base_batch_size == 64)),
    ("load_from", "w.pth", {}, effect(lambda s: s.load_from == "w.pth")),
    ("resume", True, {}, effect(lambda s: s.resume)),
    ("work_dir", "runs/x", {}, effect(lambda s: s.work_dir == "runs/x")),
    ("launcher", "pytorch", {}, effect(lambda s: s.launcher == "pytorch")),
    ("env_cfg.channels_last", True, {}, effect(lambda s: s.runtime.channels_last)),
    ("env_cfg.cudnn_benchmark", True, {}, effect(lambda s: s.runtime.cudnn_benchmark)),
    ("env_cfg.dist_cfg.backend", "gloo", {}, effect(lambda s: s.runtime.dist_backend == "gloo")),
    ("env_cfg.dist_cfg.timeout", 60, {}, effect(lambda s: s.runtime.dist_timeout == 60.0)),
    ("env_cfg.mp_cfg.mp_start_method", "spawn", {}, effect(lambda s: s.runtime.mp_start_method == "spawn")),
    ("randomness.seed", 3, {}, effect(lambda s: s.runtime.seed == 3)),
    ("randomness.deterministic", True, {}, effect(lambda s: s.runtime.deterministic)),
    ("randomness.diff_rank_seed", True, {}, effect(lambda s: s.runtime.diff_rank_seed)),
    ("sync_bn", "torch", {}, effect(lambda s: s.runtime.sync_bn)),
    ("log_level", "DEBUG", {}, effect(lambda s: s.runtime.log_level == "DEBUG")),
    ("default_hooks.logger.interval", 7, {}, effect(lambda s: s.runtime.log_interval == 7)),
    ("default_hooks.checkpoint.interval", 2, {}, effect(lambda s: s.checkpoints.interval == 2)),
    ("default_hooks.checkpoint.max_keep_ckpts", 2, {}, effect(lambda s: s.checkpoints.max_keep == 2)),
    ("default_hooks.checkpoint.save_best", False, {}, effect(lambda s: not s.checkpoints.best)),
    ("default_hooks.checkpoint.save_last", False, {}, effect(lambda s: not s.checkpoints.last)),
    ("default_hooks.checkpoint.save_optimizer", False, {}, effect(lambda s: not s.checkpoints.optimizer)),
    # the model
    ("model.backbone.type", "CSPDarkNet", {}, refused(r"type='CSPDarkNet' depth=50 is not a CSPNet")),  # + Fixed
    ("model.backbone.depth", 101, {}, refused(r"depth=101 is not a CSPNet")),
    ("model.backbone.in_channels", 4, {}, effect(lambda s: s.model.backbone.in_chans == 4)),
    ("model.backbone.out_indices", [1, 2], {}, effect(lambda s: s.model.backbone.out_indices == (1, 2))),
    ("model.backbone.frozen_stages", 1, {}, effect(lambda s: s.model.backbone.frozen_stages == 1)),
    ("model.backbone.norm_eval", True, {}, effect(lambda s: s.model.backbone.norm_eval)),
    ("model.backbone.drop_path_rate", 0.1, {}, effect(lambda s: s.model.backbone.drop_path_rate == 0.1)),
    ("model.backbone.zero_init_last", False, {}, effect(lambda s: s.model.backbone.zero_init_last is False)),
    ("model.head.num_classes", 7, {}, effect(lambda s: s.model.num_classes == 7)),
    ("model.head.in_channels", 99, {}, refused("in_channels=99 but cspresnet50 outputs 1024")),
    ("model.head.topk", [1, 3], {"model.head.cal_acc": True}, effect(lambda s: s.loss.topk == (1, 3))),
    ("model.head.cal_acc", True, {}, effect(lambda s: s.loss.topk == (1, 5))),
    ("model.head.dropout", 0.2, {}, effect(lambda s: s.model.drop_rate == 0.2)),
    ("model.head.loss.type", "LabelSmoothLoss", {}, effect(lambda s: s.loss.label_smooth == 0.1)),  # + Fixed
    ("model.head.loss.loss_weight", 2, {}, effect(lambda s: s.loss.weight == 2.0)),
    ("model.head.loss.label_smooth_val", 0.2, {"model.head.loss.type": "LabelSmoothLoss"},
     effect(lambda s: s.loss.label_smooth == 0.2)),
    ("model.head.loss.reduction", "sum", {}, effect(lambda s: s.loss.reduction == "sum")),
    ("model.head.loss.class_weight", [1, 3], {"model.head.num_classes": 2},
     effect(lambda s: s.loss.class_weight == (1.0, 3.0))),
    ("model.head.loss.num_classes", 7, {}, refused(r"loss.num_classes=7 but model.head.num_classes=1000")),
    ("*data_preprocessor.mean", [1, 2, 3], {}, effect(lambda s: s.model.eval.mean == (1.0, 2.0, 3.0), "eval")),
    ("*data_preprocessor.std", [1, 2, 3], {}, effect(lambda s: s.model.eval.std == (1.0, 2.0, 3.0), "eval")),
    ("*data_preprocessor.to_rgb", False, {}, refused("to_rgb=False")),
    # mmpretrain sizes Mixup's one-hot labels by it; the head decides the class count, and a difference is said
    ("*data_preprocessor.num_classes", 7, {}, said(r"data_preprocessor.num_classes=7 differs from model.head.num_cl")),
    # Mixup/CutMix, in mmpretrain 1.x's place (model.train_cfg) or 1.0rc's (data_preprocessor.batch_augments)
    ("*augments[]<*>.type", "ResizeMix", {}, refused(r"type='ResizeMix' is not supported")),
    ("*augments[]<Mixup>.alpha", 0.4, {}, effect(lambda s: s.mix.augments == (("Mixup", 0.4),))),
    ("*augments[]<CutMix>.alpha", 0.4, {}, effect(lambda s: s.mix.augments == (("CutMix", 0.4),))),
    *[(f"{where}.probs", [0.5], {f"{where}.augments": [{"type": "Mixup", "alpha": 0.8}]},
       effect(lambda s: s.mix.probs == (0.5,)))
      for where in ("model.train_cfg", "model.data_preprocessor.batch_augments", "data_preprocessor.batch_augments")],
    # data and loaders
    ("data_root", "/d", {}, effect(lambda s: s.train.root == s.val.root == "/d")),
    ("*_dataloader.batch_size", 8, {}, None),
    ("*_dataloader.num_workers", 1, {}, None),
    ("*_dataloader.persistent_workers", False, {}, None),
    ("*_dataloader.pin_memory", True, {}, None),
    ("*_dataloader.prefetch_factor", 3, {}, None),
    ("train_dataloader.drop_last", True, {}, loader("drop_last", True, "train")),
    ("train_dataloader.sampler.shuffle", False, {}, loader("shuffle", False, "train")),
    ("train_dataloader.sampler.seed", 5, {}, loader("seed", 5, "train")),
    ("*_dataloader.drop_last", True, {}, refused(EVAL_ONLY)),
    ("*_dataloader.sampler.shuffle", True, {}, refused(EVAL_ONLY)),
    ("*_dataloader.sampler.seed", 5, {}, refused(EVAL_ONLY)),
    ("*_dataloader.dataset.type", "CustomDataset", {}, None),
    ("*_dataloader.dataset.data_root", "/d", {}, None),
    ("*_dataloader.dataset.split", "holdout", {}, None),
    ("*_dataloader.dataset.data_prefix", "imgs", {}, None),
    ("*_dataloader.dataset.ann_file", "ann.txt", {}, None),
    ("*_dataloader.dataset.indices", 3, {}, None),
    ("*_dataloader.dataset.classes", ["a", "b"], {"*_dataloader.dataset.type": "CustomDataset"}, None),
    ("*_dataloader.dataset.metainfo.classes", ["a", "b"], {"*_dataloader.dataset.type": "CustomDataset"}, None),
    # pipelines: what each kind of pipeline runs, and the steps it does not
    ("*pipeline[]<*>.type", "Resize", {}, refused(r"type='Resize' is not supported")),
    ("train_dataloader.dataset.pipeline[]<RandomResizedCrop>.scale", 64, {}, effect(lambda s: s.augment.crop == 64)),
    ("train_dataloader.dataset.pipeline[]<RandomResizedCrop>.crop_ratio_range", [0.5, 1], {},
     effect(lambda s: s.augment.scale == (0.5, 1.0))),
    ("train_dataloader.dataset.pipeline[]<RandomResizedCrop>.aspect_ratio_range", [0.5, 2], {},
     effect(lambda s: s.augment.ratio == (0.5, 2.0))),
    ("train_dataloader.dataset.pipeline[]<RandomResizedCrop>.max_attempts", 3, {},
     effect(lambda s: s.augment.max_attempts == 3)),
    ("train_dataloader.dataset.pipeline[]<RandomResizedCrop>.interpolation", "lanczos", {},
     effect(lambda s: s.augment.interpolation == "lanczos")),
    ("train_dataloader.dataset.pipeline[]<RandomFlip>.prob", 0.2, {}, effect(lambda s: s.augment.flip_prob == 0.2)),
    ("train_dataloader.dataset.pipeline[]<RandAugment>.policies", "rand-m5-n3-mstd0.5-inc1", {},
     effect(lambda s: (s.augment.rand_augment.magnitude, s.augment.rand_augment.num_ops) == (5, 3))),
    *[(f"train_dataloader.dataset.pipeline[]<RandAugment>.{key}", value,
       {"train_dataloader.dataset.pipeline[]<RandAugment>.policies": "timm_increasing"},
       effect(lambda s, f=field, w=want: getattr(s.augment.rand_augment, f) == w))
      for key, value, field, want in [("num_policies", 3, "num_ops", 3), ("magnitude_level", 5, "magnitude", 5),
                                      ("total_level", 20, "magnitude", 4.5), ("magnitude_std", "inf",
                                                                              "magnitude_std", float("inf")),
                                      ("hparams.pad_val", [1, 2, 3], "fill", (3, 2, 1)),
                                      ("hparams.interpolation", "bilinear", "interpolation", "bilinear")]],
    *[(f"train_dataloader.dataset.pipeline[]<RandomErasing>.{key}", value, {},
       effect(lambda s, f=key, w=want: getattr(s.augment.erasing, f) == w))
      for key, value, want in [("erase_prob", 0.3, 0.3), ("min_area_ratio", 0.1, 0.1), ("max_area_ratio", 0.2, 0.2),
                               ("aspect_range", [0.5, 2], (0.5, 2)), ("mode", "rand", "rand"),
                               ("fill_color", [1, 2, 3], (3.0, 2.0, 1.0)), ("fill_std", [1, 2, 3], (3.0, 2.0, 1.0))]],
    ("*_dataloader.dataset.pipeline[]<RandAugment>.*", 3, {}, refused("not supported in an eval pipeline")),
    ("*_dataloader.dataset.pipeline[]<RandomErasing>.*", 0.3, {}, refused("not supported in an eval pipeline")),
    ("train_dataloader.dataset.pipeline[]<ResizeEdge>.*", 64, {}, refused("not supported in a train pipeline|only")),
    ("train_dataloader.dataset.pipeline[]<CenterCrop>.*", 64, {}, refused("not supported in a train pipeline")),
    ("*_dataloader.dataset.pipeline[]<ResizeEdge>.scale", 300, {}, None),
    ("*_dataloader.dataset.pipeline[]<ResizeEdge>.interpolation", "lanczos", {}, None),
    ("*_dataloader.dataset.pipeline[]<CenterCrop>.crop_size", 200, {}, None),
    ("*_dataloader.dataset.pipeline[]<RandomResizedCrop>.*", 64, {}, refused("not supported in an eval pipeline|only")),
    ("*.backend", "cv2", {}, said("resizing with Pillow instead")),
    ("*<LoadImageFromFile>.imdecode_backend", "pillow", {}, same_as_default),  # the same libjpeg-turbo pixels
    ("*_dataloader.dataset.pipeline[]<RandomFlip>.*", 0.5, {}, refused("not supported in an eval pipeline")),
    # metrics
    ("*_evaluator[].thrs", 0.0, {}, same_as_default),  # mmpretrain's threshold 0: a label in the top k with a score
    ("val_evaluator[].topk", [1, 3], {}, effect(lambda s: s.val_metrics.topk == (1, 3))),
    ("val_evaluator[].prefix", "acc", {}, effect(lambda s: s.val_metrics.prefix == "acc")),
    ("test_evaluator[].topk", [1, 3], {}, effect(lambda s: s.metrics.topk == (1, 3), "eval")),
    ("test_evaluator[].prefix", "acc", {}, effect(lambda s: s.metrics.prefix == "acc", "eval")),
    # the optimizer and the schedule
    ("optim_wrapper.optimizer.lr", 0.5, {}, effect(lambda s: s.optim.lr == 0.5)),
    ("optim_wrapper.optimizer.weight_decay", 0.1, {}, effect(lambda s: s.optim.weight_decay == 0.1)),
    ("optim_wrapper.optimizer.type", "AdamW", {"optim_wrapper.optimizer.momentum": None},
     effect(lambda s: s.optim.kind == "AdamW")),
    ("optim_wrapper.optimizer.momentum", 0.5, {}, effect(lambda s: ("momentum", 0.5) in s.optim.args)),
    ("optim_wrapper.optimizer.nesterov", True, {}, effect(lambda s: ("nesterov", True) in s.optim.args)),
    ("optim_wrapper.optimizer.dampening", 0.1, {}, effect(lambda s: ("dampening", 0.1) in s.optim.args)),
    ("optim_wrapper.optimizer.betas", [0.8, 0.9], {"optim_wrapper.optimizer.type": "AdamW",
                                                    "optim_wrapper.optimizer.momentum": None},
     effect(lambda s: ("betas", (0.8, 0.9)) in s.optim.args)),
    ("optim_wrapper.optimizer.eps", 1e-6, {"optim_wrapper.optimizer.type": "AdamW",
                                           "optim_wrapper.optimizer.momentum": None},
     effect(lambda s: ("eps", 1e-6) in s.optim.args)),
    ("optim_wrapper.optimizer.alpha", 0.9, {"optim_wrapper.optimizer.type": "RMSprop"},
     effect(lambda s: ("alpha", 0.9) in s.optim.args)),
    ("optim_wrapper.optimizer.centered", True, {"optim_wrapper.optimizer.type": "RMSprop"},
     effect(lambda s: ("centered", True) in s.optim.args)),
    *[(f"optim_wrapper.optimizer.{key}", value, {"optim_wrapper.optimizer.type": "RMSpropTF",
                                                  "optim_wrapper.optimizer.nesterov": None},
       effect(lambda s, k=key, v=value: (k, v) in s.optim.args))
      for key, value in [("decoupled_decay", True), ("lr_in_momentum", False)]],
    ("optim_wrapper.paramwise_cfg.norm_decay_mult", 0, {}, effect(lambda s: s.optim.norm_decay_mult == 0.0)),
    ("optim_wrapper.paramwise_cfg.bias_decay_mult", 0, {}, effect(lambda s: s.optim.bias_decay_mult == 0.0)),
    ("optim_wrapper.loss_scale", 512.0, {}, effect(lambda s: s.optim.loss_scale == 512.0)),
    ("optim_wrapper.accumulative_counts", 2, {}, effect(lambda s: s.optim.accumulate == 2)),
    ("optim_wrapper.type", "AmpOptimWrapper", {}, effect(lambda s: s.optim.amp == "auto")),
    ("optim_wrapper.clip_grad", {"max_norm": 2.0}, {}, effect(lambda s: s.optim.clip == ("norm", 2.0, 2.0))),
    ("optim_wrapper.dtype", "bfloat16", {}, refused("with type='AmpOptimWrapper'")),
    ("param_scheduler[]<*>.by_epoch", False, {}, effect(lambda s: not s.schedule[0].by_epoch)),
    ("param_scheduler[]<*>.begin", 2, {}, effect(lambda s: s.schedule[0].begin == 2)),
    ("param_scheduler[]<CosineAnnealingLR>.end", 40, {}, effect(lambda s: s.schedule[0].t_max == 40)),
    ("param_scheduler[]<*>.end", 40, {}, effect(lambda s: s.schedule[0].end == 40)),
    ("param_scheduler[]<*>.convert_to_iter_based", True, {}, effect(lambda s: s.schedule[0].per_iter)),
    ("param_scheduler[]<*>.start_factor", 0.5, {}, effect(lambda s: s.schedule[0].start == 0.5)),
    ("param_scheduler[]<*>.factor", 0.5, {}, effect(lambda s: s.schedule[0].start == 0.5)),
    ("param_scheduler[]<*>.end_factor", 0.5, {}, effect(lambda s: s.schedule[0].stop == 0.5)),
    ("param_scheduler[]<*>.milestones", [5], {}, effect(lambda s: s.schedule[0].steps == (5,))),
    ("param_scheduler[]<*>.step_size", 5, {}, effect(lambda s: s.schedule[0].steps == (5,))),
    ("param_scheduler[]<*>.gamma", 0.5, {}, effect(lambda s: s.schedule[0].gamma == 0.5)),
    ("param_scheduler[]<*>.T_max", 5, {}, effect(lambda s: s.schedule[0].t_max == 5)),
    ("param_scheduler[]<*>.eta_min", 0.01, {}, effect(lambda s: s.schedule[0].eta_min == 0.01)),
    ("param_scheduler[]<*>.eta_min_ratio", 0.01, {}, effect(lambda s: s.schedule[0].eta_min_ratio == 0.01)),
    ("param_scheduler[]<*>.type", "OneCycleLR", {}, refused("type='OneCycleLR' is not supported")),
    ("visualizer.vis_backends[].type", "TensorboardVisBackend", {}, effect(lambda s: s.runtime.tensorboard)),
    # EMA
    ("custom_hooks[]<EMAHook>.type", "SyncBuffersHook", {}, refused("type='SyncBuffersHook' is not supported")),
    ("custom_hooks[]<EMAHook>.momentum", 0.01, {}, effect(lambda s: s.ema.momentum == 0.01)),
    ("custom_hooks[]<EMAHook>.interval", 2, {}, effect(lambda s: s.ema.interval == 2)),
    ("custom_hooks[]<EMAHook>.update_buffers", True, {}, effect(lambda s: s.ema.update_buffers)),
    ("custom_hooks[]<EMAHook>.begin_iter", 5, {}, effect(lambda s: s.ema.begin_iter == 5)),
    ("custom_hooks[]<EMAHook>.begin_epoch", 5, {}, effect(lambda s: s.ema.begin_epoch == 5)),
    ("custom_hooks[]<EMAHook>.evaluate_on_ema", False, {}, effect(lambda s: not s.ema.evaluate_on_ema)),
    ("custom_hooks[]<EMAHook>.evaluate_on_origin", False, {}, effect(lambda s: not s.ema.evaluate_on_origin)),
]
_PER_SECTION = {  # the effect of a "*_dataloader" case, per section: (spec attribute, expected value)
    "batch_size": ("loader", "batch_size", 8), "num_workers": ("loader", "num_workers", 1),
    "persistent_workers": ("loader", "persistent_workers", False), "pin_memory": ("loader", "pin_memory", True),
    "prefetch_factor": ("loader", "prefetch_factor", 3), "dataset.type": ("data", "kind", "CustomDataset"),
    "dataset.data_root": ("data", "root", "/d"), "dataset.split": ("data", "split", "holdout"),
    "dataset.data_prefix": ("data", "data_prefix", "imgs"), "dataset.ann_file": ("data", "ann_file", "ann.txt"),
    "dataset.indices": ("data", "indices", 3), "dataset.classes": ("data", "classes", ("a", "b")),
    "dataset.metainfo.classes": ("data", "classes", ("a", "b")),
}
_EVAL_PIPELINE = {"ResizeEdge>.scale": ("resize", 300), "ResizeEdge>.interpolation": ("interpolation", "lanczos"),
                  "CenterCrop>.crop_size": ("crop", 200)}


def case_of(leaf: str) -> tuple[Any, dict, Callable[[Resolved, str], None]] | None:
    for pattern, value, extra, check in CASES:
        if fnmatch.fnmatchcase(leaf, pattern):
            section = leaf.split("_dataloader")[0]
            extra = {k.replace("*_dataloader", f"{section}_dataloader").replace("*data_preprocessor",
                     leaf.split("data_preprocessor")[0] + "data_preprocessor"): v for k, v in extra.items()}
            if check is None and (key := leaf.split("_dataloader.", 1)[1]) in _PER_SECTION:
                attr, field, want = _PER_SECTION[key]
                spec = "eval" if section == "test" else "train"
                check = effect(lambda s, a=attr, f=field, w=want: getattr(on(leaf, s, a), f) == w, spec)
            elif check is None:
                field, want = next(v for k, v in _EVAL_PIPELINE.items() if leaf.endswith(k))
                check = effect(lambda s, f=field, w=want: getattr(s.model.eval, f) == w,
                               "eval" if section == "test" else "train")
            return value, extra, check
    return None


def ordinary_leaves() -> list[str]:
    """The leaves that take more than one value: each value other than the default has a case."""
    return [path for path, schema, variable in leaves()
            if not variable and not (isinstance(schema, C.Fixed) and len(schema.values) == 1)]


def test_every_schema_key_has_a_case():
    missing = [leaf for leaf in ordinary_leaves() if case_of(leaf) is None]
    assert not missing, f"keys accepted without a test of their effect or refusal: {missing}"


@pytest.mark.parametrize("leaf", ordinary_leaves())
def test_each_key_is_honoured_or_refused(leaf):
    value, extra, check = case_of(leaf)
    settings = dict(extra)
    if "param_scheduler" in leaf:  # one scheduler of the leaf's type, alone, with what it needs
        kind = STEP.match(leaf.split(".")[0]).group(2)
        needs = {"LinearLR": {"end": 10}, "ConstantLR": {"end": 10}, "StepLR": {"step_size": 2},
                 "CosineAnnealingLR": {"end": 10}}.get(kind, {})
        settings = {"param_scheduler": [{"type": kind, **needs}], **settings}
    settings[leaf] = value
    if leaf.startswith("custom_hooks") and not leaf.endswith(".type"):
        settings = {"custom_hooks": [{"type": "EMAHook"}], **settings}
    check(resolve_with(settings), leaf)


@pytest.mark.parametrize("leaf", [path for path, schema, _ in leaves() if isinstance(schema, C.Fixed)])
def test_fixed_keys_refuse_other_values(leaf):
    schema = dict((p, s) for p, s, _ in leaves())[leaf]
    values = C.load_config(BASE).to_dict()
    set_leaf(values, leaf, "not-an-allowed-value")
    with pytest.raises(ConfigError, match=r"is not supported \(only .*\): " + re.escape(schema.why)):
        C.validate(values, C.SCHEMA, where="case")


@pytest.mark.parametrize("name", [path.split(".")[0].split("[")[0] for path, _, variable in leaves() if variable])
def test_variables_refuse_overrides(name, tmp_path):
    with pytest.raises(ConfigError, match=f"{name} is a variable of the config file"):
        C.load_config(BASE, [f"{name}=x"])


def _attributes_read(folders: list[Path]) -> set[str]:
    names = set()
    for folder in folders:
        for path in (folder.rglob("*.py") if folder.is_dir() else [folder]):
            names |= {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
    return names


def test_every_spec_field_is_read_below_config():
    src = REPO / "src" / "cspnet"
    read = _attributes_read([src / "engine", src / "data", src / "cli", src / "spec.py", src / "zoo.py"])
    specs = [C.LoaderSpec, C.OptimSpec, C.Scheduler, C.LossSpec, C.EmaSpec, C.CheckpointPolicy, C.RuntimeSpec,
             C.TrainSpec, C.EvalSpec, C.Metrics]
    unread = [f"{cls.__name__}.{f.name}" for cls in specs for f in dataclasses.fields(cls) if f.name not in read]
    assert not unread, f"spec fields no engine or data code reads: {unread}"
