"""From an mmpretrain-shaped config to typed, frozen specs, made once, at the edge: :func:`eval_spec` (what
``cspnet test`` runs) and :func:`train_spec` (``cspnet train``) each read only the sections their command uses, so
a training-only setting never blocks an evaluation. Nothing below this package sees a config dict.

A plain setting is a spec field that declares its key and check (:func:`setting`): one declaration is its schema and
its reader. Structured sections (the model, pipelines, optimizer, schedule, hooks) are read by a function beside
their schema. Every key :data:`SCHEMA` accepts is honoured, or refused with a message at a value this library
cannot honour (``tests/test_config_keys.py`` checks each). Defaults are mmpretrain's and mmengine's.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .._io import atomic_write
from ..data.classes import imagenet_classes
from ..data.datasets import IMAGENET_KINDS, DataSpec
from ..data.mixing import BatchMix, RandomErasing
from ..data.presets import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, MAX_SIDE, EvalPreset
from ..data.randaugment import RandAugment, from_mmpretrain, parse_timm
from ..data.train_transforms import TrainPipeline
from ..errors import ConfigError
from ..models.cspnet import ARCHS
from ..spec import BackboneOptions, ModelSpec
from .load import ANY, Config, Fixed, Items, Typed, Variable
from .load import validate as validate_keys

log = logging.getLogger("cspnet")
Check = Callable[[Any, str], Any]  # (value, its dotted key) -> the value, converted; or a ConfigError


# --- Settings: typed values, each read from its key ----------------------------------------------------------------
def _kind(name: str, ok: Callable[[Any], bool], convert: Callable[[Any], Any] = lambda v: v) -> Check:
    def check(value: Any, where: str) -> Any:
        if not ok(value):
            raise ConfigError(f"{where}={value!r:.100}: expected {name}")
        return convert(value)

    return check


def _is_int(v: Any, least: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (least is None or v >= least)


def integer(least: int | None = None) -> Check:
    return _kind(f"an integer >= {least}" if least is not None else "an integer", lambda v: _is_int(v, least))


def number(ok: Callable[[float], bool] = lambda v: True, name: str = "a finite number") -> Check:
    """A finite number (``nan``/``inf`` would only show up later, as a NaN loss or all-zero images) passing ``ok``."""
    return _kind(name, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                 and ok(v), float)


# NumPy seeds its legacy generator from 32 bits and torch.manual_seed takes 64: mmengine draws seeds below 2**32
_SEED = _kind("an integer from 0 to 2**32 - 1", lambda v: _is_int(v, 0) and v < 2**32)


def choice(*values: str) -> Check:
    return _kind(" or ".join(map(repr, values)), lambda v: v in values)


def _one_or_many(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def ints(least: int = 1) -> Check:
    """One integer or several, as a tuple."""
    return _kind(f"integers >= {least}", lambda v: all(_is_int(k, least) for k in _one_or_many(v)), _one_or_many)


boolean = _kind("True or False", lambda v: isinstance(v, bool))
text = _kind("a string", lambda v: isinstance(v, str))


def setting(key: str, default: Any, check: Check) -> Any:
    """A spec field read from ``key`` (dotted, below the section the spec is read from), checked by ``check``;
    absent or None: ``default``."""
    return field(default=default, metadata={"key": key, "check": check})


def _lookup(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def read(cls: type, section: Mapping | None, where: str, **given: Any) -> Any:
    """``cls`` with each :func:`setting` field read from ``section`` (named ``where`` in errors) and ``given``."""
    values = dict(given)
    for f in dataclasses.fields(cls):
        if "key" in f.metadata and f.name not in given:
            raw = _lookup(section, f.metadata["key"])
            values[f.name] = f.default if raw is None else f.metadata["check"](raw, f"{where}{f.metadata['key']}")
    return cls(**values)


def keys(cls: type) -> dict[str, Any]:
    """The schema of :func:`setting` fields: ``{'sampler': {'shuffle': ANY}, ...}``."""
    schema: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if "key" in f.metadata:
            *parents, last = f.metadata["key"].split(".")
            node = schema
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = ANY
    return schema


def join(*schemas: Mapping[str, Any]) -> dict[str, Any]:
    """The union of schemas: nested dicts merged key by key (``_delete_`` is a key here, not an instruction)."""
    out: dict[str, Any] = {}
    for schema in schemas:
        for k, v in schema.items():
            out[k] = join(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _value(section: Mapping | None, key: str, where: str, default: Any, check: Check) -> Any:
    raw = (section or {}).get(key)
    return default if raw is None else check(raw, f"{where}.{key}")


def _section(cfg: Mapping, dotted: str) -> Mapping:
    node = _lookup(cfg, dotted)
    if node is not None and not isinstance(node, Mapping):
        raise ConfigError(f"config {_name(cfg)}: {dotted} must be a dict, got {node!r:.80}")
    return node or {}


def _name(cfg: Mapping) -> str:
    return repr(getattr(cfg, "filename", None) or "<dict>")


_COMMON = {"type": ANY, "_delete_": ANY}


def _type(*kinds: str, why: str) -> dict[str, Any]:
    """The keys every section has: its ``type`` (one of ``kinds``) and ``_delete_``."""
    return {"type": Fixed(kinds, why), "_delete_": ANY}

_INIT = Fixed((None,), "weights come from load_from (or tools/test.py's CHECKPOINT), not init_cfg")
_MIXING = {"augments": Items(Typed({"Mixup": {"type": ANY, "alpha": ANY}, "CutMix": {"type": ANY, "alpha": ANY}})),
           "probs": ANY}  # model.train_cfg or data_preprocessor.batch_augments: read by batch_mix


# --- The model: ModelSpec ------------------------------------------------------------------------------------------
BACKBONES: dict[tuple[str, int], str] = {  # mmpretrain backbone (type, depth) -> architecture
    ("CSPDarkNet", 53): "cspdarknet53",
    ("CSPResNet", 50): "cspresnet50",
    ("CSPResNeXt", 50): "cspresnext50",
}
_BACKBONE = {"in_chans": ("in_channels", integer(1)), "out_indices": ("out_indices", ints(-99)),
             "frozen_stages": ("frozen_stages", integer(-1)), "norm_eval": ("norm_eval", boolean),
             "drop_path_rate": ("drop_path_rate", number()), "zero_init_last": ("zero_init_last", boolean)}
_PREPROCESSOR = {**_type("ClsDataPreprocessor", why="cspnet normalises batches itself"), "num_classes": ANY,
                 "mean": ANY, "std": ANY, "to_rgb": ANY, "batch_augments": _MIXING,
                 "pad_size_divisor": Fixed((1,), "eval crops are square and of one size: nothing to pad"),
                 "pad_value": Fixed((0,), "nothing is padded")}
_LOSS = {**_type("CrossEntropyLoss", "LabelSmoothLoss", why="softmax cross-entropy, with or without label smoothing"),
         "loss_weight": ANY, "label_smooth_val": ANY, "reduction": ANY, "class_weight": ANY, "num_classes": ANY,
         "mode": Fixed(("original",), "only the original label smoothing"),
         "use_sigmoid": Fixed((False,), "softmax cross-entropy only"), "use_soft": Fixed((False,), "hard labels only")}
_MODEL = {
    **_type("ImageClassifier", why="cspnet builds classifiers (and their backbones)"),
    "backbone": {**_type(*{t for t, _ in BACKBONES}, why="cspnet builds the CSPNets"), "depth": ANY, "init_cfg": _INIT,
                 **{key: ANY for key, _ in _BACKBONE.values()}},
    "neck": {**_type("GlobalAveragePooling", why="the classifier pools globally"),
             "dim": Fixed((2,), "global average pooling of 2-d maps")},
    "head": {**_type("LinearClsHead", why="the classifier's head is linear"), "num_classes": ANY, "in_channels": ANY,
             "topk": ANY, "cal_acc": ANY, "dropout": ANY, "init_cfg": _INIT, "loss": _LOSS},
    "data_preprocessor": _PREPROCESSOR,
    "train_cfg": _MIXING,
    "init_cfg": _INIT,
    "pretrained": Fixed((None,), "set load_from to start from weights"),
}


def _normalization(cfg: Mapping) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # As mmpretrain's get_model: the model's own data_preprocessor wins over the top-level one.
    pre = _section(cfg, "model.data_preprocessor") or _section(cfg, "data_preprocessor")
    if pre.get("to_rgb", True) is not True:
        raise ConfigError(f"config {_name(cfg)}: data_preprocessor.to_rgb={pre['to_rgb']!r} (BGR input) is not "
                          f"supported: images are decoded as RGB; set to_rgb=True and give mean/std in RGB order")
    three = _kind("3 finite numbers", lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(
        isinstance(x, (int, float)) and math.isfinite(x) for x in v), lambda v: tuple(float(x) for x in v))
    mean = _value(pre, "mean", "data_preprocessor", IMAGENET_MEAN, three)
    std = _value(pre, "std", "data_preprocessor", IMAGENET_STD, three)
    if min(std) <= 0:
        raise ConfigError(f"config {_name(cfg)}: data_preprocessor.std={pre['std']} must be positive")
    return mean, std


def head_width(cfg: Mapping) -> int | None:
    """``model.head.num_classes``, or None when the config leaves it to the data."""
    return _value(_section(cfg, "model.head"), "num_classes", f"config {_name(cfg)}: model.head", None, integer(0))


def model_spec(cfg: Mapping, pipeline: str = "test", classes_from: str | None = "test") -> ModelSpec:
    """The :class:`~cspnet.spec.ModelSpec` of ``cfg.model``; its eval preprocessing is ``{pipeline}_dataloader``'s,
    its class names those of ``{classes_from}_dataloader``, which also gives the head its width when
    ``model.head.num_classes`` is unset (None; ``classes_from=None``: no dataset is read, and an unset head is
    headless, for callers whose checkpoint brings the head)."""
    where = f"config {_name(cfg)}: model"
    bb, head = _section(cfg, "model.backbone"), _section(cfg, "model.head")
    arch = BACKBONES.get((bb.get("type"), bb.get("depth")))
    if arch is None:
        known = ", ".join(f"type={t!r} depth={d}" for t, d in BACKBONES)
        raise ConfigError(f"{where}.backbone type={bb.get('type')!r} depth={bb.get('depth')!r} is not a CSPNet "
                          f"this library builds; known: {known}")
    num_classes = head_width(cfg)
    classes = _classes(cfg, classes_from) if classes_from else None
    if num_classes is None:  # unset: the dataset's classes (a folder per class: its folder names)
        classes = tuple(data_spec(cfg, classes_from).class_names()) if classes_from else ()
        num_classes = len(classes)
    width = ARCHS[arch].stages()[-1].out_chs
    if head.get("in_channels") not in (None, width):
        raise ConfigError(f"{where}.head.in_channels={head['in_channels']} but {arch} outputs {width} channels")
    for pre in ("model.data_preprocessor", "data_preprocessor"):
        if _section(cfg, pre).get("num_classes") not in (None, num_classes):  # mmpretrain sizes Mixup's labels by it
            log.info("config %s: %s.num_classes=%s differs from model.head.num_classes=%d; the head decides (it "
                     "would size the one-hot labels of batch_augments, which cspnet does not implement)",
                     _name(cfg), pre, _section(cfg, pre)["num_classes"], num_classes)
    options = BackboneOptions(**{name: _value(bb, key, f"{where}.backbone", None, check)
                                 for name, (key, check) in _BACKBONE.items()})
    return ModelSpec(arch, eval_preset(cfg, pipeline), num_classes,
                     classes if classes is not None and len(classes) == num_classes else None,
                     _value(head, "dropout", f"{where}.head", 0.0, number(lambda v: 0 <= v < 1, "a rate in [0, 1)")),
                     options, name=Path(getattr(cfg, "filename", "") or arch).stem)


def _classes(cfg: Mapping, which: str) -> tuple[str, ...] | None:
    """Class names the config states: the dataset's ``classes`` (not a file), or ImageNet's."""
    data = data_spec(cfg, which)
    if data.kind in IMAGENET_KINDS:
        return imagenet_classes()
    return data.classes if isinstance(data.classes, tuple) else None


# --- Pipelines: EvalPreset (val/test) and TrainPipeline (train) ----------------------------------------------------
_RESIZE_BACKEND = Fixed(("pillow", "cv2"), "images are resized with Pillow; with 'cv2' a warning says so")
TRANSFORMS: dict[str, dict[str, Any]] = {  # the steps implemented, with the arguments of their mmcv namesakes
    "LoadImageFromFile": {"imdecode_backend": Fixed(("cv2", "pillow"), "images are decoded by Pillow (the same "
                                                    "libjpeg-turbo pixels as OpenCV)")},
    "ResizeEdge": {"scale": ANY, "edge": Fixed(("short",), "only the short edge is resized"),
                   "backend": _RESIZE_BACKEND, "interpolation": ANY},
    "CenterCrop": {"crop_size": ANY, "auto_pad": Fixed((False,), "crops are never padded")},
    "RandomResizedCrop": {"scale": ANY, "crop_ratio_range": ANY, "aspect_ratio_range": ANY, "max_attempts": ANY,
                          "interpolation": ANY, "backend": _RESIZE_BACKEND},
    "RandomFlip": {"prob": ANY, "direction": Fixed(("horizontal",), "only horizontal flips")},
    "RandAugment": {"policies": ANY, "num_policies": ANY, "total_level": ANY, "magnitude_level": ANY,
                    "magnitude_std": ANY, "hparams": {"pad_val": ANY, "interpolation": ANY}},
    "RandomErasing": {"erase_prob": ANY, "min_area_ratio": ANY, "max_area_ratio": ANY, "aspect_range": ANY,
                      "mode": ANY, "fill_color": ANY, "fill_std": ANY},
    "PackInputs": {},
}
_PIPELINE = Items(Typed({k: {**_COMMON, **v} for k, v in TRANSFORMS.items()}))


def _steps(cfg: Mapping, which: str) -> list[tuple[str, Mapping]]:
    """``(where, step)`` of ``{which}_dataloader.dataset.pipeline`` (the top-level ``*_pipeline`` only names it)."""
    steps = _section(cfg, f"{which}_dataloader.dataset").get("pipeline")
    if not steps:
        raise ConfigError(f"config {_name(cfg)}: {which}_dataloader.dataset.pipeline is missing")
    out = []
    for i, step in enumerate(steps if isinstance(steps, (list, tuple)) else [steps]):
        where = f"config {_name(cfg)}: {which}_dataloader.dataset.pipeline.{i}"
        if not isinstance(step, Mapping):
            raise ConfigError(f"{where}={step!r}: each step must be a dict(type=..., ...)")
        out.append((f"{where} ({step.get('type')})", step))
    return out


def _interpolation(where: str, step: Mapping) -> str:
    interp = _value(step, "interpolation", where, "bilinear", choice(*INTERPOLATIONS))  # mmcv's default: bilinear
    if step.get("backend", "cv2") != "pillow":
        # mmcv resizes with OpenCV by default; this library only resizes with Pillow, whose bicubic/bilinear
        # differ from OpenCV's by a few grey levels. The CSPNet configs all say backend='pillow'.
        log.warning("%s backend=%r: resizing with Pillow instead (pixels may differ slightly from OpenCV's)", where,
                    step.get("backend", "cv2"))
    return interp


def _square(where: str, step: Mapping, key: str) -> int:
    size = step.get(key)
    size = size[0] if isinstance(size, (list, tuple)) and len(set(size)) == 1 else size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"{where}: {key}={step.get(key)!r}; give one positive size (only square crops)")
    if size > MAX_SIDE:
        raise ConfigError(f"{where}: {key}={size} is over {MAX_SIDE} pixels (each image would take gigabytes); give "
                          f"a size up to {MAX_SIDE}")
    return size


def eval_preset(cfg: Mapping, which: str = "test") -> EvalPreset:
    """The :class:`~cspnet.data.presets.EvalPreset` of ``{which}_dataloader``: ``LoadImageFromFile``,
    ``ResizeEdge(scale, edge='short')``, ``CenterCrop(crop_size)``, ``PackInputs``; mean/std from the data
    preprocessor."""
    found: dict[str, Any] = {}
    for where, step in _steps(cfg, which):
        kind = step.get("type")
        if kind == "ResizeEdge" and not found:
            found.update(resize=_square(where, step, "scale"), interpolation=_interpolation(where, step))
        elif kind == "CenterCrop" and "resize" in found and "crop" not in found:
            found["crop"] = _square(where, step, "crop_size")
        elif kind not in ("LoadImageFromFile", "PackInputs"):
            raise ConfigError(f"{where} is not supported in an eval pipeline; expected LoadImageFromFile, "
                              f"ResizeEdge(scale, edge='short'), CenterCrop(crop_size), PackInputs")
    if "crop" not in found:
        raise ConfigError(f"config {_name(cfg)}: the {which} pipeline needs a ResizeEdge and a CenterCrop")
    try:
        return EvalPreset(found["resize"], found["crop"], found["interpolation"], *_normalization(cfg))
    except ValueError as e:
        raise ConfigError(f"config {_name(cfg)}: {which} pipeline: {e}") from None


_TRAIN_STEPS = ("LoadImageFromFile", "RandomResizedCrop", "RandomFlip", "RandAugment", "RandomErasing", "PackInputs")


def _bgr(where: str, value: Any) -> tuple[float, float, float]:
    """A colour as mmpretrain's configs give it for its BGR images (``bgr_mean``): RGB here, where images are RGB."""
    one = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not one and not (isinstance(value, (list, tuple)) and len(value) == 3):
        raise ConfigError(f"{where}={value!r:.80}: expected a number or 3 numbers (B, G, R)")
    return (float(value),) * 3 if one else tuple(float(v) for v in reversed(value))


