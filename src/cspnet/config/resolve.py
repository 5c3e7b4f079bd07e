"""From an mmpretrain-shaped config to typed, frozen specs, made once, at the edge.

:func:`test_spec` gives what ``cspnet test`` runs (:class:`TestSpec`), :func:`train_spec` what ``cspnet train`` runs
(:class:`TrainSpec`); each reads only the sections its command uses, so a training-only setting never blocks an
evaluation. Nothing below this package sees a config dict.

Each section's schema (the keys :func:`~cspnet.config.load.validate` accepts) is declared beside the function that
reads it, and every accepted key is either honoured or, at a value this library cannot honour, refused with a
message (a ``Fixed`` key, or a check here); ``tests/test_config_keys.py`` sets every key of :data:`SCHEMA` to
a value other than its default and checks its effect or its refusal. Defaults are mmpretrain's/mmengine's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .._io import atomic_write
from ..data.classes import imagenet_classes
from ..data.datasets import DataSpec
from ..data.train_transforms import TrainPipeline
from ..data.presets import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, EvalPreset
from ..errors import ConfigError
from ..models import ARCHS
from ..spec import BackboneOptions, ModelSpec
from ..weights.records import get_weights_info
from .load import ANY, Config, Fixed, Items, Typed, Variable

_log = logging.getLogger("cspnet")
_COMMON = {"type": ANY, "_delete_": ANY}
_MMCV_RESIZE = Fixed(("pillow", "cv2"), "images are resized with Pillow; with 'cv2' a warning says so")


def _get(section: Mapping | None, key: str, where: str, default: Any, kind: type | tuple[type, ...],
         test: Callable[[Any], bool] = lambda v: True, need: str = "") -> Any:
    """``section[key]`` as ``kind`` (``default`` when absent or None); else a ConfigError naming the key."""
    value = (section or {}).get(key)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is tuple and isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)) or not test(value):
        raise ConfigError(f"{where}.{key}={value!r}: expected {need or getattr(kind, '__name__', kind)}")
    return value


def _positive(section: Mapping | None, key: str, where: str, default: int, minimum: int = 1) -> int:
    return _get(section, key, where, default, int, lambda v: v >= minimum, f"an integer >= {minimum}")


def _section(cfg: Mapping, dotted: str) -> Mapping:
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if node is not None and not isinstance(node, Mapping):
        raise ConfigError(f"config {_name(cfg)}: {dotted} must be a dict, got {node!r:.80}")
    return node or {}


def _name(cfg: Mapping) -> str:
    return repr(getattr(cfg, "filename", None) or "<dict>")


# ---------------------------------------------------------------------------------------------------------------
# The model: ModelSpec
# ---------------------------------------------------------------------------------------------------------------
BACKBONES: dict[tuple[str, int], str] = {  # mmpretrain backbone (type, depth) -> architecture
    ("CSPDarkNet", 53): "cspdarknet53",
    ("CSPResNet", 50): "cspresnet50",
    ("CSPResNeXt", 50): "cspresnext50",
}
_INIT = Fixed((None,), "weights come from load_from (or tools/test.py's CHECKPOINT), not init_cfg")
_LOSS = {**_COMMON, "loss_weight": ANY, "label_smooth_val": ANY, "mode": Fixed(("original",), "only the original "
         "label smoothing"), "reduction": ANY, "use_sigmoid": Fixed((False,), "softmax cross-entropy only"),
         "use_soft": Fixed((False,), "hard labels only (no Mixup/CutMix)"), "class_weight": ANY, "num_classes": ANY}
_PREPROCESSOR = {**_COMMON, "num_classes": ANY, "mean": ANY, "std": ANY, "to_rgb": ANY,
                 "pad_size_divisor": Fixed((1,), "eval crops are square and of one size: nothing to pad"),
                 "pad_value": Fixed((0,), "nothing is padded"),
                 "batch_augments": Fixed((None,), "Mixup/CutMix are not implemented")}
_MODEL = {
    **_COMMON,
    "backbone": {**_COMMON, "depth": ANY, "in_channels": ANY, "out_indices": ANY, "frozen_stages": ANY,
                 "norm_eval": ANY, "drop_path_rate": ANY, "zero_init_last": ANY, "init_cfg": _INIT},
    "neck": {**_COMMON, "dim": Fixed((2,), "global average pooling of 2-d maps")},
    "head": {**_COMMON, "num_classes": ANY, "in_channels": ANY, "topk": ANY, "cal_acc": ANY, "dropout": ANY,
             "init_cfg": _INIT, "loss": _LOSS},
    "data_preprocessor": _PREPROCESSOR,
    "train_cfg": {"augments": Fixed((None,), "Mixup/CutMix are not implemented"),
                  "probs": Fixed((None,), "Mixup/CutMix are not implemented")},
    "init_cfg": _INIT,
    "pretrained": Fixed((None,), "set load_from to start from weights"),
}


def _normalization(cfg: Mapping) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # As mmpretrain's get_model: the model's own data_preprocessor wins over the top-level one.
    pre = _section(cfg, "model.data_preprocessor") or _section(cfg, "data_preprocessor")
    if pre.get("to_rgb", True) is not True:
        raise ConfigError(f"config {_name(cfg)}: data_preprocessor.to_rgb={pre['to_rgb']!r} (BGR input) is not "
                          f"supported: images are decoded as RGB; set to_rgb=True and give mean/std in RGB order")
    values = []
    for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        v = _get(pre, key, "data_preprocessor", default, tuple,
                 lambda t: len(t) == 3 and all(isinstance(x, (int, float)) and x == x for x in t), "3 numbers")
        if key == "std" and min(v) <= 0:
            raise ConfigError(f"config {_name(cfg)}: data_preprocessor.std={list(v)} must be positive")
        values.append(tuple(float(x) for x in v))
    return values[0], values[1]


def model_spec(cfg: Mapping, pipeline: str = "test") -> ModelSpec:
    """The :class:`~cspnet.models.ModelSpec` of ``cfg.model``; its eval preprocessing is ``{pipeline}_dataloader``'s.

    Raises:
        ConfigError: for a model this library does not build (the message names the key).
    """
    where = f"config {_name(cfg)}: model"
    model = _section(cfg, "model")
    if model.get("type", "ImageClassifier") != "ImageClassifier":
        raise ConfigError(f"{where}.type={model['type']!r}; only 'ImageClassifier' is supported")
    bb = _section(cfg, "model.backbone")
    arch = BACKBONES.get((bb.get("type"), bb.get("depth")))
    if arch is None:
        known = ", ".join(f"type={t!r} depth={d}" for t, d in BACKBONES)
        raise ConfigError(f"{where}.backbone type={bb.get('type')!r} depth={bb.get('depth')!r} is not a CSPNet "
                          f"this library builds; known: {known}")
    neck, head = _section(cfg, "model.neck"), _section(cfg, "model.head")
    if neck.get("type", "GlobalAveragePooling") != "GlobalAveragePooling":
        raise ConfigError(f"{where}.neck.type={neck['type']!r}; only GlobalAveragePooling")
    if head.get("type", "LinearClsHead") != "LinearClsHead":
        raise ConfigError(f"{where}.head.type={head['type']!r}; only LinearClsHead")
    num_classes = _positive(head, "num_classes", f"{where}.head", 1000, minimum=0)
    width = ARCHS[arch].stages()[-1].out_chs
    if head.get("in_channels") not in (None, width):
        raise ConfigError(f"{where}.head.in_channels={head['in_channels']} but {arch} outputs {width} channels")
    for pre in ("model.data_preprocessor", "data_preprocessor"):
        if _section(cfg, pre).get("num_classes") not in (None, num_classes):  # mmpretrain sizes Mixup's labels by it
            _log.info("config %s: %s.num_classes=%s differs from model.head.num_classes=%d; the head decides (it "
                         "would size the one-hot labels of batch_augments, which cspnet does not implement)",
                         _name(cfg), pre, _section(cfg, pre)["num_classes"], num_classes)
    options = BackboneOptions(
        in_chans=_positive(bb, "in_channels", f"{where}.backbone", None),
        out_indices=_get(bb, "out_indices", f"{where}.backbone", None, (int, tuple), need="stage indices"),
        frozen_stages=_get(bb, "frozen_stages", f"{where}.backbone", None, int),
        norm_eval=_get(bb, "norm_eval", f"{where}.backbone", None, bool),
        drop_path_rate=_get(bb, "drop_path_rate", f"{where}.backbone", None, float),
        zero_init_last=_get(bb, "zero_init_last", f"{where}.backbone", None, bool))
    classes = _classes(cfg, pipeline)
    record = get_weights_info(arch)
    return ModelSpec(arch, eval_preset(cfg, pipeline), num_classes,
                     classes if classes is not None and len(classes) == num_classes else None,
                     _get(head, "dropout", f"{where}.head", 0.0, float, lambda v: 0 <= v < 1, "a rate in [0, 1)"),
                     options, name=os.path.splitext(os.path.basename(getattr(cfg, "filename", "") or record.name))[0])


def _classes(cfg: Mapping, which: str) -> tuple[str, ...] | None:
    """Class names the config states: the dataset's ``classes`` (not a file), or ImageNet's."""
    ds = _section(cfg, f"{which}_dataloader.dataset")
    classes = ds.get("classes") or _section(cfg, f"{which}_dataloader.dataset.metainfo").get("classes")
    if ds.get("type", "ImageNet") == "ImageNet":
        return imagenet_classes()
    return tuple(str(c) for c in classes) if isinstance(classes, (list, tuple)) else None


# ---------------------------------------------------------------------------------------------------------------
# Pipelines: EvalPreset (val/test) and TrainPipeline (train)
# ---------------------------------------------------------------------------------------------------------------
TRANSFORMS: dict[str, dict[str, Any]] = {  # the steps implemented, with the arguments of their mmcv namesakes
    "LoadImageFromFile": {"imdecode_backend": Fixed(("cv2", "pillow"), "images are decoded by Pillow (the same "
                                                    "libjpeg-turbo pixels as OpenCV)")},
    "ResizeEdge": {"scale": ANY, "edge": Fixed(("short",), "only the short edge is resized"),
                   "backend": _MMCV_RESIZE, "interpolation": ANY},
    "CenterCrop": {"crop_size": ANY, "auto_pad": Fixed((False,), "crops are never padded")},
    "RandomResizedCrop": {"scale": ANY, "crop_ratio_range": ANY, "aspect_ratio_range": ANY, "max_attempts": ANY,
                          "interpolation": ANY, "backend": _MMCV_RESIZE},
    "RandomFlip": {"prob": ANY, "direction": Fixed(("horizontal",), "only horizontal flips")},
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
    interp = _get(step, "interpolation", where, "bilinear", str, lambda v: v in INTERPOLATIONS,  # mmcv: bilinear
                  f"one of {sorted(INTERPOLATIONS)}")
    if step.get("backend", "cv2") != "pillow":
        # mmcv resizes with OpenCV by default; this library only resizes with Pillow, whose bicubic/bilinear
        # differ from OpenCV's by a few grey levels. The CSPNet configs all say backend='pillow'.
        _log.warning("%s backend=%r: resizing with Pillow instead (pixels may differ slightly "
                                            "from OpenCV's)", where, step.get("backend", "cv2"))
    return interp


def _square(where: str, step: Mapping, key: str) -> int:
    size = step.get(key)
    size = size[0] if isinstance(size, (list, tuple)) and len(set(size)) == 1 else size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"{where}: {key}={step.get(key)!r}; give one positive size (only square crops)")
    return size


def eval_preset(cfg: Mapping, which: str = "test") -> EvalPreset:
    """The :class:`~cspnet.data.transforms.EvalPreset` of ``{which}_dataloader``: ``LoadImageFromFile``,
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
    mean, std = _normalization(cfg)
    try:
        return EvalPreset(found["resize"], found["crop"], found["interpolation"], mean, std)
    except ValueError as e:
        raise ConfigError(f"config {_name(cfg)}: {which} pipeline: {e}") from None


