"""Configs: plain Python files in mmpretrain's shape, read without mmengine.

A config file is Python that assigns plain values (dicts, lists, tuples, strings, numbers, booleans, None) to
top-level names. ``_base_ = '../_base_/x.py'`` (or a list) inherits other files, relative to the file: bases are
merged in order (a key defined by two bases is an error, as in mmengine), then the file's own values are merged in
recursively (dicts merge key by key, everything else, lists included, replaces; ``_delete_=True`` inside a dict
replaces the inherited dict instead of merging). ``--cfg-options a.b.c=VALUE`` overrides a key afterwards; an integer
part indexes a list (``test_dataloader.dataset.pipeline.1.scale=256``); VALUE is a Python literal (``0.1``,
``(1, 5)``, ``None``, ``true``), a list (``[a,b]`` or ``a,b``) or else a string.

Every key is checked against :data:`SCHEMA`, so a typo is an error that names the key and the closest known key,
never silently ignored. The schema (what ``configs/cspnet/*.py`` and their ``_base_`` files set)::

    model = dict(type='ImageClassifier',
                 backbone=dict(type='CSPDarkNet' | 'CSPResNet' | 'CSPResNeXt', depth=53 | 50 | 50,
                               out_indices, frozen_stages, norm_eval, drop_path_rate, in_channels),
                 neck=dict(type='GlobalAveragePooling'),
                 head=dict(type='LinearClsHead', num_classes=1000, in_channels=1024 | 2048, topk=(1, 5),
                           dropout (cspnet's addition: dropout before the linear layer),
                           loss=dict(type='CrossEntropyLoss' | 'LabelSmoothLoss', loss_weight, label_smooth_val, ...)),
                 data_preprocessor=None | dict(...) (wins over the top-level one, as in mmpretrain),
                 train_cfg=dict(augments=...), init_cfg)
    data_preprocessor = dict(num_classes=1000, mean=[...], std=[...] (0-255 scale), to_rgb=True)
    train_pipeline / test_pipeline = [dict(type=STEP, ...), ...]     # STEP: see TRANSFORMS
    {train,val,test}_dataloader = dict(batch_size=32, num_workers=5, persistent_workers, pin_memory,
        sampler=dict(type='DefaultSampler', shuffle=bool),
        dataset=dict(type='ImageNet' | 'CustomDataset', data_root='data/imagenet', split='train' | 'val',
                     ann_file, data_prefix, classes, pipeline=[...]))
    {val,test}_evaluator = dict(type='Accuracy', topk=(1, 5))
    optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4), clip_grad, ...)
    param_scheduler = dict(type='MultiStepLR', by_epoch=True, milestones=[30, 60, 90], gamma=0.1)  # or a list
    train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=1); val_cfg = test_cfg = dict()
    auto_scale_lr = dict(base_batch_size=256, enable=False)
    default_hooks, env_cfg, randomness, log_level, load_from, resume, work_dir, ...: default_runtime.py

The evaluated pipeline is ``test_dataloader.dataset.pipeline`` (as in mmpretrain); the top-level ``test_pipeline``
is only the name the files use to build it.

Public functions: :func:`load_config` (path + overrides -> :class:`Config`), :func:`parse_cfg_options`,
:func:`merge`, :func:`validate`; and the bridges to this library: :func:`model_name`, :func:`model_kwargs`,
:func:`build_model`, :func:`eval_preset`, :func:`train_pipeline` (a :class:`TrainPipeline`),
:func:`dataset_kwargs`, :func:`loader_kwargs`.
"""

from __future__ import annotations

import ast
import copy
import difflib
import os
import pprint
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import ConfigError

# ----------------------------------------------------------------------------------------------------------------
# Schema. A schema is a dict of known keys; each value is the schema of that key's value: ``ANY`` (not checked
# further), a nested dict, ``Items(schema)`` (a list of such values; a single one is accepted too) or
# ``Typed({type_name: schema})`` (a dict whose allowed keys depend on its ``type``).

ANY = None


@dataclass(frozen=True)
class Items:
    """A list (or tuple) whose items follow ``schema``; a single item that is not a list is accepted too."""

    schema: Any


@dataclass(frozen=True)
class Typed:
    """A dict with a ``type`` key; ``schemas[type]`` lists its other keys. ``open=True`` accepts unknown types."""

    schemas: Mapping[str, Mapping[str, Any]]
    open: bool = False