_STD = _kind("a number >= 0 or 'inf'", lambda v: v == "inf" or isinstance(v, (int, float)) and v >= 0, float)


def _rand_augment(where: str, step: Mapping) -> RandAugment:
    """mmpretrain's ``RandAugment`` step, or timm's string as its policies (``policies='rand-m9-mstd0.5-inc1'``)."""
    hp = step.get("hparams") or {}
    pad = hp.get("pad_val", 128)  # BGR, as mmpretrain's configs (from_mmpretrain reverses it)
    interpolation = _value(hp, "interpolation", f"{where}.hparams", "bicubic", choice("nearest", "bilinear", "bicubic"))
    policies = step.get("policies")
    try:
        if isinstance(policies, str) and policies.startswith("rand"):
            fill = tuple(round(v) for v in _bgr(f"{where}.hparams.pad_val", pad))
            return parse_timm(policies, fill=fill, interpolation=interpolation)
        return from_mmpretrain(policies, num_policies=_value(step, "num_policies", where, 2, integer(1)),
                               magnitude_level=_value(step, "magnitude_level", where, 9.0, number()),
                               magnitude_std=_value(step, "magnitude_std", where, 0.0, _STD),
                               total_level=_value(step, "total_level", where, 10.0, number()),
                               pad_val=pad, interpolation=interpolation)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _erasing(where: str, step: Mapping) -> RandomErasing:
    known = {f.name for f in dataclasses.fields(RandomErasing)}
    args = {k: v for k, v in step.items() if k in known and v is not None}
    for key in ("fill_color", "fill_std"):
        if key in args:  # given in BGR order, as mmpretrain's configs do for its BGR images
            args[key] = _bgr(f"{where}.{key}", args[key])
    if "aspect_range" in args:
        args["aspect_range"] = tuple(args["aspect_range"])
    try:
        return RandomErasing(**args)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def train_pipeline(cfg: Mapping) -> TrainPipeline:
    """The :class:`~cspnet.data.train_transforms.TrainPipeline` of ``train_dataloader``: ``LoadImageFromFile``,
    ``RandomResizedCrop``, ``RandomFlip`` (horizontal), ``RandAugment``, ``RandomErasing``, ``PackInputs``, each at
    most once and in this order (the order they are applied in)."""
    found: dict[str, Any] = {}
    pair = _kind("(low, high), 0 < low <= high", lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(
        isinstance(x, (int, float)) for x in v) and 0 < v[0] <= v[1], lambda v: (float(v[0]), float(v[1])))
    seen: list[str] = []
    for where, step in _steps(cfg, "train"):
        kind = step.get("type")
        if kind not in _TRAIN_STEPS:
            raise ConfigError(f"{where} is not supported in a train pipeline; expected, in this order: "
                              f"{', '.join(_TRAIN_STEPS)}")
        if seen and _TRAIN_STEPS.index(kind) <= _TRAIN_STEPS.index(seen[-1]):
            raise ConfigError(f"{where} after {seen[-1]}: the train pipeline applies its steps once each, in the "
                              f"order {', '.join(_TRAIN_STEPS)}")
        seen.append(kind)
        if kind == "RandomResizedCrop":
            found.update(crop=_square(where, step, "scale"), interpolation=_interpolation(where, step),
                         scale=_value(step, "crop_ratio_range", where, (0.08, 1.0), pair),
                         ratio=_value(step, "aspect_ratio_range", where, (3 / 4, 4 / 3), pair),
                         max_attempts=_value(step, "max_attempts", where, 10, integer(1)))
        elif kind == "RandomFlip":  # mmcv: prob=None never flips
            found["flip_prob"] = _value(step, "prob", where, 0.0, number(lambda v: 0 <= v <= 1, "a probability"))
        elif kind == "RandAugment":
            found["rand_augment"] = _rand_augment(where, step)
        elif kind == "RandomErasing":
            found["erasing"] = _erasing(where, step)
    if "crop" not in found:
        raise ConfigError(f"config {_name(cfg)}: the train pipeline needs a RandomResizedCrop")
    mean, std = _normalization(cfg)
    return TrainPipeline(mean=mean, std=std, **found)