def train_pipeline(cfg: Mapping) -> TrainPipeline:
    """The :class:`~cspnet.data.train_transforms.TrainPipeline` of ``train_dataloader``: ``LoadImageFromFile``,
    ``RandomResizedCrop``, ``RandomFlip`` (horizontal), ``PackInputs``."""
    found: dict[str, Any] = {}
    for where, step in _steps(cfg, "train"):
        kind = step.get("type")
        pair = lambda key, default: _get(step, key, where, default, tuple,  # noqa: E731
                                         lambda t: len(t) == 2 and 0 < t[0] <= t[1], "(low, high), 0 < low <= high")
        if kind == "RandomResizedCrop" and "crop" not in found:
            found.update(crop=_square(where, step, "scale"), interpolation=_interpolation(where, step),
                         scale=tuple(map(float, pair("crop_ratio_range", (0.08, 1.0)))),
                         ratio=tuple(map(float, pair("aspect_ratio_range", (3 / 4, 4 / 3)))),
                         max_attempts=_positive(step, "max_attempts", where, 10))
        elif kind == "RandomFlip" and "flip_prob" not in found:  # mmcv: prob=None never flips
            found["flip_prob"] = _get(step, "prob", where, 0.0, float, lambda v: 0 <= v <= 1, "one probability")
        elif kind not in ("LoadImageFromFile", "PackInputs"):
            raise ConfigError(f"{where} is not supported in a train pipeline; expected LoadImageFromFile, "
                              f"RandomResizedCrop, RandomFlip(direction='horizontal'), PackInputs")
    if "crop" not in found:
        raise ConfigError(f"config {_name(cfg)}: the train pipeline needs a RandomResizedCrop")
    mean, std = _normalization(cfg)
    return TrainPipeline(mean=mean, std=std, **found)