_COMMON = {"type": ANY, "_delete_": ANY}

# Pipeline steps this library implements, with the arguments of their mmpretrain/mmcv namesakes.
TRANSFORMS: dict[str, dict[str, Any]] = {
    "LoadImageFromFile": {"imdecode_backend": ANY, "color_type": ANY, "to_float32": ANY, "file_client_args": ANY,
                          "backend_args": ANY, "ignore_empty": ANY},
    "ResizeEdge": {"scale": ANY, "edge": ANY, "backend": ANY, "interpolation": ANY},
    "CenterCrop": {"crop_size": ANY, "auto_pad": ANY, "pad_cfg": ANY, "clip_object_border": ANY},
    "RandomResizedCrop": {"scale": ANY, "crop_ratio_range": ANY, "aspect_ratio_range": ANY, "max_attempts": ANY,
                          "interpolation": ANY, "backend": ANY},
    "RandomFlip": {"prob": ANY, "direction": ANY},
    "PackInputs": {"input_key": ANY, "algorithm_keys": ANY, "meta_keys": ANY},
}
_PIPELINE = Items(Typed({k: {**_COMMON, **v} for k, v in TRANSFORMS.items()}))

_PREPROCESSOR = {**_COMMON, "num_classes": ANY, "mean": ANY, "std": ANY, "to_rgb": ANY, "pad_size_divisor": ANY,
                 "pad_value": ANY, "batch_augments": ANY}
_DATASET = {**_COMMON, "data_root": ANY, "split": ANY, "data_prefix": ANY, "ann_file": ANY, "pipeline": _PIPELINE,
            "classes": ANY, "metainfo": ANY, "with_label": ANY, "extensions": ANY, "test_mode": ANY,
            "lazy_init": ANY, "serialize_data": ANY, "indices": ANY}
_DATALOADER = {"batch_size": ANY, "num_workers": ANY, "persistent_workers": ANY, "pin_memory": ANY,
               "drop_last": ANY, "collate_fn": ANY, "prefetch_factor": ANY,
               "sampler": {**_COMMON, "shuffle": ANY, "seed": ANY, "round_up": ANY},
               "dataset": _DATASET}
_HOOK = {**_COMMON, "interval": ANY, "enable": ANY, "by_epoch": ANY, "max_keep_ckpts": ANY, "save_best": ANY,
         "rule": ANY, "out_dir": ANY, "save_last": ANY, "save_optimizer": ANY, "save_param_scheduler": ANY,
         "ignore_last": ANY, "log_metric_by_epoch": ANY, "priority": ANY}
_SCHEDULER = {**_COMMON, "by_epoch": ANY, "milestones": ANY, "gamma": ANY, "begin": ANY, "end": ANY, "T_max": ANY,
              "eta_min": ANY, "eta_min_ratio": ANY, "start_factor": ANY, "end_factor": ANY, "factor": ANY,
              "convert_to_iter_based": ANY, "power": ANY, "step_size": ANY}