def batch_mix(cfg: Mapping) -> BatchMix | None:
    """Mixup/CutMix from ``model.train_cfg`` (mmpretrain 1.x) or ``data_preprocessor.batch_augments`` (its 1.0rc
    place); both at once is an error (which would win?)."""
    given = [(key, _section(cfg, key)) for key in ("model.train_cfg", "model.data_preprocessor.batch_augments",
                                                   "data_preprocessor.batch_augments")]
    given = [(key, section) for key, section in given if section.get("augments")]
    if not given:
        return None
    if len(given) > 1:
        raise ConfigError(f"config {_name(cfg)}: Mixup/CutMix given in both {given[0][0]} and {given[1][0]}; keep one")
    key, section = given[0]
    augments = section["augments"]
    augments = [augments] if isinstance(augments, Mapping) else augments
    probs = section.get("probs")
    try:
        return BatchMix(tuple((a["type"], number()(a.get("alpha"), f"{key}.augments.alpha")) for a in augments),
                        None if probs is None else tuple(_one_or_many(probs)))
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None


# --- Data and loaders: DataSpec, LoaderSpec ------------------------------------------------------------------------
@dataclass(frozen=True)
class LoaderSpec:
    """``{train,val,test}_dataloader`` without its dataset. ``num_workers`` is capped at the CPU cores (more never
    help, and PyTorch warns); ``shuffle``, ``seed`` (None: the run's) and ``drop_last`` are training's (evaluation
    reads every image once, in order); ``pin_memory`` None: when on CUDA."""

    batch_size: int = setting("batch_size", 32, integer(1))
    num_workers: int = setting("num_workers", 4, integer(0))
    persistent_workers: bool = setting("persistent_workers", True, boolean)
    pin_memory: bool | None = setting("pin_memory", None, boolean)
    drop_last: bool = setting("drop_last", False, boolean)
    prefetch_factor: int | None = setting("prefetch_factor", None, integer(1))
    shuffle: bool = setting("sampler.shuffle", True, boolean)
    seed: int | None = setting("sampler.seed", None, _SEED)