# ---------------------------------------------------------------------------------------------------------------
# Data and loaders: DataSpec, LoaderSpec
# ---------------------------------------------------------------------------------------------------------------
_DATASET = {**_COMMON, "data_root": ANY, "split": ANY, "data_prefix": ANY, "ann_file": ANY, "pipeline": _PIPELINE,
            "classes": ANY, "metainfo": {"classes": ANY}, "indices": ANY,
            "with_label": Fixed((True,), "classification datasets are labelled")}
_DATALOADER = {"batch_size": ANY, "num_workers": ANY, "persistent_workers": ANY, "pin_memory": ANY,
               "drop_last": ANY, "prefetch_factor": ANY,
               "collate_fn": Fixed(({"type": "default_collate"},), "batches are collated by cspnet"),
               "sampler": {**_COMMON, "shuffle": ANY, "seed": ANY,
                           "round_up": Fixed((True,), "every process takes the same number of batches")},
               "dataset": _DATASET}


@dataclass(frozen=True)
class LoaderSpec:
    """``{train,val,test}_dataloader`` without its dataset. ``num_workers`` is capped at the CPU cores (more never
    help, and PyTorch warns); ``shuffle``/``seed``/``drop_last`` apply to training (evaluation reads every image
    once, in order)."""

    batch_size: int = 32
    num_workers: int = 5
    persistent_workers: bool = True
    pin_memory: bool | None = None  # None: when on CUDA
    drop_last: bool = False
    prefetch_factor: int | None = None
    shuffle: bool = True
    seed: int | None = None  # None: the run's seed


def data_spec(cfg: Mapping, which: str) -> DataSpec:
    """The :class:`~cspnet.data.datasets.DataSpec` of ``{which}_dataloader.dataset`` (``data_root`` as written,
    relative to the working directory, as in mmpretrain)."""
    ds, where = _section(cfg, f"{which}_dataloader.dataset"), f"config {_name(cfg)}: {which}_dataloader.dataset"
    kind = ds.get("type", "ImageNet")
    if kind not in ("ImageNet", "CustomDataset"):
        raise ConfigError(f"{where}.type={kind!r}; supported: 'ImageNet', 'CustomDataset'")
    classes = ds.get("classes") or _section(cfg, f"{which}_dataloader.dataset.metainfo").get("classes")
    prefix = ds.get("data_prefix")
    if isinstance(prefix, Mapping):  # mmengine also allows data_prefix=dict(img_path='val')
        prefix = prefix.get("img_path", prefix.get("img"))
    text = lambda key: _get(ds, key, where, None, str)  # noqa: E731
    return DataSpec(
        kind=kind, root=_get(ds, "data_root", where, "", str), split=text("split") or None,
        ann_file=text("ann_file") or None, data_prefix=prefix or None,
        classes=tuple(map(str, classes)) if isinstance(classes, (list, tuple)) else classes,
        indices=_get(ds, "indices", where, None, (int, tuple), need="a count or a list of indices"))