SCHEMA: dict[str, Any] = {
    "model": {
        **_COMMON,
        "backbone": {**_COMMON, "depth": ANY, "in_channels": ANY, "out_indices": ANY, "frozen_stages": ANY,
                     "norm_eval": ANY, "drop_path_rate": ANY, "zero_init_last": ANY, "init_cfg": ANY},
        "neck": {**_COMMON, "dim": ANY},
        "head": {**_COMMON, "num_classes": ANY, "in_channels": ANY, "topk": ANY, "cal_acc": ANY, "init_cfg": ANY,
                 "dropout": ANY,
                 "loss": {**_COMMON, "loss_weight": ANY, "label_smooth_val": ANY, "mode": ANY, "reduction": ANY,
                          "use_sigmoid": ANY, "use_soft": ANY, "class_weight": ANY, "num_classes": ANY}},
        "data_preprocessor": _PREPROCESSOR,
        "train_cfg": {"augments": ANY, "probs": ANY},
        "init_cfg": ANY,
        "pretrained": ANY,
    },
    "data_preprocessor": _PREPROCESSOR,
    "dataset_type": ANY,
    "train_pipeline": _PIPELINE,
    "test_pipeline": _PIPELINE,
    "train_dataloader": _DATALOADER,
    "val_dataloader": _DATALOADER,
    "test_dataloader": _DATALOADER,
    "val_evaluator": Items({**_COMMON, "topk": ANY, "thrs": ANY, "prefix": ANY, "collect_device": ANY}),
    "test_evaluator": Items({**_COMMON, "topk": ANY, "thrs": ANY, "prefix": ANY, "collect_device": ANY}),
    "optim_wrapper": {
        **_COMMON,
        "optimizer": {**_COMMON, "lr": ANY, "momentum": ANY, "weight_decay": ANY, "nesterov": ANY, "betas": ANY,
                      "eps": ANY, "alpha": ANY, "dampening": ANY, "centered": ANY},
        "clip_grad": ANY, "paramwise_cfg": ANY, "accumulative_counts": ANY, "loss_scale": ANY, "dtype": ANY,
    },
    "param_scheduler": Items(_SCHEDULER),
    "train_cfg": {**_COMMON, "by_epoch": ANY, "max_epochs": ANY, "val_interval": ANY, "val_begin": ANY,
                  "max_iters": ANY},
    "val_cfg": {**_COMMON, "fp16": ANY},
    "test_cfg": {**_COMMON, "fp16": ANY},
    "auto_scale_lr": {"base_batch_size": ANY, "enable": ANY},
    "default_scope": ANY,
    "default_hooks": {"timer": _HOOK, "logger": _HOOK, "param_scheduler": _HOOK, "checkpoint": _HOOK,
                      "sampler_seed": _HOOK, "visualization": _HOOK},
    "custom_hooks": ANY,
    "env_cfg": {"cudnn_benchmark": ANY, "mp_cfg": {"mp_start_method": ANY, "opencv_num_threads": ANY},
                "channels_last": ANY, "dist_cfg": {"backend": ANY, "timeout": ANY}},
    "vis_backends": ANY,
    "visualizer": ANY,
    "log_level": ANY,
    "log_processor": ANY,
    "load_from": ANY,
    "resume": ANY,
    "randomness": {"seed": ANY, "deterministic": ANY, "diff_rank_seed": ANY},
    "work_dir": ANY,
    "launcher": ANY,
    "sync_bn": ANY,
    "tta_model": ANY,
    "tta_pipeline": ANY,
}


# ----------------------------------------------------------------------------------------------------------------
# Config object


class Config(dict):
    """A plain nested dict with attribute access (``cfg.model.backbone.depth``) and a pretty dump.

    Nested dicts become :class:`Config` too (also inside lists). ``filename`` is the file it was loaded from.
    """

    def __init__(self, *args, filename: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        for k, v in self.items():
            dict.__setitem__(self, k, _wrap(v))
        object.__setattr__(self, "filename", filename)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}{_suggest(name, self.keys())}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, _wrap(value))

    def __deepcopy__(self, memo):
        return Config(copy.deepcopy(dict(self), memo), filename=self.filename)

    def __reduce__(self):  # pickle as a Config (a plain dict + filename), e.g. to DataLoader workers
        return (Config, (dict(self),), {"filename": self.filename})

    def __setstate__(self, state):
        object.__setattr__(self, "filename", state.get("filename"))

    def to_dict(self) -> dict:
        """A deep copy as built-in dicts and lists: what to store in a checkpoint or JSON."""
        return _unwrap(self)

    @property
    def pretty_text(self) -> str:
        """The resolved config as a Python file (``key = value`` per top-level key) that :func:`load_config` reads."""
        lines = [f"# resolved from {self.filename}" if self.filename else "# resolved config"]
        for k, v in self.items():
            text = pprint.pformat(_unwrap(v), width=100 - len(k) - 3, sort_dicts=False)
            lines.append(f"{k} = " + text.replace("\n", "\n" + " " * (len(k) + 3)))
        return "\n".join(lines) + "\n"

    def dump(self, path: str | os.PathLike) -> Path:
        """Write :attr:`pretty_text` to ``path`` atomically."""
        from ._io import atomic_write

        return atomic_write(path, lambda tmp: tmp.write_text(self.pretty_text, encoding="utf-8"))