_DATASET = {**_type(*IMAGENET_KINDS, "CustomDataset", why="ImageNet, its robustness test sets, or your own classes"),
            "data_root": ANY,
            "split": ANY, "data_prefix": ANY, "ann_file": ANY, "pipeline": _PIPELINE, "classes": ANY,
            "metainfo": {"classes": ANY}, "indices": ANY,
            "with_label": Fixed((True,), "classification datasets are labelled")}
_DATALOADER = join(keys(LoaderSpec), {
    "collate_fn": Fixed(({"type": "default_collate"},), "batches are collated by cspnet"),
    "sampler": {**_type("DefaultSampler", why="a seeded shuffle for training, every image once in order for "
                                                "evaluation"),
                "round_up": Fixed((True,), "every process takes the same number of batches")},
    "dataset": _DATASET})


# mmengine's dataset indices: the first N samples, or those
_INDICES = _kind("a count or a list of indices >= 0", lambda v: all(_is_int(k, 0) for k in _one_or_many(v)),
                 lambda v: v if isinstance(v, int) else tuple(v))


def data_spec(cfg: Mapping, which: str) -> DataSpec:
    """The :class:`~cspnet.data.datasets.DataSpec` of ``{which}_dataloader.dataset`` (``data_root`` as written,
    relative to the working directory, as in mmpretrain; the config's top-level ``data_root``, when set, is the root
    of every dataset)."""
    ds, where = _section(cfg, f"{which}_dataloader.dataset"), f"config {_name(cfg)}: {which}_dataloader.dataset"
    classes = ds.get("classes") or _section(cfg, f"{which}_dataloader.dataset.metainfo").get("classes")
    prefix = ds.get("data_prefix")
    if isinstance(prefix, Mapping):  # mmengine also allows data_prefix=dict(img_path='val')
        prefix = prefix.get("img_path", prefix.get("img"))
    name = lambda key, default=None: _value(ds, key, where, default, text)  # noqa: E731
    # a top-level data_root is every dataset's (one override moves train, val and test)
    root = _value(cfg, "data_root", f"config {_name(cfg)}", None, text) or name("data_root", "")
    return DataSpec(ds.get("type", "ImageNet"), root, name("split"), name("ann_file"),
                    prefix or None, tuple(map(str, classes)) if isinstance(classes, (list, tuple)) else classes,
                    _value(ds, "indices", where, None, _INDICES))