def loader_spec(cfg: Mapping, which: str) -> LoaderSpec:
    dl, where = _section(cfg, f"{which}_dataloader"), f"config {_name(cfg)}: {which}_dataloader"
    sampler = _section(cfg, f"{which}_dataloader.sampler")
    if sampler.get("type", "DefaultSampler") != "DefaultSampler":
        raise ConfigError(f"{where}.sampler.type={sampler['type']!r}; only 'DefaultSampler'")
    spec = LoaderSpec(
        batch_size=_positive(dl, "batch_size", where, 32), num_workers=_positive(dl, "num_workers", where, 5, 0),
        persistent_workers=_get(dl, "persistent_workers", where, True, bool),
        pin_memory=_get(dl, "pin_memory", where, None, bool), drop_last=_get(dl, "drop_last", where, False, bool),
        prefetch_factor=_positive(dl, "prefetch_factor", where, None),
        shuffle=_get(sampler, "shuffle", f"{where}.sampler", which == "train", bool),
        seed=_get(sampler, "seed", f"{where}.sampler", None, int))
    if which != "train" and (spec.shuffle or spec.drop_last or spec.seed is not None):
        raise ConfigError(f"{where}: shuffle, drop_last and sampler.seed apply to training only: evaluation reads "
                          f"every image once, in order")
    return spec


# ---------------------------------------------------------------------------------------------------------------
# Evaluation: TestSpec
# ---------------------------------------------------------------------------------------------------------------
_EVALUATOR = Items({**_COMMON, "topk": ANY, "prefix": ANY,
                    "thrs": Fixed((None, 0.0), "a sample counts as correct whenever its label is in the top k")})


@dataclass(frozen=True)
class Metrics:
    """``{val,test}_evaluator=dict(type='Accuracy', topk=(1, 5))``: printed as ``{prefix}/top{k}``."""

    topk: tuple[int, ...] = (1, 5)
    prefix: str = "accuracy"


def metrics_spec(cfg: Mapping, which: str) -> Metrics:
    ev = cfg.get(f"{which}_evaluator") or {}
    ev, where = (ev[0] if isinstance(ev, (list, tuple)) and len(ev) == 1 else ev), f"config {_name(cfg)}: {which}_evaluator"
    if not isinstance(ev, Mapping) or ev.get("type", "Accuracy") != "Accuracy":
        raise ConfigError(f"{where}={ev!r:.80}: only one dict(type='Accuracy', topk=...)")
    topk = _get(ev, "topk", where, (1, 5), (int, tuple), lambda v: all(isinstance(k, int) and k > 0 for k in
                                                                        ((v,) if isinstance(v, int) else v)), "k >= 1")
    return Metrics((topk,) if isinstance(topk, int) else topk, _get(ev, "prefix", where, "accuracy", str))


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
    fp16: bool = False
    tta: bool = False
    source: Source = Source()


_TEST_CFG = {**_COMMON, "fp16": ANY}
_TTA = Fixed(({"type": "AverageClsScoreTTA"},), "test-time augmentation averages the softmax of the image and its "
             "mirror (mmpretrain's default)")


def eval_spec(cfg: Config) -> EvalSpec:
    """The :class:`EvalSpec` of ``cfg``: its model (eval preprocessing: the test pipeline) and test set."""
    return EvalSpec(model_spec(cfg, "test"), data_spec(cfg, "test"), loader_spec(cfg, "test"),
                    metrics_spec(cfg, "test"), _get(_section(cfg, "test_cfg"), "fp16", "test_cfg", False, bool),
                    cfg.get("tta_model") is not None, _source(cfg))


# ---------------------------------------------------------------------------------------------------------------
# Training: TrainSpec and its parts
# ---------------------------------------------------------------------------------------------------------------
_OPTIMIZERS = ("SGD", "AdamW", "Adam", "RMSprop")  # torch.optim's classes of these names; RMSprop is torch's, not
# timm's TF-style RMSpropTF (epsilon inside the sqrt) of the published RA recipe
_OPTIM_ARGS = ("lr", "momentum", "weight_decay", "nesterov", "betas", "eps", "alpha", "dampening", "centered")
_OPTIM_WRAPPER = {
    **_COMMON,
    "optimizer": {**_COMMON, **{k: ANY for k in _OPTIM_ARGS}},
    "clip_grad": ANY, "paramwise_cfg": {"norm_decay_mult": ANY, "bias_decay_mult": ANY},
    "accumulative_counts": ANY, "loss_scale": ANY, "dtype": ANY,
}


@dataclass(frozen=True)
class OptimSpec:
    """``optim_wrapper``: ``torch.optim.<kind>(lr, **args)`` over parameter groups whose weight decay is
    ``weight_decay`` times ``norm_decay_mult`` (norm layers) or ``bias_decay_mult`` (other biases); ``amp``:
    autocast dtype ('float16', 'bfloat16', 'auto': fp16 on GPUs, bf16 on CPUs) or None; ``loss_scale`` ('dynamic',
    a fixed scale, or GradScaler arguments; fp16 only); ``clip``: ``('norm', max_norm, norm_type)`` or
    ``('value', clip_value, 0)``; ``accumulate``: micro-batches per optimizer step."""

    kind: str = "SGD"
    lr: float = 0.1
    args: tuple[tuple[str, Any], ...] = ()
    weight_decay: float = 0.0
    norm_decay_mult: float = 1.0
    bias_decay_mult: float = 1.0
    amp: str | None = None
    loss_scale: str | float | tuple[tuple[str, Any], ...] = "dynamic"
    clip: tuple[str, float, float] | None = None
    accumulate: int = 1