def _wrap(v: Any) -> Any:
    if isinstance(v, Config):
        return v
    if isinstance(v, dict):
        return Config(v)
    if isinstance(v, list):
        return [_wrap(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_wrap(x) for x in v)
    return v


def _unwrap(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _unwrap(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unwrap(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_unwrap(x) for x in v)
    return v


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ----------------------------------------------------------------------------------------------------------------
# Reading files, _base_ inheritance, merging

_PLAIN = (dict, list, tuple, str, int, float, bool, type(None))


def _exec_file(path: Path) -> dict:
    """Run a config file; returns its public top-level names (and ``_base_``), deep-copied so no two share a dict."""
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {str(path)!r}: {e.strerror or e}") from None
    namespace: dict[str, Any] = {"__file__": str(path), "__name__": "__cspnet_config__"}
    try:
        exec(compile(source, str(path), "exec"), namespace)
    except SyntaxError as e:
        raise ConfigError(f"config {str(path)!r} line {e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:  # any error raised by the config's own code
        raise ConfigError(f"config {str(path)!r} failed to run: {type(e).__name__}: {e}") from None
    out = {}
    for k, v in namespace.items():
        if k.startswith("__") or isinstance(v, (types.ModuleType, types.FunctionType, type)):
            continue
        if k.startswith("_") and k != "_base_":
            continue
        if not _is_plain(v):
            raise ConfigError(
                f"config {str(path)!r}: {k} holds a {type(v).__name__}; configs may only hold dicts, lists, tuples, "
                f"strings, numbers, booleans and None"
            )
        out[k] = copy.deepcopy(v)
    return out


def _is_plain(v: Any) -> bool:
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_plain(x) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return all(_is_plain(x) for x in v)
    return isinstance(v, _PLAIN)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict:
    """Recursive merge: dicts merge key by key, anything else in ``override`` replaces. Returns a new dict.

    A dict in ``override`` holding ``_delete_=True`` replaces the value in ``base`` instead of merging into it.
    """
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping):
            v = dict(v)
            delete = bool(v.pop("_delete_", False))
            if not delete and isinstance(out.get(k), Mapping):
                out[k] = merge(out[k], v)
            else:
                out[k] = _strip_delete(v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _strip_delete(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _strip_delete(x) for k, x in v.items() if k != "_delete_"}
    if isinstance(v, list):
        return [_strip_delete(x) for x in v]
    return copy.deepcopy(v)


def _read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"config _base_ cycle: {cycle}")
    own = _exec_file(path)
    bases = own.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, (list, tuple)) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"config {str(path)!r}: _base_ must be a path or a list of paths, got {bases!r}")
    merged: dict = {}
    origin: dict[str, Path] = {}
    for b in bases:
        bpath = (path.parent / b).resolve()
        if not bpath.is_file():
            raise ConfigError(f"config {str(path)!r}: _base_ file {b!r} not found (looked for {str(bpath)!r})")
        values = _read_with_bases(bpath, (*chain, path))
        for k in values:
            if k in merged:
                raise ConfigError(
                    f"config {str(path)!r}: key {k!r} is defined by two _base_ files ({str(origin[k])!r} and "
                    f"{str(bpath)!r}); define it in one of them, or in {path.name} itself"
                )
            origin[k] = bpath
        merged.update(values)
    return merge(merged, own)


def load_config(
    path: str | os.PathLike,
    cfg_options: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    schema: Mapping[str, Any] | None = SCHEMA,
) -> Config:
    """Read a config file with its ``_base_`` files, apply overrides, check every key.

    Args:
        path: the ``.py`` file.
        cfg_options: ``["a.b=1", "c=[x,y]"]`` as given on the command line, or an already parsed
            ``{"a.b": 1}`` mapping (see :func:`parse_cfg_options`).
        schema: the keys to accept (default :data:`SCHEMA`; pass ``merge(SCHEMA, extra)`` to accept more keys,
            or None to skip validation).

    Raises:
        ConfigError: for a missing file, a syntax error, a bad ``_base_``, a malformed override, or an unknown key
            (the message names it and the closest known key).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.suffix != ".py":
        raise ConfigError(f"config {str(path)!r}: only Python config files (.py) are supported")
    values = _read_with_bases(path)
    if schema is not None:
        validate(values, schema, where=f"config {str(path)!r}")
    if cfg_options:
        options = parse_cfg_options(cfg_options) if not isinstance(cfg_options, Mapping) else dict(cfg_options)
        for key, value in options.items():
            _set_by_path(values, key, value)
            if schema is not None:
                validate(values, schema, where=f"--cfg-options {key}")
    return Config(values, filename=str(path))


# ----------------------------------------------------------------------------------------------------------------
# --cfg-options


def parse_cfg_options(options: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x,y]", "d=x,y"]`` -> ``{"a.b": 1, "c": ["x", "y"], "d": ["x", "y"]}`` (mmengine's rules).

    Raises:
        ConfigError: for an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in options:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--cfg-options {item!r}: expected KEY=VALUE, e.g. model.head.num_classes=10")
        out[key] = parse_value(raw.strip())
    return out


_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_value(raw: str) -> Any:
    """One override value: a Python literal, ``true``/``false``/``none``, a list ``[a,b]``/``a,b``, or a string."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if raw.lower() in _WORDS:
        return _WORDS[raw.lower()]
    if len(raw) >= 2 and (raw[0], raw[-1]) in (("[", "]"), ("(", ")")):
        items = [parse_value(p.strip()) for p in _split_top_level(raw[1:-1]) if p.strip()]
        return items if raw[0] == "[" else tuple(items)
    parts = _split_top_level(raw)
    if len(parts) > 1:
        return [parse_value(p.strip()) for p in parts if p.strip()]
    return raw


def _split_top_level(s: str) -> list[str]:
    """Split on commas that are not inside brackets or quotes."""
    parts, depth, quote, start = [], 0, None, 0
    for i, c in enumerate(s):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _set_by_path(values: dict, key: str, value: Any) -> None:
    node: Any = values
    parts = key.split(".")
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, (list, tuple)):
            if not re.fullmatch(r"-?\d+", part) or not -len(node) <= int(part) < len(node):
                raise ConfigError(
                    f"--cfg-options {key}: {'.'.join(parts[:depth]) or 'the value'} is a list of {len(node)} items; "
                    f"{part!r} is not an index in it"
                )
            if isinstance(node, tuple):
                raise ConfigError(f"--cfg-options {key}: {'.'.join(parts[:depth])} is a tuple; replace it whole")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if part not in node or node[part] is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(
                f"--cfg-options {key}: {'.'.join(parts[:depth])} is a {type(node).__name__}, not a dict or list; "
                f"cannot set {where}"
            )


