"""Config files: plain Python in mmpretrain's shape, read without mmengine.

A config file is Python that assigns plain values (dicts, lists, tuples, strings, numbers, booleans, None) to
top-level names. Reading one runs it, as mmengine does: a config file is code, so load only files you trust (the
README's "Trust" note; checkpoints, by contrast, never run code). ``_base_ = '../_base_/x.py'`` (or a list) inherits
other files, relative to the file: bases are merged in order (a key defined by two bases is an error, as in
mmengine), then the file's own values are merged in recursively (dicts merge key by key, everything else, lists
included, replaces; ``_delete_=True`` inside a dict replaces the inherited dict instead of merging).
``--cfg-options a.b.c=VALUE`` overrides a key afterwards; an integer part indexes a list
(``test_dataloader.dataset.pipeline.1.scale=256``); VALUE is a Python literal (``0.1``, ``(1, 5)``, ``None``,
``true``), a list (``[a,b]`` or ``a,b``) or else a string.

Every key is checked against a schema (:data:`cspnet.config.SCHEMA`, declared in :mod:`.resolve` beside the specs
that read each section), so a typo is an error that names the key and the closest known key, never silently
ignored. This module imports nothing of the library but its errors and atomic writes: turning the values into
typed specs is :mod:`.resolve`'s job.
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

from .._io import atomic_write
from ..errors import ConfigError

# --- Schema --------------------------------------------------------------------------------------------------------
# A schema is a dict of known keys; each value is the schema of that key's value: ``ANY`` (any value: the
# spec that reads it checks it), a nested dict, ``Items(schema)`` (a list of such values; a single one is accepted
# too), ``Typed({type_name: schema})`` (a dict whose allowed keys depend on its ``type``), ``Fixed`` or ``Variable``.

ANY = None


@dataclass(frozen=True)
class Items:
    """A list (or tuple) whose items follow ``schema``; a single item that is not a list is accepted too."""

    schema: Any


@dataclass(frozen=True)
class Typed:
    """A dict with a ``type`` key; ``schemas[type]`` lists its other keys."""

    schemas: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Fixed:
    """A key accepted only with one of ``values`` (its no-op settings in mmpretrain's configs); ``why`` says why
    another value is refused."""

    values: tuple
    why: str


@dataclass(frozen=True)
class Variable:
    """A top-level name a config file uses as a variable (``test_pipeline``), already copied where it is used:
    ``schema`` checks it; overriding it with ``--cfg-options`` would change nothing, so that is refused, naming
    ``target``, the key to override instead."""

    schema: Any
    target: str


# --- Config object -------------------------------------------------------------------------------------------------
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
        return atomic_write(path, lambda tmp: tmp.write_text(self.pretty_text, encoding="utf-8"))


def _wrap(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return type(v)(_wrap(x) for x in v)
    return Config(v) if isinstance(v, dict) and not isinstance(v, Config) else v


def _unwrap(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return type(v)(_unwrap(x) for x in v)
    return {k: _unwrap(x) for k, x in v.items()} if isinstance(v, dict) else v


def _suggest(name: str, known: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean {prefix + close[0]!r}?)" if close else ""


# --- Reading files, _base_ inheritance, merging ---------------------------------------------------------------------
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
        if k.startswith("_") and k != "_base_" or isinstance(v, (types.ModuleType, types.FunctionType, type)):
            continue
        if not _is_plain(v):
            raise ConfigError(f"config {str(path)!r}: {k} holds a {type(v).__name__}; configs may only hold dicts, "
                              f"lists, tuples, strings, numbers, booleans and None")
        out[k] = copy.deepcopy(v)
    return out


def _is_plain(v: Any) -> bool:
    if isinstance(v, dict):
        return all(isinstance(k, str) and _is_plain(x) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return all(_is_plain(x) for x in v)
    return isinstance(v, _PLAIN)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict:
    """A new dict: dicts merge key by key, anything else in ``override`` replaces; a dict in ``override`` holding
    ``_delete_=True`` replaces the value in ``base`` instead of merging into it."""
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
        raise ConfigError("config _base_ cycle: " + " -> ".join(str(p) for p in (*chain, path)))
    own = _exec_file(path)
    bases = own.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
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
                raise ConfigError(f"config {str(path)!r}: key {k!r} is defined by two _base_ files ({str(origin[k])!r} "
                                  f"and {str(bpath)!r}); define it in one of them, or in {path.name} itself")
            origin[k] = bpath
        merged.update(values)
    return merge(merged, own)


def load_config(path: str | os.PathLike, cfg_options: Sequence[str] | Mapping[str, Any] | None = None, *,
                schema: Mapping[str, Any] | None = None) -> Config:
    """Read a config file with its ``_base_`` files, apply overrides, check every key.

    Args:
        path: the ``.py`` file.
        cfg_options: ``["a.b=1", "c=[x,y]"]`` as given on the command line, or an already parsed
            ``{"a.b": 1}`` mapping (see :func:`parse_cfg_options`).
        schema: the keys to accept (:data:`cspnet.config.SCHEMA`; ``merge(SCHEMA, extra)`` accepts more keys);
            None skips validation.

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
            name, _, rest = key.partition(".")
            top = (schema or {}).get(name)
            if isinstance(top, Variable):
                raise ConfigError(f"--cfg-options {key}: {name} is a variable of the config file, already copied into "
                                  f"{top.target}; override {top.target}{'.' + rest if rest else ''} instead")
            _set_by_path(values, key, value)
            if schema is not None:
                validate(values, schema, where=f"--cfg-options {key}")
    return Config(values, filename=str(path))


# --- --cfg-options -------------------------------------------------------------------------------------------------
def parse_cfg_options(options: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x,y]", "d=x,y"]`` -> ``{"a.b": 1, "c": ["x", "y"], "d": ["x", "y"]}`` (mmengine's rules).

    Raises:
        ConfigError: for an item without ``=``, with an empty key, or a value nested too deeply to read.
    """
    out: dict[str, Any] = {}
    for item in options:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--cfg-options {item!r}: expected KEY=VALUE, e.g. model.head.num_classes=10")
        try:
            out[key] = parse_value(raw.strip())
        except RecursionError:  # brackets nested past Python's recursion limit
            raise ConfigError(f"--cfg-options {key}: the value nests brackets too deeply to read") from None
    return out


_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_value(raw: str) -> Any:
    """One override value: a Python literal, ``true``/``false``/``none``, ``nan``/``inf``, a list ``[a,b]``/``a,b``,
    or a string."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if raw.lower() in _WORDS:
        return _WORDS[raw.lower()]
    if raw.lower().lstrip("+-") in ("nan", "inf"):  # literal_eval does not read them
        return float(raw)
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
        parent = ".".join(parts[:depth])
        if isinstance(node, (list, tuple)):
            if not re.fullmatch(r"-?\d+", part) or not -len(node) <= int(part) < len(node):
                raise ConfigError(f"--cfg-options {key}: {parent or 'the value'} is a list of {len(node)} items; "
                                  f"{part!r} is not an index in it")
            if isinstance(node, tuple):
                raise ConfigError(f"--cfg-options {key}: {parent} is a tuple; replace it whole")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"--cfg-options {key}: {parent} is a {type(node).__name__}, not a dict or list; cannot "
                              f"set {'.'.join(parts[:depth + 1])}")
        elif depth < len(parts) - 1 and node.get(part) is None:
            node[part] = {}
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]