def optim_spec(cfg: Mapping) -> OptimSpec:
    import inspect

    import torch

    ow, where = _section(cfg, "optim_wrapper"), "optim_wrapper"
    kind = ow.get("type", "OptimWrapper")
    if kind not in ("OptimWrapper", "AmpOptimWrapper"):
        raise ConfigError(f"{where}.type={kind!r}; choose 'OptimWrapper' or 'AmpOptimWrapper'")
    opt = dict(_section(cfg, "optim_wrapper.optimizer"))
    name = opt.pop("type", "SGD")
    if name not in _OPTIMIZERS:
        raise ConfigError(f"{where}.optimizer.type={name!r} is not supported; choose from {sorted(_OPTIMIZERS)}")
    if "lr" not in opt:
        raise ConfigError(f"{where}.optimizer needs an 'lr'")
    lr = _get(opt, "lr", f"{where}.optimizer", None, float, lambda v: v >= 0, "a learning rate >= 0")
    wd = _get(opt, "weight_decay", f"{where}.optimizer", 0.0, float, lambda v: v >= 0, "a number >= 0")
    accepted = inspect.signature(getattr(torch.optim, name)).parameters
    args = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in opt.items() if k not in ("lr", "weight_decay"))
    if [k for k, _ in args if k not in accepted]:
        raise ConfigError(f"{where}.optimizer: torch.optim.{name} takes no {[k for k, _ in args if k not in accepted]}")
    amp = ow.get("dtype") if kind == "AmpOptimWrapper" else None
    if amp not in (None, "float16", "bfloat16"):
        raise ConfigError(f"{where}.dtype={amp!r}; choose 'float16' or 'bfloat16'")
    clip = ow.get("clip_grad")
    if clip is not None:
        if not isinstance(clip, Mapping) or set(clip) - {"type", "max_norm", "norm_type", "clip_value"} or (
                clip.get("type", "norm") == "norm" and "max_norm" not in clip) or (
                clip.get("type") == "value" and "clip_value" not in clip) or clip.get("type", "norm") not in ("norm", "value"):
            raise ConfigError(f"{where}.clip_grad={clip!r}; use dict(max_norm=..., norm_type=2) or "
                              f"dict(type='value', clip_value=...)")
        value = clip.get("max_norm", clip.get("clip_value"))
        clip = (clip.get("type", "norm"), float(value), float(clip.get("norm_type", 2)))
    scale = ow.get("loss_scale", "dynamic")
    if not (scale == "dynamic" or isinstance(scale, (int, float, Mapping)) and not isinstance(scale, bool)):
        raise ConfigError(f"{where}.loss_scale={scale!r}; use 'dynamic', a number or a dict of GradScaler arguments")
    pw = _section(cfg, "optim_wrapper.paramwise_cfg")
    return OptimSpec(name, lr, args, wd, _get(pw, "norm_decay_mult", f"{where}.paramwise_cfg", 1.0, float),
                     _get(pw, "bias_decay_mult", f"{where}.paramwise_cfg", 1.0, float),
                     (amp or "auto") if kind == "AmpOptimWrapper" else None,
                     tuple(scale.items()) if isinstance(scale, Mapping) else scale, clip,
                     _positive(ow, "accumulative_counts", where, 1))


_SCHEDULERS = {  # mmengine's param schedulers implemented, with their own arguments
    "LinearLR": ("start_factor", "end_factor"),
    "ConstantLR": ("factor",),
    "MultiStepLR": ("milestones", "gamma"),
    "StepLR": ("step_size", "gamma"),
    "CosineAnnealingLR": ("T_max", "eta_min", "eta_min_ratio"),
}
_PARAM_SCHEDULER = Items(Typed({k: {**_COMMON, "by_epoch": ANY, "begin": ANY, "end": ANY, "convert_to_iter_based": ANY,
                                    **{a: ANY for a in args}} for k, args in _SCHEDULERS.items()}))


@dataclass(frozen=True)
class Scheduler:
    """One mmengine param scheduler, acting on ``[begin, end)`` in epochs (``by_epoch``) or iterations (``end`` None:
    no end); ``per_iter``: its value changes every iteration (``convert_to_iter_based``, or not ``by_epoch``).
    ``start``/``stop``: LinearLR's factors (ConstantLR: ``start`` alone); ``steps``: MultiStepLR's milestones or
    StepLR's ``(step_size,)``; ``t_max``/``eta_min``/``eta_min_ratio``: CosineAnnealingLR's."""

    kind: str
    by_epoch: bool = True
    begin: int = 0
    end: int | None = None
    per_iter: bool = False
    start: float = 1 / 3
    stop: float = 1.0
    steps: tuple[int, ...] = ()
    gamma: float = 0.1
    t_max: int | None = None
    eta_min: float = 0.0
    eta_min_ratio: float | None = None