def loader_spec(cfg: Mapping, which: str) -> LoaderSpec:
    where = f"config {_name(cfg)}: {which}_dataloader."
    spec = read(LoaderSpec, _section(cfg, f"{which}_dataloader"), where)
    if which == "train":
        return spec
    if _section(cfg, f"{which}_dataloader.sampler").get("shuffle") or spec.drop_last or spec.seed is not None:
        raise ConfigError(f"{where} shuffle, drop_last and sampler.seed apply to training only: evaluation reads "
                          f"every image once, in order")
    return dataclasses.replace(spec, shuffle=False)


# --- Evaluation: EvalSpec ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metrics:
    """``{val,test}_evaluator=dict(type='Accuracy', topk=(1, 5))``: printed as ``{prefix}/top{k}``."""

    topk: tuple[int, ...] = setting("topk", (1, 5), ints())
    prefix: str = setting("prefix", "accuracy", text)


_EVALUATOR = Items({**_type("Accuracy", why="top-k accuracy"), **keys(Metrics),
                    "thrs": Fixed((None, 0.0), "a sample is correct when its label is in the top k")})


def metrics_spec(cfg: Mapping, which: str) -> Metrics:
    ev = cfg.get(f"{which}_evaluator") or {}
    ev = ev[0] if isinstance(ev, (list, tuple)) and len(ev) == 1 else ev
    if not isinstance(ev, Mapping):
        raise ConfigError(f"{which}_evaluator={ev!r:.80}: give one dict(type='Accuracy', topk=...)")
    return read(Metrics, ev, f"{which}_evaluator.")


@dataclass(frozen=True)
class Source:
    """Where a spec came from: the config ``file`` and the resolved config ``text`` (a config file itself, written
    beside a run's results and into its checkpoints, as mmengine does)."""

    file: str = ""
    text: str = ""

    def dump(self, folder: str | os.PathLike) -> Path:
        """Write ``text`` into ``folder`` under the config's name, atomically; never over the config file itself
        (then as ``<name>.resolved.py``)."""
        path = Path(folder) / (Path(self.file).name or "config.py")
        if self.file and path.exists() and path.resolve() == Path(self.file).resolve():
            path = path.with_suffix(".resolved.py")
        return atomic_write(path, lambda tmp: tmp.write_text(self.text, encoding="utf-8"))


def _source(cfg: Config) -> Source:
    return Source(getattr(cfg, "filename", None) or "", cfg.pretty_text)


@dataclass(frozen=True)
class EvalSpec:
    """What ``cspnet test`` evaluates: the model, the test set and its loader, the metrics, ``fp16``
    (``test_cfg.fp16``: bf16 autocast) and ``tta`` (``tta_model``: flip averaging)."""

    model: ModelSpec
    data: DataSpec
    loader: LoaderSpec
    metrics: Metrics = Metrics()
    fp16: bool = setting("test_cfg.fp16", False, boolean)
    tta: bool = setting("tta_model", False, lambda v, where: True)
    source: Source = Source()


def eval_spec(cfg: Config) -> EvalSpec:
    """The :class:`EvalSpec` of ``cfg``: its model (eval preprocessing: the test pipeline) and test set."""
    validate_keys(cfg, SCHEMA, where=f"config {_name(cfg)}")  # load_config did, unless the Config was made by hand
    return read(EvalSpec, cfg, "", model=model_spec(cfg, "test"), data=data_spec(cfg, "test"),
                loader=loader_spec(cfg, "test"), metrics=metrics_spec(cfg, "test"), source=_source(cfg))


# --- Training: TrainSpec and its parts -----------------------------------------------------------------------------
# torch.optim's classes of these names, and timm's TF-style RMSpropTF (epsilon inside the sqrt) of the published
# weights' RA recipe (cspnet.engine.optim.RMSpropTF, with the arguments listed here)
_OPTIMIZERS = ("SGD", "AdamW", "Adam", "RMSprop", "RMSpropTF")
_RMSPROP_TF_ARGS = ("alpha", "eps", "momentum", "centered", "decoupled_decay", "lr_in_momentum")
_OPTIM_ARGS = ("momentum", "nesterov", "betas", "eps", "alpha", "dampening", "centered", "decoupled_decay",
               "lr_in_momentum")
_LOSS_SCALE = _kind("'dynamic', a number or a dict of GradScaler arguments", lambda v: v == "dynamic" or isinstance(
    v, (int, float, Mapping)) and not isinstance(v, bool), lambda v: tuple(v.items()) if isinstance(v, Mapping) else v)


@dataclass(frozen=True)
class OptimSpec:
    """``optim_wrapper``: ``torch.optim.<kind>(lr, **args)`` over parameter groups whose weight decay is
    ``weight_decay`` times ``norm_decay_mult`` (norm layers) or ``bias_decay_mult`` (other biases); ``amp``:
    autocast dtype ('float16', 'bfloat16', 'auto': fp16 on GPUs, bf16 on CPUs) or None; ``loss_scale`` ('dynamic',
    a fixed scale, or GradScaler arguments; fp16 only); ``clip``: ``('norm', max_norm, norm_type)`` or
    ``('value', clip_value, 0)``; ``accumulate``: micro-batches per optimizer step."""

    kind: str = "SGD"
    lr: float = setting("optimizer.lr", 0.1, number(lambda v: v >= 0, "a learning rate >= 0"))
    args: tuple[tuple[str, Any], ...] = ()
    weight_decay: float = setting("optimizer.weight_decay", 0.0, number(lambda v: v >= 0, "a number >= 0"))
    norm_decay_mult: float = setting("paramwise_cfg.norm_decay_mult", 1.0, number())
    bias_decay_mult: float = setting("paramwise_cfg.bias_decay_mult", 1.0, number())
    amp: str | None = None
    loss_scale: str | float | tuple[tuple[str, Any], ...] = setting("loss_scale", "dynamic", _LOSS_SCALE)
    clip: tuple[str, float, float] | None = None
    accumulate: int = setting("accumulative_counts", 1, integer(1))


