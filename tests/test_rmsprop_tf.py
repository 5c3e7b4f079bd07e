"""RMSpropTF (:mod:`cspnet.engine.optim`) against TensorFlow's RMSprop update written out here by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cspnet.config import OptimSpec
from cspnet.engine.optim import RMSpropTF, build_optimizer
from cspnet.errors import ConfigError

P0 = np.array([0.5, -1.0, 2.0, 0.1])
C = np.array([1.0, 3.0, 0.5, 2.0])
D = np.array([0.2, -0.4, 0.0, 1.0])


def _grad(p):
    return C * p + D  # of sum(C * p**2 / 2 + D * p): a gradient that changes as p moves


def _by_hand(steps, lr, alpha=0.9, eps=1e-10, weight_decay=0.0, momentum=0.0, centered=False, decoupled=False,
             lr_in_momentum=True):
    p, ms, mg, mom = P0.copy(), np.ones(4), np.zeros(4), np.zeros(4)
    for _ in range(steps):
        g = _grad(p)
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        ms = alpha * ms + (1 - alpha) * g**2
        mg = alpha * mg + (1 - alpha) * g
        denom = np.sqrt(ms - mg**2 + eps) if centered else np.sqrt(ms + eps)
        if momentum == 0:
            p = p - lr * g / denom
        elif lr_in_momentum:
            mom = momentum * mom + lr * g / denom
            p = p - mom
        else:
            mom = momentum * mom + g / denom
            p = p - lr * mom
    return p


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(momentum=0.9),
        dict(momentum=0.9, lr_in_momentum=False),
        dict(momentum=0.9, weight_decay=0.1),
        dict(momentum=0.9, weight_decay=0.1, decoupled_decay=True),
        dict(momentum=0.5, centered=True, alpha=0.8, eps=1e-3),
    ],
)
def test_matches_tf_formula(kwargs):
    p = torch.tensor(P0, requires_grad=True)
    opt = RMSpropTF([p], lr=0.05, **kwargs)
    for _ in range(5):
        opt.zero_grad()
        (torch.tensor(C) * p**2 / 2 + torch.tensor(D) * p).sum().backward()
        opt.step()
    expected = _by_hand(5, 0.05, decoupled=kwargs.pop("decoupled_decay", False), **kwargs)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    assert not np.allclose(expected, P0)


def test_build_optimizer_and_errors():
    model = nn.Linear(3, 2)
    spec = OptimSpec(kind="RMSpropTF", lr=0.1, args=(("alpha", 0.9), ("eps", 1e-3), ("momentum", 0.9)))
    opt = build_optimizer(model, spec, lr_scale=0.5)
    assert isinstance(opt, RMSpropTF)
    assert opt.param_groups[0]["lr"] == opt.param_groups[0]["initial_lr"] == 0.05
    assert opt.param_groups[0]["eps"] == 1e-3
    with pytest.raises(ConfigError, match="alpha"):
        build_optimizer(model, OptimSpec(kind="RMSpropTF", lr=0.1, args=(("alpha", -1.0),)))
    with pytest.raises(ConfigError, match="caution"):
        build_optimizer(model, OptimSpec(kind="RMSpropTF", lr=0.1, args=(("caution", True),)))