def schedule_spec(cfg: Mapping) -> tuple[Scheduler, ...]:
    entries = cfg.get("param_scheduler") or []
    out = []
    for i, s in enumerate([entries] if isinstance(entries, Mapping) else entries):
        where = f"param_scheduler[{i}]"
        kind, by_epoch = s.get("type"), _get(s, "by_epoch", where, True, bool)
        begin, end = _positive(s, "begin", where, 0, 0), _positive(s, "end", where, None, 0)
        end = None if end is not None and end >= 10**9 else end  # mmengine's "no end" is INF
        if end is not None and end <= begin:
            raise ConfigError(f"{where}: end={end} must be larger than begin={begin}")
        common = dict(kind=kind, by_epoch=by_epoch, begin=begin, end=end,
                      per_iter=not by_epoch or _get(s, "convert_to_iter_based", where, False, bool))
        if kind in ("LinearLR", "ConstantLR"):
            if end is None:
                raise ConfigError(f"{where}: {kind} needs an 'end'")
            start = _get(s, "start_factor" if kind == "LinearLR" else "factor", where, 1 / 3, float)
            out.append(Scheduler(**common, start=start, stop=_get(s, "end_factor", where, 1.0, float)
                                 if kind == "LinearLR" else start))
        elif kind == "MultiStepLR":
            steps = _get(s, "milestones", where, (), tuple, lambda v: all(isinstance(m, int) for m in v), "epochs")
            out.append(Scheduler(**common, steps=tuple(sorted(steps)), gamma=_get(s, "gamma", where, 0.1, float)))
        elif kind == "StepLR":
            if "step_size" not in s:
                raise ConfigError(f"{where}: StepLR needs 'step_size'")
            out.append(Scheduler(**common, steps=(_positive(s, "step_size", where, 1),),
                                 gamma=_get(s, "gamma", where, 0.1, float)))
        else:  # CosineAnnealingLR
            t_max = _positive(s, "T_max", where, (end - begin) if end is not None else None)
            if t_max is None:
                raise ConfigError(f"{where}: CosineAnnealingLR needs 'T_max' or an 'end'")
            out.append(Scheduler(**common, t_max=t_max, eta_min=_get(s, "eta_min", where, 0.0, float),
                                 eta_min_ratio=_get(s, "eta_min_ratio", where, None, float)))
    return tuple(out)


@dataclass(frozen=True)
class LossSpec:
    """``model.head.loss``: softmax cross-entropy times ``weight``, with ``label_smooth`` (LabelSmoothLoss), per-class
    ``class_weight`` and ``reduction`` ('mean' over the batch, or 'sum'); ``topk``: with ``model.head.cal_acc``,
    the training accuracies logged (else None)."""

    label_smooth: float = 0.0
    weight: float = 1.0
    class_weight: tuple[float, ...] | None = None
    reduction: str = "mean"
    topk: tuple[int, ...] | None = None


def loss_spec(cfg: Mapping, num_classes: int) -> LossSpec:
    loss, where = _section(cfg, "model.head.loss"), "model.head.loss"
    kind = loss.get("type", "CrossEntropyLoss")
    if kind not in ("CrossEntropyLoss", "LabelSmoothLoss"):
        raise ConfigError(f"{where}.type={kind!r}: only softmax CrossEntropyLoss and LabelSmoothLoss")
    if loss.get("num_classes") not in (None, num_classes):
        raise ConfigError(f"{where}.num_classes={loss['num_classes']} but model.head.num_classes={num_classes}")
    weights = _get(loss, "class_weight", where, None, tuple, lambda v: len(v) == num_classes and all(
        isinstance(w, (int, float)) and w >= 0 for w in v), f"{num_classes} weights >= 0")
    head = _section(cfg, "model.head")
    topk = _get(head, "topk", "model.head", (1,), (int, tuple), lambda v: all(
        isinstance(k, int) and k > 0 for k in ((v,) if isinstance(v, int) else v)), "k >= 1")
    return LossSpec(
        _get(loss, "label_smooth_val", where, 0.1, float, lambda v: 0 <= v < 1, "in [0, 1)") if kind ==
        "LabelSmoothLoss" else 0.0, _get(loss, "loss_weight", where, 1.0, float),
        tuple(map(float, weights)) if weights else None,
        _get(loss, "reduction", where, "mean", str, lambda v: v in ("mean", "sum"), "'mean' or 'sum'"),
        ((topk,) if isinstance(topk, int) else topk) if _get(head, "cal_acc", "model.head", False, bool) else None)


_EMA_HOOK = {**_COMMON, "momentum": ANY, "interval": ANY, "update_buffers": ANY, "begin_iter": ANY,
             "begin_epoch": ANY, "evaluate_on_ema": ANY, "evaluate_on_origin": ANY,
             "ema_type": Fixed(("ExponentialMovingAverage",), "mmengine's default EMA")}


@dataclass(frozen=True)
class EmaSpec:
    """``custom_hooks=[dict(type='EMAHook', ...)]``: mmengine's ``ExponentialMovingAverage`` of the weights
    (momentum 2e-4 = timm's decay 0.9998), evaluated beside the raw weights unless told otherwise."""

    momentum: float = 2e-4
    interval: int = 1
    update_buffers: bool = False
    begin_iter: int = 0
    begin_epoch: int = 0
    evaluate_on_ema: bool = True
    # mmpretrain evaluates only the EMA by default; both are reported here, so the gain is visible
    evaluate_on_origin: bool = True


def ema_spec(cfg: Mapping) -> EmaSpec | None:
    hooks, ema = cfg.get("custom_hooks") or [], None
    for i, h in enumerate(hooks if isinstance(hooks, (list, tuple)) else [hooks]):
        where = f"custom_hooks[{i}]"
        if not isinstance(h, Mapping) or h.get("type") != "EMAHook":
            raise ConfigError(f"{where}={h!r:.80}: only dict(type='EMAHook', ...) is supported")
        flag = lambda key, default: _get(h, key, where, default, bool)  # noqa: E731
        ema = EmaSpec(_get(h, "momentum", where, 2e-4, float, lambda v: 0 < v <= 1, "in (0, 1]"),
                      _positive(h, "interval", where, 1), flag("update_buffers", False),
                      _positive(h, "begin_iter", where, 0, 0), _positive(h, "begin_epoch", where, 0, 0),
                      flag("evaluate_on_ema", True), flag("evaluate_on_origin", True))
    return ema