_OPTIM_WRAPPER = join(keys(OptimSpec), {
    **_type("OptimWrapper", "AmpOptimWrapper", why="fp32, or autocast (AMP)"), "clip_grad": ANY, "dtype": ANY,
    "optimizer": {**_type(*_OPTIMIZERS, why="torch.optim's"), **{k: ANY for k in _OPTIM_ARGS}}})


def optim_spec(cfg: Mapping) -> OptimSpec:
    import torch

    ow, where = _section(cfg, "optim_wrapper"), "optim_wrapper"
    kind, opt = ow.get("type", "OptimWrapper"), _section(cfg, "optim_wrapper.optimizer")
    name = opt.get("type", "SGD")
    if "lr" not in opt:
        raise ConfigError(f"{where}.optimizer needs an 'lr'")
    args = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in opt.items()
                 if k in _OPTIM_ARGS and v is not None)
    takes = _RMSPROP_TF_ARGS if name == "RMSpropTF" else inspect.signature(getattr(torch.optim, name)).parameters
    refused = [k for k, _ in args if k not in takes]
    if refused:
        raise ConfigError(f"{where}.optimizer: {name} takes no {refused}")
    amp = ow.get("dtype")
    if amp not in (None, "float16", "bfloat16") or amp and kind != "AmpOptimWrapper":
        raise ConfigError(f"{where}.dtype={amp!r}: 'float16' or 'bfloat16', with type='AmpOptimWrapper' (or --amp)")
    clip = ow.get("clip_grad")
    if clip is not None:
        kind_ = clip.get("type", "norm") if isinstance(clip, Mapping) else None
        need = {"norm": "max_norm", "value": "clip_value"}.get(kind_)
        if need is None or need not in clip or set(clip) - {"type", "max_norm", "norm_type", "clip_value"}:
            raise ConfigError(f"{where}.clip_grad={clip!r}; use dict(max_norm=..., norm_type=2) or "
                              f"dict(type='value', clip_value=...)")
        clip = (kind_, number()(clip[need], f"{where}.clip_grad.{need}"), float(clip.get("norm_type", 2)))
    return read(OptimSpec, ow, f"{where}.", kind=name, args=args, clip=clip,
                amp=(amp or "auto") if kind == "AmpOptimWrapper" else None)


_SCHEDULERS = {  # mmengine's param schedulers implemented, with their own arguments
    "LinearLR": ("start_factor", "end_factor"),
    "ConstantLR": ("factor",),
    "MultiStepLR": ("milestones", "gamma"),
    "StepLR": ("step_size", "gamma"),
    "CosineAnnealingLR": ("T_max", "eta_min", "eta_min_ratio"),
}


@dataclass(frozen=True)
class Scheduler:
    """One mmengine param scheduler, acting on ``[begin, end)`` in epochs (``by_epoch``) or iterations (``end`` None:
    no end); ``per_iter``: its value changes every iteration (``convert_to_iter_based``, or not ``by_epoch``).
    ``start``/``stop``: LinearLR's factors (ConstantLR: ``start`` alone); ``steps``: MultiStepLR's milestones or
    StepLR's ``(step_size,)``; ``t_max``/``eta_min``/``eta_min_ratio``: CosineAnnealingLR's."""

    kind: str
    by_epoch: bool = setting("by_epoch", True, boolean)
    begin: int = setting("begin", 0, integer(0))
    end: int | None = setting("end", None, integer(0))
    per_iter: bool = setting("convert_to_iter_based", False, boolean)
    start: float = 1 / 3
    stop: float = setting("end_factor", 1.0, number())
    steps: tuple[int, ...] = ()
    gamma: float = setting("gamma", 0.1, number())
    t_max: int | None = None
    eta_min: float = setting("eta_min", 0.0, number())
    eta_min_ratio: float | None = setting("eta_min_ratio", None, number())


_PARAM_SCHEDULER = Items(Typed({kind: {**_COMMON, **{k: ANY for k in ("by_epoch", "begin", "end",
                                                                    "convert_to_iter_based", *args)}}
                                for kind, args in _SCHEDULERS.items()}))


def schedule_spec(cfg: Mapping) -> tuple[Scheduler, ...]:
    entries = cfg.get("param_scheduler") or []
    out = []
    for i, s in enumerate([entries] if isinstance(entries, Mapping) else entries):
        where, kind = f"param_scheduler[{i}].", s.get("type")
        entry = read(Scheduler, s, where, kind=kind)
        end = None if entry.end is not None and entry.end >= 10**9 else entry.end  # mmengine's "no end" is INF
        entry = dataclasses.replace(entry, end=end, per_iter=entry.per_iter or not entry.by_epoch)
        if end is not None and end <= entry.begin:
            raise ConfigError(f"{where[:-1]}: end={end} must be larger than begin={entry.begin}")
        if kind in ("LinearLR", "ConstantLR"):
            if end is None:
                raise ConfigError(f"{where[:-1]}: {kind} needs an 'end'")
            start = _value(s, "start_factor" if kind == "LinearLR" else "factor", where[:-1], 1 / 3, number())
            entry = dataclasses.replace(entry, start=start, stop=entry.stop if kind == "LinearLR" else start)
        elif kind == "MultiStepLR":
            entry = dataclasses.replace(entry, steps=tuple(sorted(_value(s, "milestones", where[:-1], (), ints(0)))))
        elif kind == "StepLR":
            if "step_size" not in s:
                raise ConfigError(f"{where[:-1]}: StepLR needs 'step_size'")
            entry = dataclasses.replace(entry, steps=(integer(1)(s["step_size"], f"{where}step_size"),))
        else:  # CosineAnnealingLR
            t_max = _value(s, "T_max", where[:-1], (end - entry.begin) if end is not None else None, integer(1))
            if t_max is None:
                raise ConfigError(f"{where[:-1]}: CosineAnnealingLR needs 'T_max' or an 'end'")
            entry = dataclasses.replace(entry, t_max=t_max)
        out.append(entry)
    return tuple(out)