# ----------------------------------------------------------------------------------------------------------------
# Validation


def validate(values: Mapping[str, Any], schema: Mapping[str, Any] = SCHEMA, where: str = "config") -> None:
    """Check every key of ``values`` against ``schema``.

    Raises:
        ConfigError: ``"{where}: unknown key 'model.backbone.dpeth' (did you mean 'model.backbone.depth'?)"``.
    """
    _check(values, schema, "", where)


def _check(value: Any, schema: Any, path: str, where: str) -> None:
    if schema is ANY or value is None:
        return
    if isinstance(schema, Items):
        for i, item in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            _check(item, schema.schema, f"{path}.{i}" if isinstance(value, (list, tuple)) else path, where)
        return
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {path or 'the config'} must be a dict, got {type(value).__name__} {value!r}")
    if isinstance(schema, Typed):
        kind = value.get("type")
        if kind not in schema.schemas:
            if schema.open:
                return
            raise ConfigError(
                f"{where}: {path}.type={kind!r} is not supported{_suggest(str(kind), schema.schemas)}; "
                f"supported: {', '.join(schema.schemas)}"
            )
        schema = schema.schemas[kind]
    for k, v in value.items():
        key_path = f"{path}.{k}" if path else k
        if k not in schema:
            raise ConfigError(f"{where}: unknown key {key_path!r}{_suggest_path(path, k, schema)}")
        _check(v, schema[k], key_path, where)


def _suggest_path(path: str, key: str, schema: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, [k for k in schema if k != "_delete_"], n=1, cutoff=0.6)
    if not close:
        return f"; known keys here: {', '.join(k for k in schema if k != '_delete_')}"
    return f" (did you mean {(path + '.' if path else '') + close[0]!r}?)"


# ----------------------------------------------------------------------------------------------------------------
# From a config to this library's objects