def _hook(kind: str, **keys: Any) -> dict[str, Any]:
    return {"type": Fixed((kind,), f"the trainer's own {kind.removesuffix('Hook').lower()} step"), "_delete_": ANY,
            **keys}


_DEFAULT_HOOKS = {
    "timer": _hook("IterTimerHook"),
    "logger": _hook("LoggerHook", interval=ANY),
    "param_scheduler": _hook("ParamSchedulerHook"),
    "checkpoint": _hook("CheckpointHook", interval=ANY, max_keep_ckpts=ANY, save_best=ANY, save_last=ANY,
                        save_optimizer=ANY, by_epoch=Fixed((True,), "epoch-based training"),
                        rule=Fixed(("greater",), "the best checkpoint has the highest top-1")),
    "sampler_seed": _hook("DistSamplerSeedHook"),
    "visualization": _hook("VisualizationHook", enable=Fixed((False,), "prediction pictures: `cspnet predict "
                                                                         "--save-vis`")),
}


@dataclass(frozen=True)
class CheckpointPolicy:
    """``default_hooks.checkpoint``: ``epoch_N.pth`` every ``interval`` epochs (and the last epoch with
    ``save_last``); ``max_keep`` the newest kept (-1: all); ``best``: keep ``best.pth`` (``save_best``; mmengine's
    values 'auto'/'accuracy/top1' or True, the default here; None/False: no best.pth); ``optimizer``: the optimizer
    and AMP state (``save_optimizer``; without them a checkpoint cannot be resumed)."""

    interval: int = 1
    max_keep: int = -1
    best: bool = True
    last: bool = True
    optimizer: bool = True


def checkpoint_policy(cfg: Mapping) -> CheckpointPolicy:
    ck, where = _section(cfg, "default_hooks.checkpoint"), "default_hooks.checkpoint"
    best = ck.get("save_best", "auto") if "save_best" in ck else "auto"
    if best not in (None, False, True, "auto", "accuracy/top1", "top1"):
        raise ConfigError(f"{where}.save_best={best!r}: best.pth follows the top-1 ('auto', 'accuracy/top1'); "
                          f"None or False for none")
    return CheckpointPolicy(_positive(ck, "interval", where, 1), _get(ck, "max_keep_ckpts", where, -1, int),
                            best not in (None, False), _get(ck, "save_last", where, True, bool),
                            _get(ck, "save_optimizer", where, True, bool))


_ENV = {"cudnn_benchmark": ANY, "channels_last": ANY, "dist_cfg": {"backend": ANY, "timeout": ANY},
        "mp_cfg": {"mp_start_method": ANY, "opencv_num_threads": Fixed((0,), "cspnet does not use OpenCV")}}


@dataclass(frozen=True)
class RuntimeSpec:
    """Process-wide settings: ``env_cfg`` (``channels_last``, ``cudnn_benchmark``, ``dist_cfg`` backend: 'nccl' on
    CUDA and gloo on CPU, or 'gloo'; timeout in s; ``mp_cfg.mp_start_method`` of the loader workers),
    ``randomness`` (``seed``: None draws one, recorded; ``deterministic``; ``diff_rank_seed``), ``sync_bn``,
    ``log_level``, ``default_hooks.logger.interval`` (iterations per log line)."""

    channels_last: bool = False
    cudnn_benchmark: bool = False
    dist_backend: str = "nccl"
    dist_timeout: float = 1800.0
    mp_start_method: str | None = None
    seed: int | None = None
    deterministic: bool = False
    diff_rank_seed: bool = False
    sync_bn: bool = False
    log_level: str = "INFO"
    log_interval: int = 100


def runtime_spec(cfg: Mapping) -> RuntimeSpec:
    env, rnd = _section(cfg, "env_cfg"), _section(cfg, "randomness")
    dist, mp = _section(cfg, "env_cfg.dist_cfg"), _section(cfg, "env_cfg.mp_cfg")
    if cfg.get("sync_bn") not in (None, False, "torch"):
        raise ConfigError(f"sync_bn={cfg['sync_bn']!r}; use 'torch' (torch.nn.SyncBatchNorm) or None")
    return RuntimeSpec(
        _get(env, "channels_last", "env_cfg", False, bool), _get(env, "cudnn_benchmark", "env_cfg", False, bool),
        _get(dist, "backend", "env_cfg.dist_cfg", "nccl", str, lambda v: v in ("nccl", "gloo"), "'nccl' or 'gloo'"),
        _get(dist, "timeout", "env_cfg.dist_cfg", 1800.0, float, lambda v: v > 0, "seconds > 0"),
        _get(mp, "mp_start_method", "env_cfg.mp_cfg", None, str, lambda v: v in ("fork", "spawn", "forkserver"),
             "'fork', 'spawn' or 'forkserver'"),
        _get(rnd, "seed", "randomness", None, int), _get(rnd, "deterministic", "randomness", False, bool),
        _get(rnd, "diff_rank_seed", "randomness", False, bool), cfg.get("sync_bn") == "torch",
        _get(cfg, "log_level", "config", "INFO", str, lambda v: v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
             "DEBUG, INFO, WARNING or ERROR").upper(),
        _positive(_section(cfg, "default_hooks.logger"), "interval", "default_hooks.logger", 100))


