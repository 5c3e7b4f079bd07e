"""Optimizer, learning-rate schedule and weight EMA, from their specs (:mod:`cspnet.config.resolve`).

``optim_wrapper`` and ``param_scheduler`` mean what they mean in mmengine. The schedule is a pure function of the
global step (:class:`LRSchedule`), so resuming needs nothing but the step: no scheduler state to drift.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

from ..config import EmaSpec, OptimSpec, Scheduler
from ..errors import ConfigError

_INF = 10**18  # a range without an end

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float, norm_mult: float = 1.0, bias_mult: float = 1.0) -> list[dict]:
    """Trainable parameters (frozen ones are left out) in groups by weight decay: mmengine's ``norm_decay_mult``
    (BatchNorm/GroupNorm/LayerNorm weights and biases) and ``bias_decay_mult`` (other biases) multiply
    ``weight_decay``; both 1 (mmpretrain's CSP configs) give one group, whose weight decay also hits BN and biases."""
    groups: dict[float, list[nn.Parameter]] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                mult = norm_mult if isinstance(module, _NORMS) else bias_mult if name == "bias" else 1.0
                groups.setdefault(weight_decay * mult, []).append(p)
    # a stable order (decay groups by value) so a resumed optimizer state maps onto the same groups
    return [{"params": ps, "weight_decay": wd} for wd, ps in sorted(groups.items(), reverse=True)]


def build_optimizer(model: nn.Module, spec: OptimSpec, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """``torch.optim.<spec.kind>`` (or :class:`RMSpropTF` for ``'RMSpropTF'``) over ``model``'s trainable
    parameters. ``lr_scale`` multiplies the configured ``lr`` (``--auto-scale-lr``); each group's starting ``lr`` is
    kept as ``initial_lr``, what :class:`LRSchedule` scales."""
    groups = param_groups(model, spec.weight_decay, spec.norm_decay_mult, spec.bias_decay_mult)
    if not groups:
        raise ConfigError("the model has no trainable parameters (are all stages frozen?)")
    kind = RMSpropTF if spec.kind == "RMSpropTF" else getattr(torch.optim, spec.kind)
    try:
        optimizer = kind(groups, lr=spec.lr * lr_scale, **dict(spec.args))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"optim_wrapper.optimizer: {e}") from None
    for g in optimizer.param_groups:
        g["initial_lr"] = g["lr"]
    return optimizer


class RMSpropTF(torch.optim.Optimizer):
    """timm's ``RMSpropTF``: RMSprop as TensorFlow's, so TF (EfficientNet-style) hyper-parameters carry over.

    Per step, with ``g`` the gradient (plus ``weight_decay * p`` unless ``decoupled_decay``, which instead scales
    ``p`` by ``1 - lr * weight_decay`` first)::

        ms = ms + (1 - alpha) * (g**2 - ms)             # starts at ones (torch's RMSprop: zeros)
        mg = mg + (1 - alpha) * (g - mg)                # centered only; then ms - mg**2 replaces ms below
        mom = momentum * mom + lr * g / sqrt(ms + eps)  # eps inside the sqrt; p -= mom
        # lr_in_momentum=False: mom = momentum * mom + g / sqrt(ms + eps); p -= lr * mom
        # momentum=0: p -= lr * g / sqrt(ms + eps)

    timm's ``caution`` and ``corrected_weight_decay`` options are left out.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-2,
        alpha: float = 0.9,
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        decoupled_decay: bool = False,
        lr_in_momentum: bool = True,
    ):
        for name, v in (("lr", lr), ("alpha", alpha), ("eps", eps), ("weight_decay", weight_decay),
                        ("momentum", momentum)):
            if not v >= 0:
                raise ValueError(f"RMSpropTF: {name} must be >= 0, got {v}")
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
                        decoupled_decay=decoupled_decay, lr_in_momentum=lr_in_momentum)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    if momentum > 0:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    if group["centered"]:
                        state["grad_avg"] = torch.zeros_like(p)
                if wd != 0:
                    if group["decoupled_decay"]:
                        p.mul_(1 - lr * wd)
                    else:
                        g = g.add(p, alpha=wd)
                ms = state["square_avg"]
                ms.add_(g * g - ms, alpha=1 - group["alpha"])  # TF's order of operations
                if group["centered"]:
                    mg = state["grad_avg"]
                    mg.add_(g - mg, alpha=1 - group["alpha"])
                    avg = ms.addcmul(mg, mg, value=-1).add_(group["eps"]).sqrt_()
                else:
                    avg = ms.add(group["eps"]).sqrt_()
                if momentum > 0:
                    buf = state["momentum_buffer"].mul_(momentum)
                    if group["lr_in_momentum"]:
                        p.sub_(buf.addcdiv_(g, avg, value=lr))
                    else:
                        p.add_(buf.addcdiv_(g, avg), alpha=-lr)
                else:
                    p.addcdiv_(g, avg, value=-lr)
        return loss


class LRSchedule:
    """mmengine's param schedulers as a closed-form function of the global optimizer step.

    Each :class:`~cspnet.config.Scheduler` acts on steps ``[begin, end)`` and, as mmengine's chained schedulers,
    keeps its last value after ``end``. Entries apply in order. ``MultiStepLR`` milestones and ``StepLR`` steps count
    from ``begin``, as in mmengine. The closed form equals mmengine's recursive one when ranges do not overlap (the
    usual warmup-then-decay chain); with overlapping ranges each entry multiplies the result of the earlier ones.
    ``schedule``: the entries (``param_scheduler``); ``iters_per_epoch``: optimizer steps per epoch.
    """

    def __init__(self, schedule: Sequence[Scheduler], iters_per_epoch: int):
        self.iters_per_epoch = max(1, int(iters_per_epoch))
        self.entries = list(schedule)

    def lr(self, step: int, base_lr: float) -> float:
        """The learning rate at optimizer step ``step`` (0-based) for a group whose configured lr is ``base_lr``."""
        lr = base_lr
        for e in self.entries:
            unit = self.iters_per_epoch if e.by_epoch else 1  # optimizer steps per schedule step
            begin, end = e.begin * unit, e.end * unit if e.end is not None else _INF
            if step < begin:
                continue
            k = min(step, end - 1) - begin  # steps since begin, clamped to the range's last step
            if not e.per_iter:
                k -= k % unit  # epoch-based: the value changes only at epoch boundaries
            if e.kind in ("LinearLR", "ConstantLR"):
                total = end - begin - (1 if e.per_iter else unit)
                if e.kind == "ConstantLR":  # mmengine: factor until the last step of the range, then 1
                    lr *= e.start if k < total else 1.0
                else:
                    lr *= e.start + (e.stop - e.start) * (k / total if total > 0 else 1.0)
            elif e.kind == "MultiStepLR":
                lr *= e.gamma ** sum(k >= m * unit for m in e.steps)
            elif e.kind == "StepLR":
                lr *= e.gamma ** (k // (e.steps[0] * unit))
            else:
                eta_min = e.eta_min_ratio * base_lr if e.eta_min_ratio is not None else e.eta_min
                lr = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * k / (e.t_max * unit))) / 2
        return lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's ``lr`` for ``step``; returns the first group's."""
        for g in optimizer.param_groups:
            g["lr"] = self.lr(step, g["initial_lr"])
        return optimizer.param_groups[0]["lr"]


class ModelEma:
    """mmengine's ``ExponentialMovingAverage``: ``ema = (1 - momentum) * ema + momentum * weights`` every
    ``interval`` updates, from optimizer step ``begin_iter`` and epoch ``begin_epoch`` on (a plain copy before). BN
    statistics and other buffers are copied from the model, or averaged too with ``update_buffers``. mmengine's
    default ``momentum`` 2e-4 is timm's ``decay`` 0.9998."""

    def __init__(self, model: nn.Module, spec: EmaSpec):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.momentum, self.interval, update_buffers = spec.momentum, spec.interval, spec.update_buffers
        self.begin_iter, self.begin_epoch = spec.begin_iter, spec.begin_epoch
        self.steps = 0  # updates since the start, as mmengine's counter (the first one copies)
        params = {name for name, _ in self.module.named_parameters()}
        state = self.module.state_dict()
        self.averaged = [k for k, v in state.items() if v.is_floating_point() and (update_buffers or k in params)]
        self.copied = [k for k in state if k not in self.averaged]  # the rest: taken from the model as it is

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
