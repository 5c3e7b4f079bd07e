"""Weight files, read and written safely: safetensors, or ``torch.load(weights_only=True)``.

A pickle that would import or call anything beyond tensors and plain containers is refused before any of its code
runs, and so is an object graph no trainer writes (a container inside itself, nesting hundreds deep, millions of
objects), before anything walks it. Training checkpoints (a run's whole state, timm's, mmengine's with its EMA),
mmpretrain's ``{'state_dict', 'meta'}`` and timm's flat files are unwrapped here, in one place, into the weights
they hold and what they say about their model.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import reprlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .._io import atomic_write
from ..errors import CheckpointError
from ..spec import ModelSpec
from .sources import describe_bytes, file_format

log = logging.getLogger("cspnet")

# Containers in which training scripts nest the weights, most specific first. EMA weights are preferred, as timm's
# validate.py --use-ema and mmpretrain's EMA hook do for evaluation, when asked or when the run chose its best
# epoch by them (see unwrap).
_WRAPPERS = ("state_dict", "model", "module", "net")
_EMA_WRAPPERS = ("ema", "state_dict_ema", "model_ema", "ema_state_dict")
# The step counters an averaged model saves beside its weights: mmengine's BaseAveragedModel ``steps`` and
# torch.optim.swa_utils.AveragedModel's ``n_averaged``; neither is a weight.
_EMA_COUNTERS = ("steps", "n_averaged")
# Prefixes added by DataParallel/DDP, torch.compile and EMA wrappers, in any combination and order
# (``_orig_mod.module.`` is a compiled DDP model).
_PREFIXES = ("module.", "_orig_mod.")
# Bounds on a loaded object graph. A training checkpoint nests ~6 deep and holds ~10^4 objects (tensors, optimizer
# state, 625 ints of Python's RNG state); 100 and 500 000 are far beyond any trainer and keep a walk under a second.
_MAX_DEPTH = 100
_MAX_OBJECTS = 500_000
_MAX_WRAPPERS = 8  # state_dict > model > module ... deeper than this is no trainer's layout
_CONTAINERS = (dict, list, tuple, set, frozenset)  # all that torch.load(weights_only=True) builds besides leaves
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BLOCKED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # torch's "Unsupported global: GLOBAL argparse.Namespace was not..."


def check_graph(obj: Any, source: str) -> None:
    """Refuse an object graph that would make a reader loop or recurse: a container inside itself (pickle can build
    one), containers nested more than ``_MAX_DEPTH`` deep, more than ``_MAX_OBJECTS`` objects. Iterative, and each
    container is walked once however often it is shared, so the check itself is bounded.

    Raises:
        CheckpointError: naming ``source`` and what was found.
    """
    open_, done = set(), set()  # ids of the containers on the current path / fully walked
    stack: list[tuple[Any, int, bool]] = [(obj, 0, False)]
    count = 1
    while stack:
        node, depth, leaving = stack.pop()
        if leaving:
            open_.discard(id(node))
            done.add(id(node))
            continue
        if not isinstance(node, _CONTAINERS) or id(node) in done:
            continue
        if id(node) in open_:
            raise CheckpointError(f"{source} is refused: a {type(node).__name__} in it contains itself (a cyclic "
                                  f"object graph, which no trainer writes and which would make readers loop "
                                  f"forever). Use another copy of the weights, or re-save them alone "
                                  f"(torch.save(model.state_dict()))")
        if depth >= _MAX_DEPTH:
            raise CheckpointError(f"{source} is refused: it nests containers more than {_MAX_DEPTH} deep, which no "
                                  f"trainer writes. Use another copy of the weights, or re-save them alone")
        children = [c for kv in node.items() for c in kv] if isinstance(node, dict) else list(node)
        count += len(children)
        if count > _MAX_OBJECTS:
            raise CheckpointError(f"{source} is refused: it holds more than {_MAX_OBJECTS:,} objects, far more than "
                                  f"any checkpoint. Use another copy of the weights, or re-save them alone")
        open_.add(id(node))
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children)


def _refused_pickle(path: Path, error: Exception) -> CheckpointError:
    """torch's refusal, shortened to what matters: which global the pickle needs, and the way out for a trusted file.
    torch's own text runs to a paragraph with ANSI bold codes and advice to load with ``weights_only=False``."""
    text = _ANSI.sub("", str(error))
    m = _BLOCKED_GLOBAL.search(text)
    if m:
        needs = f"the Python global {m.group(1)}"
    else:  # e.g. "Unsupported operand 149": the unpickler's own reason, without torch's framing
        reason = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
        needs = f"something else ({(reason[0] if reason else text)[:200].rstrip('.')})"
    return CheckpointError(
        f"refused to load {str(path)!r}: it is a pickle that needs {needs}, beyond the tensors and plain containers "
        f"that torch.load(weights_only=True) allows. Loading it could run code. If you trust its origin (e.g. a timm "
        f"train.py checkpoint, which holds argparse.Namespace), rewrite it once as a safe file: `cspnet convert "
        f"{shlex.quote(str(path))} OUT.safetensors --to cspnet --unsafe-load`, then use OUT.safetensors."
    )