@dataclass(frozen=True)
class TrainSpec:
    """What ``cspnet train`` runs. ``model`` (eval preprocessing: the val pipeline), ``train``/``val`` data and
    loaders (``val`` None: no validation), ``augment`` (the train pipeline), ``val_metrics``, ``val_fp16``
    (``val_cfg.fp16``), the optimizer, the schedule (``param_scheduler``), the loss, the EMA (or None),
    ``train_cfg`` (``max_epochs``, ``val_interval``, ``val_begin``), checkpoints, runtime; ``auto_scale_lr``
    (enable, ``base_batch_size``); ``load_from`` (weights to start from: path, URL, True: the published ones),
    ``resume`` (True: from the latest checkpoint of ``work_dir``); ``launcher`` ('none' or 'pytorch')."""

    model: ModelSpec
    train: DataSpec
    train_loader: LoaderSpec
    augment: TrainPipeline
    val: DataSpec | None
    val_loader: LoaderSpec | None
    val_metrics: Metrics
    val_fp16: bool
    optim: OptimSpec
    schedule: tuple[Scheduler, ...]
    loss: LossSpec
    ema: EmaSpec | None
    max_epochs: int = 100
    val_interval: int = 1
    val_begin: int = 1
    checkpoints: CheckpointPolicy = CheckpointPolicy()
    runtime: RuntimeSpec = RuntimeSpec()
    auto_scale_lr: bool = False
    base_batch_size: int = 256
    load_from: bool | str | None = None
    resume: bool = False
    work_dir: str | None = None
    launcher: str = "none"
    source: Source = Source()


def load_from(cfg: Mapping) -> bool | str | None:
    """``load_from``: the weights to start from (a path, a URL, True: the published ones), or None."""
    value = cfg.get("load_from")
    if not (value is None or isinstance(value, (bool, str))):
        raise ConfigError(f"load_from={value!r}: a path, a URL, True (the published weights) or None")
    return value or None


def train_spec(cfg: Config, validate: bool = True) -> TrainSpec:
    """The :class:`TrainSpec` of ``cfg`` (``validate=False``: no validation, as ``--no-validate``).

    Raises:
        ConfigError: for a setting this trainer does not implement (the message names the key).
    """
    tc, asl = _section(cfg, "train_cfg"), _section(cfg, "auto_scale_lr")
    model = model_spec(cfg, "val")
    return TrainSpec(
        model, data_spec(cfg, "train"), loader_spec(cfg, "train"), train_pipeline(cfg),
        data_spec(cfg, "val") if validate else None, loader_spec(cfg, "val") if validate else None,
        metrics_spec(cfg, "val"), _get(_section(cfg, "val_cfg"), "fp16", "val_cfg", False, bool),
        optim_spec(cfg), schedule_spec(cfg), loss_spec(cfg, model.num_classes), ema_spec(cfg),
        _positive(tc, "max_epochs", "train_cfg", 100), _positive(tc, "val_interval", "train_cfg", 1),
        _positive(tc, "val_begin", "train_cfg", 1, 0), checkpoint_policy(cfg), runtime_spec(cfg),
        _get(asl, "enable", "auto_scale_lr", False, bool), _positive(asl, "base_batch_size", "auto_scale_lr", 256),
        load_from(cfg), _get(cfg, "resume", "config", False, bool), _get(cfg, "work_dir", "config", None, str),
        _get(cfg, "launcher", "config", "none", str, lambda v: v in ("none", "pytorch"), "'none' or 'pytorch'"),
        _source(cfg))


# ---------------------------------------------------------------------------------------------------------------
# The schema: every key a config may hold
# ---------------------------------------------------------------------------------------------------------------
_VIS = Items({"type": Fixed(("LocalVisBackend",), "the run writes log.jsonl and curves.png; TensorBoard and W&B "
                                                  "logging are not implemented")})
SCHEMA: dict[str, Any] = {
    "model": _MODEL,
    "data_preprocessor": _PREPROCESSOR,
    "dataset_type": Variable(ANY, "{train,val,test}_dataloader.dataset.type"),
    "train_pipeline": Variable(_PIPELINE, "train_dataloader.dataset.pipeline"),
    "test_pipeline": Variable(_PIPELINE, "test_dataloader.dataset.pipeline"),
    "train_dataloader": _DATALOADER,
    "val_dataloader": _DATALOADER,
    "test_dataloader": _DATALOADER,
    "val_evaluator": _EVALUATOR,
    "test_evaluator": _EVALUATOR,
    "optim_wrapper": _OPTIM_WRAPPER,
    "param_scheduler": _PARAM_SCHEDULER,
    "train_cfg": {**_COMMON, "by_epoch": Fixed((True,), "epoch-based training (max_epochs)"), "max_epochs": ANY,
                  "val_interval": ANY, "val_begin": ANY},
    "val_cfg": _TEST_CFG,
    "test_cfg": _TEST_CFG,
    "auto_scale_lr": {"base_batch_size": ANY, "enable": ANY},
    "default_scope": Fixed(("mmpretrain",), "cspnet reads mmpretrain's configs"),
    "default_hooks": _DEFAULT_HOOKS,
    "custom_hooks": Items(Typed({"EMAHook": _EMA_HOOK})),
    "env_cfg": _ENV,
    "vis_backends": Variable(_VIS, "visualizer.vis_backends"),
    "visualizer": {"type": Fixed(("UniversalVisualizer", "ClsVisualizer"), "no visualizer: see vis_backends"),
                   "vis_backends": _VIS},
    "log_level": ANY,
    "load_from": ANY,
    "resume": ANY,
    "randomness": {"seed": ANY, "deterministic": ANY, "diff_rank_seed": ANY},
    "work_dir": ANY,
    "launcher": ANY,
    "sync_bn": ANY,
    "tta_model": _TTA,
}