# --- Validation ----------------------------------------------------------------------------------------------------
def validate(value: Any, schema: Any, where: str = "config", path: str = "") -> None:
    """Check every key of ``value`` (found at ``path``) against ``schema``.

    Raises:
        ConfigError: ``"{where}: unknown key 'model.backbone.dpeth' (did you mean 'model.backbone.depth'?)"``.
    """
    if schema is ANY or value is None:
        return
    if isinstance(schema, Variable):
        return validate(value, schema.schema, where, path)
    if isinstance(schema, Fixed):
        if value not in schema.values:
            allowed = " or ".join(repr(v) for v in schema.values)
            raise ConfigError(f"{where}: {path}={value!r} is not supported (only {allowed}): {schema.why}")
        return
    if isinstance(schema, Items):
        for i, item in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            validate(item, schema.schema, where, f"{path}.{i}" if isinstance(value, (list, tuple)) else path)
        return
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {path or 'the config'} must be a dict, got {type(value).__name__} {value!r}")
    if isinstance(schema, Typed):
        kind = value.get("type")
        if kind not in schema.schemas:
            raise ConfigError(f"{where}: {path}.type={kind!r} is not supported{_suggest(str(kind), schema.schemas)}; "
                              f"supported: {', '.join(schema.schemas)}")
        schema = schema.schemas[kind]
    for k, v in value.items():
        key_path = f"{path}.{k}" if path else k
        if k not in schema:
            known = [key for key in schema if key != "_delete_"]
            hint = _suggest(k, known, path + "." if path else "") or f"; known keys here: {', '.join(known)}"
            raise ConfigError(f"{where}: unknown key {key_path!r}{hint}")
        validate(v, schema[k], where, key_path)