@dataclass(frozen=True)
class LossSpec:
    """``model.head.loss``: softmax cross-entropy times ``weight``, with ``label_smooth`` (LabelSmoothLoss), per-class
    ``class_weight`` and ``reduction`` ('mean' over the batch, or 'sum'); ``topk``: with ``model.head.cal_acc``,
    the training accuracies logged (else None)."""

    label_smooth: float = 0.0
    weight: float = setting("loss_weight", 1.0, number())
    class_weight: tuple[float, ...] | None = None
    reduction: str = setting("reduction", "mean", choice("mean", "sum"))
    topk: tuple[int, ...] | None = None


def loss_spec(cfg: Mapping, num_classes: int) -> LossSpec:
    loss, where = _section(cfg, "model.head.loss"), "model.head.loss"
    kind = loss.get("type", "CrossEntropyLoss")
    if loss.get("num_classes") not in (None, num_classes):
        raise ConfigError(f"{where}.num_classes={loss['num_classes']} but model.head.num_classes={num_classes}")
    weights = _value(loss, "class_weight", where, None, _kind(f"{num_classes} weights >= 0", lambda v: isinstance(
        v, (list, tuple)) and len(v) == num_classes and all(isinstance(w, (int, float)) and w >= 0 for w in v),
        lambda v: tuple(map(float, v))))
    head = _section(cfg, "model.head")
    smooth = _value(loss, "label_smooth_val", where, 0.1, number(lambda v: 0 <= v < 1, "in [0, 1)"))
    if kind != "LabelSmoothLoss" and "label_smooth_val" in loss:
        raise ConfigError(f"{where}.label_smooth_val applies to type='LabelSmoothLoss', not {kind!r}")
    return read(LossSpec, loss, f"{where}.", label_smooth=smooth if kind == "LabelSmoothLoss" else 0.0,
                class_weight=weights, topk=_value(head, "topk", "model.head", (1,), ints())
                if _value(head, "cal_acc", "model.head", False, boolean) else None)


@dataclass(frozen=True)
class EmaSpec:
    """``custom_hooks=[dict(type='EMAHook', ...)]``: mmengine's ``ExponentialMovingAverage`` of the weights
    (momentum 2e-4 = timm's decay 0.9998), evaluated beside the raw weights unless told otherwise."""

    momentum: float = setting("momentum", 2e-4, number(lambda v: 0 < v <= 1, "in (0, 1]"))
    interval: int = setting("interval", 1, integer(1))
    update_buffers: bool = setting("update_buffers", False, boolean)
    begin_iter: int = setting("begin_iter", 0, integer(0))
    begin_epoch: int = setting("begin_epoch", 0, integer(0))
    evaluate_on_ema: bool = setting("evaluate_on_ema", True, boolean)
    # mmpretrain evaluates only the EMA by default; both are reported here, so the gain is visible
    evaluate_on_origin: bool = setting("evaluate_on_origin", True, boolean)


_EMA_HOOK = {**_COMMON, **keys(EmaSpec), "ema_type": Fixed(("ExponentialMovingAverage",), "mmengine's default EMA")}


def ema_spec(cfg: Mapping) -> EmaSpec | None:
    hooks, ema = cfg.get("custom_hooks") or [], None
    for i, hook in enumerate(hooks if isinstance(hooks, (list, tuple)) else [hooks]):  # types: the schema's
        ema = read(EmaSpec, hook, f"custom_hooks[{i}].")
    return ema


@dataclass(frozen=True)
class CheckpointPolicy:
    """``default_hooks.checkpoint``: ``epoch_N.pth`` every ``interval`` epochs (and the last epoch with
    ``save_last``); ``max_keep`` the newest kept (-1: all); ``best``: keep ``best.pth`` (``save_best``: 'auto',
    'accuracy/top1' or True, the default here; False for none); ``optimizer``: the optimizer and AMP state
    (``save_optimizer``; without them a checkpoint cannot be resumed)."""

    interval: int = setting("interval", 1, integer(1))
    max_keep: int = setting("max_keep_ckpts", -1, integer(-1))
    best: bool = setting("save_best", True, _kind("'auto', 'accuracy/top1' or a bool (best.pth follows the top-1)",
                                                  lambda v: v in (True, False, "auto", "accuracy/top1", "top1"),
                                                  lambda v: v is not False))
    last: bool = setting("save_last", True, boolean)
    optimizer: bool = setting("save_optimizer", True, boolean)


def _hook(kind: str, **more: Any) -> dict[str, Any]:
    return {**_type(kind, why=f"cspnet's trainer does what {kind} does, itself"), **more}


@dataclass(frozen=True)
class RuntimeSpec:
    """Process-wide settings, each named by its key. ``dist_backend`` 'nccl' means NCCL on CUDA and gloo on CPU;
    ``seed`` None draws one (recorded in the checkpoints)."""

    channels_last: bool = setting("env_cfg.channels_last", False, boolean)
    cudnn_benchmark: bool = setting("env_cfg.cudnn_benchmark", False, boolean)
    dist_backend: str = setting("env_cfg.dist_cfg.backend", "nccl", choice("nccl", "gloo"))
    dist_timeout: float = setting("env_cfg.dist_cfg.timeout", 1800.0, number(lambda v: v > 0, "seconds > 0"))
    mp_start_method: str | None = setting("env_cfg.mp_cfg.mp_start_method", None, choice("fork", "spawn", "forkserver"))
    seed: int | None = setting("randomness.seed", None, _SEED)
    deterministic: bool = setting("randomness.deterministic", False, boolean)
    diff_rank_seed: bool = setting("randomness.diff_rank_seed", False, boolean)
    sync_bn: bool = setting("sync_bn", False, _kind("'torch' (torch.nn.SyncBatchNorm) or False",
                                                    lambda v: v in ("torch", False), lambda v: v == "torch"))
    log_level: str = setting("log_level", "INFO", choice("DEBUG", "INFO", "WARNING", "ERROR"))
    log_interval: int = setting("default_hooks.logger.interval", 100, integer(1))
    tensorboard: bool = False  # vis_backends holds a TensorboardVisBackend: scalars to <run>/vis_data


def tensorboard(cfg: Mapping) -> bool:
    """Whether ``visualizer.vis_backends`` (or the top-level ``vis_backends`` a config file writes it from) asks for
    TensorBoard; refused when the ``tensorboard`` package, which ``torch.utils.tensorboard`` writes with, is absent."""
    import importlib.util

    backends = [*(cfg.get("vis_backends") or []), *(_section(cfg, "visualizer").get("vis_backends") or [])]
    wanted = any(isinstance(b, Mapping) and b.get("type") == "TensorboardVisBackend" for b in backends)
    if wanted and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"config {_name(cfg)}: vis_backends has TensorboardVisBackend, but the tensorboard package "
                          f"is not installed: pip install tensorboard (or drop it: log.jsonl and curves.png are "
                          f"written either way)")
    return wanted


