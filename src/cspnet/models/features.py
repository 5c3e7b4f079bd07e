"""Backbone maps in the shape detection necks take: torchvision's ``FeaturePyramidNetwork`` and similar.

A neck wants an ordered ``{name: map}`` from fine to coarse plus the channels of each map (``in_channels_list``).
Maps are named by stride, ``c<log2 stride>`` (``c3`` = stride 8), the detection convention, so the same names mean
the same resolution on every CSP variant even though their stage indices differ (CSPDarkNet-53 has a stride-2 stage,
the CSPResNets do not). docs/features.md has the table and a worked FPN example."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .cspnet import CSPNet


def feature_names(backbone: CSPNet) -> list[str]:
    """The ``c<k>`` name of each output, in ``out_indices`` order (``c<k>`` has stride ``2**k``)."""
    return [f"c{s.bit_length() - 1}" for s in backbone.out_strides]


def as_fpn_inputs(backbone: CSPNet, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
    """``(N, 3, H, W)`` -> ``OrderedDict(c<k>: (N, C, ceil(H / 2**k), ceil(W / 2**k)))``, fine to coarse. The
    channels of the maps, in the same order, are ``backbone.out_channels`` (an FPN's ``in_channels_list``)."""
    return OrderedDict(zip(feature_names(backbone), backbone(x)))


class FeatureDict(nn.Module):
    """A backbone whose ``forward`` returns :func:`as_fpn_inputs`; ``out_channels`` lists each map's channels.
    ``nn.Sequential(FeatureDict(backbone), torchvision.ops.FeaturePyramidNetwork(list(fd.out_channels), 256))``
    gives an FPN over the backbone. Train-mode behaviour (``frozen_stages``, ``norm_eval``) is the backbone's."""

    def __init__(self, backbone: CSPNet):
        super().__init__()
        self.backbone = backbone
        self.names = feature_names(backbone)
        self.out_channels = backbone.out_channels
        self.strides = backbone.out_strides

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return as_fpn_inputs(self.backbone, x)
