"""The one weights call, ``load(model_or_spec, pretrained, **where)``: resolve (:mod:`.sources`) -> read
(:mod:`.files`) -> convert (:mod:`.convert`) -> load; and its halves, :func:`read` and :func:`load_state`."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError, InvalidOptionError
from ..models import ClassifierHead, CSPArch, CSPNet, ImageClassifier
from ..spec import ModelSpec
from . import convert
from .files import read_weights, unwrap
from .records import WEIGHTS, get_weights_info
from .sources import fetch_url, is_url, resolve

log = logging.getLogger("cspnet")

Pretrained = bool | str | os.PathLike | Mapping[str, torch.Tensor]
PUBLISHED = {w.arch for w in WEIGHTS}  # architectures with published weights (and default specs)


@dataclass(frozen=True)
class Found:
    """Weights ready to load: ``state_dict`` in the cspnet layout (checked against the architecture); ``spec``, the
    model they are of (recorded in the file by cspnet, else read from it: the published architecture's defaults,
    the head's width, mmpretrain's class names; None for an architecture outside the table); ``source`` names them
    in messages; ``ema``: the EMA weights were taken; ``layout``: the file's layout; ``borrowed``: the tensors are
    the caller's (a state dict given in memory), so a model loads copies of them."""

    state_dict: dict[str, torch.Tensor]
    spec: ModelSpec | None
    source: str
    ema: bool = False
    layout: str = "cspnet"  # the file's
    borrowed: bool = False

    @property
    def num_classes(self) -> int | None:
        """The head's width, or None for weights without a head (a backbone)."""
        head = self.state_dict.get("head.fc.weight")
        return int(head.shape[0]) if head is not None else None


def locate(pretrained: bool | str | os.PathLike, arch: str | None, **where) -> Path:
    """The file ``pretrained`` names: ``True``: the published weights of ``arch`` from the first source that has
    them; a URL (one of the record's own goes through every source); or a path. ``where``: see
    :func:`cspnet.weights.sources.resolve`."""
    if pretrained is False or not isinstance(pretrained, (bool, str, os.PathLike)):
        raise InvalidOptionError(f"pretrained={pretrained!r}: use False, True, a file path, a URL or a state dict")
    if pretrained is not True and not is_url(str(pretrained)):
        return Path(pretrained)
    if arch not in PUBLISHED:
        raise InvalidOptionError(f"pretrained={pretrained!r}: {arch or 'this model'} has no published weights; "
                                 f"give a file")
    record = get_weights_info(arch)
    if pretrained is True:
        return resolve(record.name, record.sources, **where)
    return fetch_url(str(pretrained), record.name, record.sources, **where)


def read(pretrained: Pretrained, arch: CSPArch | str | None = None, *, use_ema: bool | None = None,
         unsafe_load: bool = False, **where) -> Found:
    """resolve -> read -> convert: the weights ``pretrained`` names, for ``arch`` (None: whichever the file holds).

    ``pretrained``: True (the published weights of ``arch``), a path, a URL, or a state dict (or a whole checkpoint)
    in any layout. ``use_ema``: see :func:`cspnet.weights.files.read_weights`; True is an error for weights without
    EMA, a state dict given in memory too. ``unsafe_load``: ``cspnet convert --unsafe-load`` only (see
    :func:`cspnet.weights.files.read_file`).

    Raises:
        CheckpointError: the weights are of another architecture (named), do not fit (every key listed), or are
            not usable numbers (NaN/Inf, integer or empty tensors where floats are expected).
    """
    name = arch.name if isinstance(arch, CSPArch) else arch
    if isinstance(pretrained, Mapping):
        f = unwrap(pretrained, "state dict", use_ema)
        source = "state dict"
    else:
        f = read_weights(locate(pretrained, name, **where), use_ema, unsafe_load=unsafe_load)
        source = f"checkpoint {str(f.path)!r}"
    state_dict, recorded, classes, ema = f.state_dict, f.spec, f.classes, f.ema
    check_values(state_dict, source)
    held = recorded.arch if recorded is not None else convert.guess_arch(state_dict)
    if name is not None and held is not None and held != name:
        raise CheckpointError(f"{source} holds {held} weights, not {name}: build the model with get_model({held!r}, ...)")
    if arch is None and held is None:
        raise CheckpointError(f"{source}: its tensors fit none of the architectures ({convert.detect_layout(state_dict)} "
                              f"layout); name the model to see the mismatching keys")
    try:
        found = Found(convert.to_cspnet(state_dict, arch or held), recorded, source, ema,
                      convert.detect_layout(state_dict), borrowed=isinstance(pretrained, Mapping))
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    if recorded is None and held in PUBLISHED:
        found = dataclasses.replace(found, spec=_inferred(get_weights_info(held).spec(), found.num_classes, classes))
    return found


