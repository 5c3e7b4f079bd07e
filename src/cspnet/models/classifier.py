"""Backbone + global average pool + linear head, with mmpretrain's ``extract_feat`` and timm's head contract."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import InvalidOptionError
from .cspnet import CSPArch, CSPNet


class ClassifierHead(nn.Module):
    """Global average pool -> dropout -> linear. ``(N, C, H, W) -> (N, num_classes)``; ``(N, C)`` if 0 classes."""

    def __init__(self, in_chs: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0 and not self.fc.weight.is_meta:  # timm and mmpretrain both init it with N(0, 0.01)
            nn.init.normal_(self.fc.weight, std=0.01)
            nn.init.zeros_(self.fc.bias)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.fc(self.drop(x))


class ImageClassifier(nn.Module):
    """A CSPNet classifier. ``model(x)``: ``(N, 3, H, W)`` float, normalised -> logits ``(N, num_classes)``. The
    state dict holds ``backbone.*`` (timm's names) and ``head.fc.*``. Attributes set from its
    :class:`~cspnet.models.ModelSpec` (:func:`cspnet.get_model`): ``name`` (the weights' or run's name),
    ``classes`` (class names or None) and ``transform`` (its eval preprocessing).

    Args:
        arch: architecture or its name.
        num_classes: classes of the linear head; 0 removes it (``model(x)`` then returns pooled features).
        drop_rate: dropout before the linear layer.
        **backbone_kwargs: :class:`CSPNet` options (``out_indices``, ``frozen_stages``, ``norm_eval``,
            ``drop_path_rate``, ...).
    """

    def __init__(self, arch: CSPArch | str, num_classes: int = 1000, drop_rate: float = 0.0, **backbone_kwargs):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 0:
            raise InvalidOptionError(f"num_classes={num_classes!r} must be a non-negative integer")
        self.backbone = CSPNet(arch, **backbone_kwargs)
        self.head = ClassifierHead(self.backbone.num_features, num_classes, drop_rate)
        self.name = self.backbone.arch.name
        self.classes: Sequence[str] | None = None
        self.transform = None

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W) -> (N, num_features, H/32, W/32)``."""
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(N, C, h, w)`` -> logits ``(N, num_classes)``, or pooled ``(N, C)`` with ``pre_logits``."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x))

    def extract_feat(self, x: torch.Tensor, stage: str = "neck") -> tuple[torch.Tensor, ...] | torch.Tensor:
        """Features as in mmpretrain's ``ImageClassifier.extract_feat``.

        Args:
            x: ``(N, 3, H, W)``.
            stage: ``"backbone"``: tuple of maps ``(N, C_i, H/s_i, W/s_i)``, one per ``backbone.out_indices``;
                ``"neck"`` (default): the same, globally average-pooled to ``(N, C_i)``;
                ``"pre_logits"``: the pooled last-stage vector ``(N, num_features)``.
        """
        if stage not in ("backbone", "neck", "pre_logits"):
            raise InvalidOptionError(f"stage={stage!r}; choose 'backbone', 'neck' or 'pre_logits'")
        if stage == "pre_logits":
            return self.head(self.backbone.forward_features(x), pre_logits=True)
        feats = self.backbone(x)
        return feats if stage == "backbone" else tuple(self.head.pool(f) for f in feats)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` (0 removes it)."""
        self.head = ClassifierHead(self.num_features, num_classes, self.head.drop.p)
        self.classes = None