def _torch_load(path: Path, unsafe: bool) -> Any:
    if unsafe:
        log.warning("--unsafe-load: unpickling %s with weights_only=False: any code in it RUNS NOW, with your "
                    "permissions. Do this only for a file from a source you trust.", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refused_pickle(path, e) from None


def read_file(path: str | os.PathLike, unsafe_load: bool = False) -> tuple[Any, dict]:
    """Read a ``.safetensors`` or torch file. Returns ``(object, metadata)`` (metadata: safetensors header dict).
    ``unsafe_load``: unpickle with ``weights_only=False`` (runs any code in the file; ``cspnet convert --unsafe-load``
    only, to turn a trusted file into a safe one).

    Raises:
        CheckpointError: naming the file, if it is missing, not a weights file, truncated, corrupt, an unsafe pickle
            or an object graph no trainer writes (see :func:`check_graph`).
    """
    path = Path(path)
    source = f"checkpoint {str(path)!r}"
    if not path.is_file():
        raise CheckpointError(f"{source} does not exist or is not a file")
    with open(path, "rb") as f:
        head = f.read(64)
    kind = file_format(head)
    if kind is None and head:
        raise CheckpointError(f"{source} is {describe_bytes(head)}, not a weights file (a zip-based or legacy torch "
                              f"file, or safetensors): it starts with {head[:40]!r}. Give the weights file itself")
    try:
        if kind == "safetensors" or path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        obj = _torch_load(path, unsafe_load)
    except CheckpointError:
        raise
    except Exception as e:  # zip/pickle/safetensors parse errors of a truncated or corrupt file
        msg = _ANSI.sub("", str(e)).splitlines()[0][:200] if str(e) else ""
        raise CheckpointError(
            f"{source} ({path.stat().st_size} bytes) is truncated or corrupt: {type(e).__name__}: {msg}. Delete it "
            f"and download or copy it again."
        ) from None
    check_graph(obj, source)
    return obj, {}


def _strip_prefixes(key: str) -> str:
    while True:
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if prefix is None:
            return key
        key = key[len(prefix):]


_WEIGHT_NAMES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def extract_state_dict(obj: Any, source: str = "checkpoint", prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint (``prefer_ema``: its EMA weights, an error if it has none), with
    ``module.``/``_orig_mod.`` prefixes stripped in any combination and averaged models' step counters dropped.
    Entries of a flat dict that are not tensors (``epoch``, ``arch``) are skipped, unless named like a weight."""
    if prefer_ema:
        obj, _ = _choose(obj, source, True)
    return _tensors_of(obj, source)


def _tensors_of(obj: Any, source: str) -> dict[str, torch.Tensor]:
    seen: set[int] = set()
    for _ in range(_MAX_WRAPPERS):
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{source}: holds a {type(obj).__name__} where a dict of tensors should be")
        if id(obj) in seen:  # {'state_dict': <itself>}; check_graph refuses it first for files
            raise CheckpointError(f"{source} is refused: its dicts contain themselves (a cyclic object graph)")
        seen.add(id(obj))
        tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
        if obj and tensors == len(obj):
            break
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None and tensors:
            break  # a flat state dict with some other entries
        if inner is None:
            what = "is empty" if not obj else f"has top-level keys {list(obj)[:8]}"
            raise CheckpointError(f"{source}: found no state dict (tensors under 'state_dict', 'model' or at the "
                                  f"top level); it {what}")
        obj = inner
    else:
        raise CheckpointError(f"{source}: its weights are nested more than {_MAX_WRAPPERS} dicts deep "
                              f"({', '.join(_WRAPPERS)}), which no trainer writes")
    out: dict[str, torch.Tensor] = {}
    skipped = []
    for k, v in obj.items():
        if not isinstance(k, str):
            raise CheckpointError(f"{source}: state dict key {k!r} is a {type(k).__name__}, not a parameter name")
        if not isinstance(v, torch.Tensor):
            if k.rsplit(".", 1)[-1] in _WEIGHT_NAMES:
                raise CheckpointError(f"{source}: {k!r} holds a {type(v).__name__}, not a tensor; the file is "
                                      f"damaged or was written by a tool cspnet does not know")
            skipped.append(k)
            continue
        if k in _EMA_COUNTERS and v.ndim == 0 and not v.is_floating_point():
            continue
        name = _strip_prefixes(k)
        if name in out:
            raise CheckpointError(f"{source}: two entries are both {name!r} once the module./_orig_mod. prefixes "
                                  f"are stripped (one of them {k!r}); which one holds the weights is unclear")
        out[name] = v
    if skipped:
        log.info("%s: skipped %d entries that are not tensors: %s", source, len(skipped), ", ".join(skipped[:8]))
    if not out:
        raise CheckpointError(f"{source}: holds no tensors")
    return out


def _choose(obj: Any, source: str, use_ema: bool | None) -> tuple[Any, bool]:
    """``(the part of a checkpoint holding the weights wanted, whether they are EMA weights)``.

    mmengine's EMAHook swaps the two before saving (so that ``state_dict`` deploys the averaged weights): its
    ``state_dict`` holds the EMA weights and ``ema_state_dict`` (``steps`` + ``module.<name>``) the raw ones.
    """
    ema_key = next((k for k in _EMA_WRAPPERS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)
                    and obj[k]), None)
    if ema_key == "ema_state_dict" and "steps" in obj[ema_key] and isinstance(obj.get("state_dict"), Mapping):
        return (obj["ema_state_dict"], False) if use_ema is False else (obj["state_dict"], True)
    if use_ema is None:
        best = obj.get("best") if ema_key else None
        use_ema = isinstance(best, Mapping) and best.get("metric") == "ema_top1"
    if not use_ema:
        return obj, False
    if ema_key is None:
        keys = list(obj)[:8] if isinstance(obj, Mapping) else []
        raise CheckpointError(f"{source} holds no EMA weights (none of {', '.join(_EMA_WRAPPERS)}; its keys: "
                              f"{keys}); drop use_ema / --ema to load its weights")
    return obj[ema_key], True


@dataclass(frozen=True)
class WeightsFile:
    """One weights file, read: its state dict (in the file's layout) and what the file says about its model. ``spec``:
    the :class:`~cspnet.models.ModelSpec` cspnet recorded (None for other files); ``classes``: class names from an
    mmpretrain ``meta`` (when there is no spec); ``ema``: whether the EMA weights were taken. ``path`` is None for a
    checkpoint given in memory."""

    path: Path | None
    state_dict: dict[str, torch.Tensor]
    spec: ModelSpec | None
    classes: tuple[str, ...] | None
    ema: bool


def unwrap(obj: Any, source: str, use_ema: bool | None = None, header: Mapping[str, str] | None = None,
           path: Path | None = None) -> WeightsFile:
    """The weights in a loaded checkpoint ``obj`` (a file's, or one given in memory) and what it says about its
    model; ``source`` names it in errors, ``header``: a safetensors file's metadata. ``use_ema``: see
    :func:`read_weights`."""
    if path is None:
        check_graph(obj, source)  # a file's object was checked as it was read
    chosen, ema = _choose(obj, source, use_ema)
    sd = _tensors_of(chosen, source)
    header = header or {}
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    try:
        spec_meta = json.loads(header["spec"]) if "spec" in header else meta.get("spec")
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{source}: its 'spec' metadata is not JSON ({e})") from None
    spec = ModelSpec.from_meta(spec_meta, source) if spec_meta is not None else None
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    classes = dataset_meta.get("classes") or meta.get("CLASSES")  # mmpretrain 1.x / mmcls 0.x
    if classes is not None and not (isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{source}: meta.dataset_meta.classes must be a list of class names, got "
                              f"{reprlib.repr(classes)}")
    return WeightsFile(path, sd, spec, tuple(classes) if classes else None, ema)


def read_weights(path: str | os.PathLike, use_ema: bool | None = None, *, unsafe_load: bool = False) -> WeightsFile:
    """Read any weights file. ``use_ema``: True takes the EMA weights (an error if there are none); None takes them
    when the file's training run selected its best epoch by the EMA's accuracy (and for mmengine's checkpoints,
    whose ``state_dict`` holds them); False never. ``unsafe_load``: see :func:`read_file`."""
    obj, header = read_file(path, unsafe_load)
    return unwrap(obj, f"checkpoint {str(path)!r}", use_ema, header, Path(path))


def save_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, layout: str,
                    spec: ModelSpec | None = None) -> Path:
    """Write a state dict atomically: ``.safetensors`` (the spec as JSON metadata) or a torch file. A torch file is
    saved flat (as timm's) when there is no spec; else as ``{'state_dict': ..., 'meta': {'spec': ...}}``, which timm and
    mmpretrain both read (mmpretrain's layout always has this shape, with ``meta.dataset_meta.classes`` as mmpretrain's
    published checkpoints)."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        header = {"format": "pt", "layout": layout, **({"spec": json.dumps(spec.to_meta())} if spec else {})}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    meta: dict[str, Any] = {"spec": spec.to_meta()} if spec else {}
    if layout == "mmpretrain" and spec is not None and spec.classes is not None:
        meta["dataset_meta"] = {"classes": list(spec.classes)}
    obj: Any = {"state_dict": tensors, "meta": meta} if meta or layout == "mmpretrain" else tensors
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