# mmpretrain backbone (type, depth) -> this library's architecture name.
BACKBONES: dict[tuple[str, int], str] = {
    ("CSPDarkNet", 53): "cspdarknet53",
    ("CSPResNet", 50): "cspresnet50",
    ("CSPResNeXt", 50): "cspresnext50",
}
# mmpretrain backbone argument -> CSPNet argument (only where the names differ).
_BACKBONE_ARGS = {"in_channels": "in_chans", "out_indices": "out_indices", "frozen_stages": "frozen_stages",
                  "norm_eval": "norm_eval", "drop_path_rate": "drop_path_rate", "zero_init_last": "zero_init_last"}


def _get(cfg: Mapping, dotted: str, default: Any = ...) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is not ...:
                return default
            raise ConfigError(f"config {_name(cfg)}: {dotted} is missing")
        node = node[part]
    return node


def _name(cfg: Mapping) -> str:
    return repr(getattr(cfg, "filename", None) or "<dict>")


def model_name(cfg: Mapping) -> str:
    """The :func:`cspnet.get_model` name of ``cfg.model.backbone``: ``CSPDarkNet``/53 -> ``"cspdarknet53"``, etc."""
    if _get(cfg, "model.type", "ImageClassifier") != "ImageClassifier":
        raise ConfigError(f"config {_name(cfg)}: model.type={cfg['model']['type']!r}; only 'ImageClassifier' is supported")
    kind, depth = _get(cfg, "model.backbone.type"), _get(cfg, "model.backbone.depth")
    try:
        return BACKBONES[(kind, depth)]
    except KeyError:
        known = ", ".join(f"type={t!r} depth={d}" for t, d in BACKBONES)
        raise ConfigError(
            f"config {_name(cfg)}: model.backbone type={kind!r} depth={depth!r} is not a CSPNet this library "
            f"builds; known: {known}"
        ) from None


def model_kwargs(cfg: Mapping) -> dict[str, Any]:
    """Keyword arguments for :func:`cspnet.get_model` besides the name: ``num_classes`` and backbone options.

    Raises:
        ConfigError: for a neck other than global average pooling, a head other than a linear one, or a head
            ``in_channels`` that differs from the backbone's output width.
    """
    from .models.cspnet import ARCHS

    name = model_name(cfg)
    neck = _get(cfg, "model.neck", None)
    if neck is not None and neck.get("type") != "GlobalAveragePooling":
        raise ConfigError(f"config {_name(cfg)}: model.neck.type={neck.get('type')!r}; only GlobalAveragePooling")
    head = _get(cfg, "model.head", None) or {}
    if head.get("type", "LinearClsHead") != "LinearClsHead":
        raise ConfigError(f"config {_name(cfg)}: model.head.type={head.get('type')!r}; only LinearClsHead")
    kwargs: dict[str, Any] = {"num_classes": int(head.get("num_classes", 1000))}
    backbone = _get(cfg, "model.backbone")
    for k, v in backbone.items():
        if k in _BACKBONE_ARGS:
            kwargs[_BACKBONE_ARGS[k]] = tuple(v) if isinstance(v, list) else v
    if "dropout" in head:
        kwargs["drop_rate"] = float(head["dropout"])
    width = ARCHS[name].stages()[-1].out_chs
    if head.get("in_channels") is not None and head["in_channels"] != width:
        raise ConfigError(
            f"config {_name(cfg)}: model.head.in_channels={head['in_channels']} but {name} outputs {width} channels"
        )
    return kwargs


def build_model(cfg: Mapping, pretrained: Any = False, device: Any = None, **overrides):
    """``get_model(model_name(cfg), pretrained, device=device, **model_kwargs(cfg), **overrides)``, in eval mode.

    The model's ``transform`` is set to the config's :func:`eval_preset`.
    """
    from .data.transforms import EvalTransform
    from .zoo import get_model

    model = get_model(model_name(cfg), pretrained=pretrained, device=device, **{**model_kwargs(cfg), **overrides})
    if hasattr(model, "transform"):
        model.transform = EvalTransform(eval_preset(cfg))
    return model


def _preprocessor(cfg: Mapping) -> Mapping:
    # As mmpretrain's get_model: the model's own data_preprocessor wins over the top-level one.
    return _get(cfg, "model.data_preprocessor", None) or _get(cfg, "data_preprocessor", None) or {}