_LOAD_FROM = _kind("a path, a URL, True (the published weights) or None", lambda v: isinstance(v, (bool, str)),
                   lambda v: v or None)


@dataclass(frozen=True)
class TrainSpec:
    """What ``cspnet train`` runs: the model (its eval preprocessing: the val pipeline), the data (``val`` None: no
    validation), ``augment`` (the train pipeline) and the rest, each named by its key; ``load_from``: the weights to
    start from (a path, a URL, True: the published ones)."""

    model: ModelSpec
    train: DataSpec
    train_loader: LoaderSpec
    augment: TrainPipeline
    val: DataSpec | None
    val_loader: LoaderSpec | None
    val_metrics: Metrics
    optim: OptimSpec
    schedule: tuple[Scheduler, ...]
    loss: LossSpec
    ema: EmaSpec | None
    checkpoints: CheckpointPolicy
    runtime: RuntimeSpec
    mix: BatchMix | None = None
    val_fp16: bool = setting("val_cfg.fp16", False, boolean)
    max_epochs: int = setting("train_cfg.max_epochs", 100, integer(1))
    val_interval: int = setting("train_cfg.val_interval", 1, integer(1))
    val_begin: int = setting("train_cfg.val_begin", 1, integer(0))
    auto_scale_lr: bool = setting("auto_scale_lr.enable", False, boolean)
    base_batch_size: int = setting("auto_scale_lr.base_batch_size", 256, integer(1))
    load_from: bool | str | None = setting("load_from", None, _LOAD_FROM)
    resume: bool = setting("resume", False, boolean)
    work_dir: str | None = setting("work_dir", None, text)
    launcher: str = setting("launcher", "none", choice("none", "pytorch"))
    source: Source = Source()


def load_from(cfg: Mapping) -> bool | str | None:
    """``load_from``: the weights to start from (a path, a URL, True: the published ones), or None."""
    return _value(cfg, "load_from", "config", None, _LOAD_FROM)


def train_spec(cfg: Config, validate: bool = True) -> TrainSpec:
    """The :class:`TrainSpec` of ``cfg`` (``validate=False``: no validation, as ``--no-validate``)."""
    validate_keys(cfg, SCHEMA, where=f"config {_name(cfg)}")
    model = model_spec(cfg, "val", classes_from="train")
    mix, loss = batch_mix(cfg), loss_spec(cfg, model.num_classes)
    if mix is not None and (loss.class_weight or loss.topk):  # both need hard labels
        raise ConfigError(f"config {_name(cfg)}: Mixup/CutMix make soft labels: they take no "
                          f"model.head.loss.class_weight, and model.head.cal_acc would count nothing meaningful")
    return read(TrainSpec, cfg, "", model=model, train=data_spec(cfg, "train"), train_loader=loader_spec(cfg, "train"),
                augment=train_pipeline(cfg), val=data_spec(cfg, "val") if validate else None,
                val_loader=loader_spec(cfg, "val") if validate else None, val_metrics=metrics_spec(cfg, "val"),
                optim=optim_spec(cfg), schedule=schedule_spec(cfg), loss=loss, mix=mix,
                ema=ema_spec(cfg), checkpoints=read(CheckpointPolicy, _section(cfg, "default_hooks.checkpoint"),
                                                    "default_hooks.checkpoint."),
                runtime=read(RuntimeSpec, cfg, "", tensorboard=tensorboard(cfg)), source=_source(cfg))


# --- The schema: every key a config may hold -----------------------------------------------------------------------
_VIS = Items({"type": Fixed(("LocalVisBackend", "TensorboardVisBackend"), "the run writes log.jsonl and curves.png, "
                             "and TensorBoard scalars; W&B and MLflow logging are not implemented")})
SCHEMA: dict[str, Any] = join(keys(TrainSpec), keys(RuntimeSpec), keys(EvalSpec), {
    "model": _MODEL,
    "data_preprocessor": _PREPROCESSOR,
    "dataset_type": Variable(ANY, "{train,val,test}_dataloader.dataset.type"),
    "data_root": ANY,
    "train_pipeline": Variable(_PIPELINE, "train_dataloader.dataset.pipeline"),
    "test_pipeline": Variable(_PIPELINE, "test_dataloader.dataset.pipeline"),
    "train_dataloader": _DATALOADER,
    "val_dataloader": _DATALOADER,
    "test_dataloader": _DATALOADER,
    "val_evaluator": _EVALUATOR,
    "test_evaluator": _EVALUATOR,
    "optim_wrapper": _OPTIM_WRAPPER,
    "param_scheduler": _PARAM_SCHEDULER,
    "train_cfg": {"_delete_": ANY, "type": Fixed(("EpochBasedTrainLoop",), "epoch-based training"),
                  "by_epoch": Fixed((True,), "epoch-based training (max_epochs)")},
    "val_cfg": {"_delete_": ANY, "type": Fixed(("ValLoop",), "cspnet's own validation")},
    "test_cfg": {"_delete_": ANY, "type": Fixed(("TestLoop",), "cspnet's own test loop")},
    "tta_model": Fixed(({"type": "AverageClsScoreTTA"},), "test-time augmentation averages the softmax of the image "
                       "and its mirror (mmpretrain's default)"),
    "default_scope": Fixed(("mmpretrain",), "cspnet reads mmpretrain's configs"),
    "default_hooks": {
        "timer": _hook("IterTimerHook"), "logger": _hook("LoggerHook"), "param_scheduler": _hook("ParamSchedulerHook"),
        "checkpoint": _hook("CheckpointHook", **keys(CheckpointPolicy), by_epoch=Fixed((True,), "epoch-based"),
                            rule=Fixed(("greater",), "the best checkpoint has the highest top-1")),
        "sampler_seed": _hook("DistSamplerSeedHook"),
        "visualization": _hook("VisualizationHook", enable=Fixed((False,), "pictures: `cspnet predict --save-vis`")),
    },
    "custom_hooks": Items(Typed({"EMAHook": _EMA_HOOK})),
    "env_cfg": {"mp_cfg": {"opencv_num_threads": Fixed((0,), "cspnet does not use OpenCV")}},
    "vis_backends": Variable(_VIS, "visualizer.vis_backends"),
    "visualizer": {"type": Fixed(("UniversalVisualizer",), "no visualizer: see vis_backends"),
                   "vis_backends": _VIS},
})
