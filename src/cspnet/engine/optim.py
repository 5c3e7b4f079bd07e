"""Optimizer, learning-rate schedule and weight EMA from mmpretrain-shaped config dicts.

``optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))`` and ``param_scheduler=[dict(type='LinearLR', ...),
dict(type='CosineAnnealingLR', ...)]`` mean what they mean in mmengine. The schedule is a pure function of the
global step (:class:`LRSchedule`), so resuming needs nothing but the step: no scheduler state to drift.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError

OPTIMIZERS = {
    "SGD": torch.optim.SGD,
    "AdamW": torch.optim.AdamW,
    "Adam": torch.optim.Adam,
    # torch's RMSprop, not timm's TF-style RMSpropTF (epsilon inside the sqrt) of the published RA recipe.
    "RMSprop": torch.optim.RMSprop,
}
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_PARAMWISE_KEYS = {"norm_decay_mult", "bias_decay_mult"}


def _check_keys(section: str, given: Mapping, allowed: set[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def param_groups(model: nn.Module, weight_decay: float, paramwise_cfg: Mapping[str, float] | None = None) -> list[dict]:
    """Trainable parameters in groups by weight decay (frozen ones are left out).

    ``paramwise_cfg``: mmengine's ``norm_decay_mult`` (BatchNorm/GroupNorm/LayerNorm weights and biases) and
    ``bias_decay_mult`` (other biases) multiply ``weight_decay``. Without it there is one group, as mmpretrain's
    CSP configs (whose weight decay also hits BN and biases).
    """
    paramwise_cfg = dict(paramwise_cfg or {})
    _check_keys("optim_wrapper.paramwise_cfg", paramwise_cfg, _PARAMWISE_KEYS)
    norm_mult = float(paramwise_cfg.get("norm_decay_mult", 1.0))
    bias_mult = float(paramwise_cfg.get("bias_decay_mult", 1.0))
    groups: dict[float, list[nn.Parameter]] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if isinstance(module, _NORMS):
                mult = norm_mult
            elif name == "bias":
                mult = bias_mult
            else:
                mult = 1.0
            groups.setdefault(weight_decay * mult, []).append(p)
    # a stable order (decay groups by value) so a resumed optimizer state maps onto the same groups
    return [{"params": ps, "weight_decay": wd} for wd, ps in sorted(groups.items(), reverse=True)]


def build_optimizer(model: nn.Module, optim_wrapper: Mapping[str, Any], lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """The torch optimizer of ``optim_wrapper['optimizer']`` over ``model``'s trainable parameters.

    ``lr_scale`` multiplies the configured ``lr`` (``--auto-scale-lr``). Each group's starting ``lr`` is kept as
    ``initial_lr``, the value :class:`LRSchedule` scales.
    """
    cfg = dict(optim_wrapper.get("optimizer") or {})
    kind = cfg.pop("type", "SGD")
    if kind not in OPTIMIZERS:
        raise ConfigError(f"optim_wrapper.optimizer.type={kind!r} is not supported; choose from {sorted(OPTIMIZERS)}")
    if "lr" not in cfg:
        raise ConfigError("optim_wrapper.optimizer needs an 'lr'")
    cfg["lr"] = float(cfg["lr"]) * lr_scale
    weight_decay = float(cfg.pop("weight_decay", 0.0))
    groups = param_groups(model, weight_decay, optim_wrapper.get("paramwise_cfg"))
    if not groups:
        raise ConfigError("the model has no trainable parameters (are all stages frozen?)")
    try:
        optimizer = OPTIMIZERS[kind](groups, **cfg)
    except TypeError as e:
        raise ConfigError(f"optim_wrapper.optimizer: {e}") from None
    for g in optimizer.param_groups:
        g["initial_lr"] = g["lr"]
    return optimizer


# --------------------------------------------------------------------------------------------------------------
# Learning-rate schedule
# --------------------------------------------------------------------------------------------------------------
_SCHEDULERS = {
    "LinearLR": {"start_factor", "end_factor"},
    "ConstantLR": {"factor"},
    "MultiStepLR": {"milestones", "gamma"},
    "StepLR": {"step_size", "gamma"},
    "CosineAnnealingLR": {"T_max", "eta_min", "eta_min_ratio"},
}
_COMMON = {"type", "by_epoch", "begin", "end", "convert_to_iter_based"}
_INF = 10**9  # mmengine's "no end"


class LRSchedule:
    """mmengine's param schedulers as a closed-form function of the global optimizer step.

    Each entry acts on steps ``[begin, end)`` (epochs when ``by_epoch``; ``convert_to_iter_based=True`` updates
    every iteration instead of at epoch boundaries) and, as mmengine's chained schedulers, keeps its last value
    after ``end``. Entries apply in list order. ``MultiStepLR`` milestones and ``StepLR`` steps count from
    ``begin``, as in mmengine. The closed form equals mmengine's recursive one when ranges do not overlap (the
    usual warmup-then-decay chain); with overlapping ranges each entry multiplies the result of the earlier ones.

    Args:
        param_scheduler: a dict or list of dicts (``type`` in ``LinearLR``, ``ConstantLR``, ``MultiStepLR``,
            ``StepLR``, ``CosineAnnealingLR``).
        iters_per_epoch: optimizer steps per epoch.
    """

    def __init__(self, param_scheduler: Mapping | Sequence[Mapping] | None, iters_per_epoch: int):
        if param_scheduler is None:
            param_scheduler = []
        elif isinstance(param_scheduler, Mapping):
            param_scheduler = [param_scheduler]
        self.iters_per_epoch = max(1, int(iters_per_epoch))
        self.entries = [self._parse(i, dict(s)) for i, s in enumerate(param_scheduler)]

    def _parse(self, i: int, s: dict) -> dict:
        where = f"param_scheduler[{i}]"
        kind = s.get("type")
        if kind not in _SCHEDULERS:
            raise ConfigError(f"{where}.type={kind!r} is not supported; choose from {sorted(_SCHEDULERS)}")
        _check_keys(where, s, _COMMON | _SCHEDULERS[kind])
        by_epoch = bool(s.get("by_epoch", True))
        # unit: optimizer steps per schedule step; per_iter: the value changes every iteration
        unit = self.iters_per_epoch if by_epoch else 1
        per_iter = not by_epoch or bool(s.get("convert_to_iter_based", False))
        begin, end = int(s.get("begin", 0)), s.get("end", _INF)
        end = _INF if end is None or end >= _INF else int(end)
        if end <= begin:
            raise ConfigError(f"{where}: end={end} must be larger than begin={begin}")
        e = {"type": kind, "unit": unit, "per_iter": per_iter, "begin": begin * unit,
             "end": end * unit if end < _INF else _INF}
        if kind in ("LinearLR", "ConstantLR"):
            if end >= _INF:
                raise ConfigError(f"{where}: {kind} needs an 'end'")
            e["start"] = float(s.get("start_factor", s.get("factor", 1 / 3)))
            e["stop"] = float(s.get("end_factor", 1.0)) if kind == "LinearLR" else e["start"]
        elif kind == "MultiStepLR":
            e["milestones"] = sorted(int(m) * unit for m in s.get("milestones", ()))
            e["gamma"] = float(s.get("gamma", 0.1))
        elif kind == "StepLR":
            if "step_size" not in s:
                raise ConfigError(f"{where}: StepLR needs 'step_size'")
            e["step_size"] = int(s["step_size"]) * unit
            e["gamma"] = float(s.get("gamma", 0.1))
        else:  # CosineAnnealingLR
            t_max = s.get("T_max", (end - begin) if end < _INF else None)
            if t_max is None:
                raise ConfigError(f"{where}: CosineAnnealingLR needs 'T_max' or an 'end'")
            e["t_max"] = int(t_max) * unit
            e["eta_min"], e["eta_min_ratio"] = float(s.get("eta_min", 0.0)), s.get("eta_min_ratio")
        return e

    def _local(self, e: dict, step: int) -> int | None:
        """Steps since ``begin``, clamped to the range's last step; None before ``begin``."""
        if step < e["begin"]:
            return None
        k = min(step, e["end"] - 1) - e["begin"]
        if not e["per_iter"]:
            k -= k % e["unit"]  # epoch-based: the value changes only at epoch boundaries
        return k

    def lr(self, step: int, base_lr: float) -> float:
        """The learning rate at optimizer step ``step`` (0-based) for a group whose configured lr is ``base_lr``."""
        lr = base_lr
        for e in self.entries:
            k = self._local(e, step)
            if k is None:
                continue
            kind = e["type"]
            if kind in ("LinearLR", "ConstantLR"):
                total = e["end"] - e["begin"] - (1 if e["per_iter"] else e["unit"])
                if kind == "ConstantLR":  # mmengine: factor until the last step of the range, then 1
                    lr *= e["start"] if k < total else 1.0
                else:
                    lr *= e["start"] + (e["stop"] - e["start"]) * (k / total if total > 0 else 1.0)
            elif kind == "MultiStepLR":
                lr *= e["gamma"] ** sum(k >= m for m in e["milestones"])
            elif kind == "StepLR":
                lr *= e["gamma"] ** (k // e["step_size"])
            else:
                eta_min = e["eta_min_ratio"] * base_lr if e["eta_min_ratio"] is not None else e["eta_min"]
                lr = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * k / e["t_max"])) / 2
        return lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's ``lr`` for ``step``; returns the first group's."""
        for g in optimizer.param_groups:
            g["lr"] = self.lr(step, g["initial_lr"])
        return optimizer.param_groups[0]["lr"]


# --------------------------------------------------------------------------------------------------------------
# EMA of the weights
# --------------------------------------------------------------------------------------------------------------
class ModelEma:
    """mmengine's ``ExponentialMovingAverage``: ``ema = (1 - momentum) * ema + momentum * weights`` every
    ``interval`` updates, from optimizer step ``begin_iter`` and epoch ``begin_epoch`` on (a plain copy before). BN
    statistics and other buffers are copied from the model, or averaged too with ``update_buffers``. mmengine's
    default ``momentum`` 2e-4 is timm's ``decay`` 0.9998."""

    def __init__(self, model: nn.Module, momentum: float, interval: int = 1, update_buffers: bool = False,
                 begin_iter: int = 0, begin_epoch: int = 0, **_):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.momentum, self.interval, self.update_buffers = momentum, interval, update_buffers
        self.begin_iter, self.begin_epoch = begin_iter, begin_epoch
        self.steps = 0  # updates since the start, as mmengine's counter (the first one copies)
        params = {name for name, _ in self.module.named_parameters()}
        state = self.module.state_dict()
        self.averaged = [k for k, v in state.items() if v.is_floating_point() and (update_buffers or k in params)]
        averaged = set(self.averaged)
        self.copied = [k for k in state if k not in averaged]  # the rest: taken from the model as it is

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, epoch: int) -> None:
        """Call after optimizer step ``step`` (1-based) of epoch ``epoch`` (0-based)."""
        ema_sd, sd = self.module.state_dict(), model.state_dict()
        started = step >= self.begin_iter and epoch + 1 >= self.begin_epoch
        copy_all = not started or self.steps == 0
        if not copy_all and self.steps % self.interval == 0:
            torch._foreach_lerp_([ema_sd[k] for k in self.averaged], [sd[k] for k in self.averaged], self.momentum)
        for k in ema_sd if copy_all else self.copied:
            ema_sd[k].copy_(sd[k])
        self.steps += started