def check_values(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights no model should run with, naming the first bad tensors: NaN or Inf values (a diverged run, a
    damaged file: the model would print "nan% tench"), and tensors that are not dense floating point where weights
    are (int8/quantized, bool, complex, sparse, meta). Integer buffers (``num_batches_tracked``) are counters."""
    kinds, nonfinite = [], []
    for k, t in state_dict.items():
        if k.endswith(convert.OPTIONAL_SUFFIX):
            continue
        if t.layout != torch.strided or t.is_meta or not t.is_floating_point():
            what = "meta (no data)" if t.is_meta else str(t.layout) if t.layout != torch.strided else str(t.dtype)
            kinds.append(f"{k} ({what})")
        # A sum is finite only if every value is (NaN and Inf propagate): one pass, no mask the size of the tensor.
        # A sum that overflows is no proof of a bad value, so only then is every value looked at.
        elif not math.isfinite(t.sum()) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            nonfinite.append(f"{k} ({bad} of {t.numel()} values{', NaN' if bool(torch.isnan(t).any()) else ''})")
    if kinds:
        raise CheckpointError(f"{source}: {len(kinds)} tensors are not floating-point weights: {', '.join(kinds[:5])}"
                              f"{' ...' if len(kinds) > 5 else ''}. Quantized or integer weights cannot be loaded "
                              f"into this float model; use the float checkpoint")
    if nonfinite:
        raise CheckpointError(f"{source}: {len(nonfinite)} tensors hold NaN or Inf: {', '.join(nonfinite[:5])}"
                              f"{' ...' if len(nonfinite) > 5 else ''}. The file is damaged or its training diverged; "
                              f"use another checkpoint (an earlier epoch's)")


def _inferred(published: ModelSpec, width: int | None, classes: tuple[str, ...] | None) -> ModelSpec:
    """The model of a file cspnet did not write: the published one, with the file's head width (a file without a
    head keeps the published head) and mmpretrain's class names when they fit."""
    n = published.num_classes if width is None else width
    if classes is not None and len(classes) == n:
        return published.replace(num_classes=n, classes=classes)
    return published if n == published.num_classes else published.replace(num_classes=n, classes=None)


def load_state(model: ImageClassifier | CSPNet, found: Found) -> None:
    """Load ``found`` into ``model`` strictly. A model built on the meta device (``spec.build(init=False)``) takes the
    tensors themselves (``load_state_dict(assign=True)``: no copy, and no random init that the weights overwrite).
    A head of another width (or none) is left freshly initialised (a meta model's made now), as fine-tuning wants;
    the log says so."""
    backbone = model if isinstance(model, CSPNet) else model.backbone
    assign = any(t.is_meta for t in backbone.parameters())
    sd = _owned(model, found.state_dict, found.borrowed) if assign else dict(found.state_dict)
    head = {k.removeprefix("head."): sd.pop(k) for k in convert.HEAD_KEYS if k in sd}
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in sd.items()}, assign=assign)
    if backbone is model:
        return
    if head and found.num_classes == model.num_classes:
        model.head.load_state_dict(head, assign=assign)
        return
    if assign:  # not in the file: initialised as a fresh build does
        model.head = ClassifierHead(model.num_features, model.num_classes, model.head.drop.p)
    if model.num_classes:
        why = "has no head" if not head else f"has {found.num_classes} classes"
        log.info("%s %s; the %d-class head stays freshly initialised (fine-tuning)", found.source, why, model.num_classes)


def _owned(model: ImageClassifier | CSPNet, state_dict: Mapping[str, torch.Tensor], borrowed: bool
           ) -> dict[str, torch.Tensor]:
    """``state_dict`` (cspnet layout) as tensors that ``model`` (on the meta device) can take as its own: what
    copying into a built model gave (its dtypes, contiguous, 64-byte aligned), copied where someone else holds them:
    the caller (``borrowed``), or another entry sharing the memory (a file may store views of one buffer), which
    training would change with it."""
    prefix = "backbone." if isinstance(model, CSPNet) else ""
    targets = {prefix + k: v for k, v in model.state_dict(keep_vars=True).items()}
    out, storages = {}, set()
    for k, v in state_dict.items():
        t = v.detach().to(targets[k].dtype if k in targets else v.dtype).contiguous()
        storage = t.untyped_storage().data_ptr()
        # torch's allocator aligns to 64 bytes (whole AVX-512 loads); safetensors hands out tensors 8 bytes apart
        if t.data_ptr() == v.data_ptr() and (borrowed or storage in storages or t.data_ptr() % 64):
            t = t.clone()
        storages.add(storage)
        out[k] = t
    return out


def load(target: nn.Module | ModelSpec, pretrained: Pretrained, *, use_ema: bool | None = None, **where) -> nn.Module:
    """resolve -> read -> convert -> load: ``pretrained`` (see :func:`read`) into ``target``, a model or a
    :class:`~cspnet.models.ModelSpec` (built then, without the random init its weights would overwrite). Returns
    the model."""
    if isinstance(target, ModelSpec):
        found = read(pretrained, target.arch, use_ema=use_ema, **where)
        model = target.build(init=False)
    else:
        model = target
        found = read(pretrained, (model if isinstance(model, CSPNet) else model.backbone).arch, use_ema=use_ema,
                     **where)
    load_state(model, found)
    return model