def normalization(cfg: Mapping) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` per RGB channel on the 0-255 scale, from the data preprocessor.

    Raises:
        ConfigError: for ``to_rgb=False``: this library decodes RGB and does not feed BGR to the network.
    """
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD

    pre = _preprocessor(cfg)
    if pre.get("to_rgb", True) is False:
        raise ConfigError(
            f"config {_name(cfg)}: data_preprocessor.to_rgb=False (BGR input) is not supported: images are decoded "
            f"as RGB; set to_rgb=True and give mean/std in RGB order"
        )
    mean, std = tuple(pre.get("mean", IMAGENET_MEAN)), tuple(pre.get("std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"config {_name(cfg)}: data_preprocessor mean/std must have 3 values, got {mean} / {std}")
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)  # type: ignore[return-value]


def _pipeline(cfg: Mapping, which: str) -> list:
    steps = _get(cfg, f"{which}_dataloader.dataset.pipeline", None)
    if steps is None:
        steps = _get(cfg, "train_pipeline" if which == "train" else "test_pipeline", None)
    if not steps:
        raise ConfigError(f"config {_name(cfg)}: {which}_dataloader.dataset.pipeline is missing")
    return list(steps)


def _interp(step: Mapping, default: str = "bilinear") -> str:
    from .data.transforms import _INTERPOLATION

    interp = step.get("interpolation", default)  # mmcv's default is bilinear
    if interp not in _INTERPOLATION:
        raise ConfigError(f"{step['type']}.interpolation={interp!r}; choose from {sorted(_INTERPOLATION)}")
    if step.get("backend", "cv2") != "pillow":
        # mmcv resizes with OpenCV by default; this library only resizes with Pillow, whose bicubic/bilinear
        # differ from OpenCV's by a few grey levels. The CSPNet configs all say backend='pillow'.
        import logging

        logging.getLogger("cspnet").warning(
            "%s backend=%r: resizing with Pillow instead (pixels may differ slightly from OpenCV's)",
            step["type"], step.get("backend", "cv2"),
        )
    return interp


def eval_preset(cfg: Mapping, which: str = "test"):
    """The :class:`~cspnet.data.transforms.EvalPreset` of ``{which}_dataloader``'s pipeline.

    The pipeline must be ``LoadImageFromFile``, ``ResizeEdge(scale, edge='short')``, ``CenterCrop(crop_size)``,
    ``PackInputs`` (the CSPNet configs' shape); mean/std come from the data preprocessor.

    Raises:
        ConfigError: naming any step or argument this library does not implement.
    """
    from .data.transforms import EvalPreset

    resize = crop = None
    interpolation = "bilinear"
    for i, step in enumerate(_pipeline(cfg, which)):
        kind = step.get("type")
        where = f"{which}_dataloader.dataset.pipeline.{i} ({kind})"
        if kind in ("LoadImageFromFile", "PackInputs"):
            continue
        if kind == "ResizeEdge" and resize is None and crop is None:
            if step.get("edge", "short") != "short":
                raise ConfigError(f"config {_name(cfg)}: {where}: edge={step['edge']!r}; only edge='short'")
            resize, interpolation = int(step["scale"]), _interp(step)
        elif kind == "CenterCrop" and crop is None:
            size = step["crop_size"]
            if isinstance(size, (list, tuple)):
                if len(set(size)) != 1:
                    raise ConfigError(f"config {_name(cfg)}: {where}: only square crops, got crop_size={size}")
                size = size[0]
            crop = int(size)
        else:
            raise ConfigError(
                f"config {_name(cfg)}: {where} is not supported in an eval pipeline; expected LoadImageFromFile, "
                f"ResizeEdge(scale, edge='short'), CenterCrop(crop_size), PackInputs"
            )
    if resize is None or crop is None:
        raise ConfigError(f"config {_name(cfg)}: {which} pipeline needs a ResizeEdge and a CenterCrop")
    mean, std = normalization(cfg)
    try:
        return EvalPreset(resize, crop, interpolation, mean, std)
    except ValueError as e:
        raise ConfigError(f"config {_name(cfg)}: {which} pipeline: {e}") from None


@dataclass(frozen=True)
class TrainPipeline:
    """The training augmentation of a config: mmpretrain's ``RandomResizedCrop`` then ``RandomFlip``.

    ``crop``: output side; ``scale``: range of the crop's area as a fraction of the image (``crop_ratio_range``);
    ``ratio``: range of its aspect ratio w/h (``aspect_ratio_range``); ``max_attempts``: tries before mmpretrain's
    fallback (a centre crop with the aspect ratio clamped to ``ratio``); ``interpolation``: Pillow filter;
    ``flip_prob``: probability of a horizontal flip; ``mean``/``std``: RGB on 0-255, applied on the batch.
    """

    crop: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    max_attempts: int = 10
    interpolation: str = "bilinear"
    flip_prob: float = 0.0
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)


def train_pipeline(cfg: Mapping) -> TrainPipeline:
    """The :class:`TrainPipeline` of ``train_dataloader.dataset.pipeline``.

    Raises:
        ConfigError: for a step other than LoadImageFromFile, RandomResizedCrop, RandomFlip (horizontal), PackInputs.
    """
    found: dict[str, Any] = {}
    for i, step in enumerate(_pipeline(cfg, "train")):
        kind = step.get("type")
        where = f"config {_name(cfg)}: train_dataloader.dataset.pipeline.{i} ({kind})"
        if kind in ("LoadImageFromFile", "PackInputs"):
            continue
        if kind == "RandomResizedCrop" and "crop" not in found:
            scale = step["scale"]
            if isinstance(scale, (list, tuple)):
                if len(set(scale)) != 1:
                    raise ConfigError(f"{where}: only square crops, got scale={scale}")
                scale = scale[0]
            found.update(crop=int(scale), interpolation=_interp(step),
                         scale=tuple(float(x) for x in step.get("crop_ratio_range", (0.08, 1.0))),
                         ratio=tuple(float(x) for x in step.get("aspect_ratio_range", (3 / 4, 4 / 3))),
                         max_attempts=int(step.get("max_attempts", 10)))
        elif kind == "RandomFlip" and "flip_prob" not in found:
            if step.get("direction", "horizontal") != "horizontal":
                raise ConfigError(f"{where}: direction={step['direction']!r}; only 'horizontal'")
            prob = step.get("prob")  # mmcv: prob=None never flips
            if isinstance(prob, (list, tuple)):
                raise ConfigError(f"{where}: prob={prob!r}; give one probability (for 'horizontal')")
            found["flip_prob"] = float(prob or 0.0)
        else:
            raise ConfigError(
                f"{where} is not supported in a train pipeline; expected LoadImageFromFile, RandomResizedCrop, "
                f"RandomFlip(direction='horizontal'), PackInputs"
            )
    if "crop" not in found:
        raise ConfigError(f"config {_name(cfg)}: the train pipeline needs a RandomResizedCrop")
    mean, std = normalization(cfg)
    return TrainPipeline(mean=mean, std=std, **found)


def dataset_kwargs(cfg: Mapping, which: str = "test") -> dict[str, Any]:
    """Arguments of :func:`cspnet.data.datasets.build_dataset` for ``{which}_dataloader.dataset``.

    Returns ``dict(kind='ImageNet'|'CustomDataset', root, split, ann_file, data_prefix, classes)``; ``root`` is
    as written (relative to the working directory, like mmpretrain).
    """
    ds = _get(cfg, f"{which}_dataloader.dataset")
    kind = ds.get("type", "ImageNet")
    if kind not in ("ImageNet", "CustomDataset"):
        raise ConfigError(
            f"config {_name(cfg)}: {which}_dataloader.dataset.type={kind!r}; supported: 'ImageNet', 'CustomDataset'"
        )
    classes = ds.get("classes")
    if classes is None and isinstance(ds.get("metainfo"), Mapping):
        classes = ds["metainfo"].get("classes")
    prefix = ds.get("data_prefix")
    if isinstance(prefix, Mapping):  # mmengine also allows data_prefix=dict(img_path='val')
        prefix = prefix.get("img_path", prefix.get("img"))
    return dict(kind=kind, root=ds.get("data_root", ""), split=ds.get("split") or None,
                ann_file=ds.get("ann_file") or None, data_prefix=prefix or None, classes=classes)


def loader_kwargs(cfg: Mapping, which: str = "test") -> dict[str, Any]:
    """``dict(batch_size, num_workers)`` of ``{which}_dataloader`` (defaults 32 and 5, as mmpretrain's)."""
    dl = _get(cfg, f"{which}_dataloader")
    return dict(batch_size=int(dl.get("batch_size", 32)), num_workers=int(dl.get("num_workers", 5)))
