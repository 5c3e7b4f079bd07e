"""Configs: reading mmpretrain-shaped files (:mod:`.load`) and resolving them into typed specs (:mod:`.resolve`).

``eval_spec(load_config("configs/cspnet/cspdarknet50_8xb32_in1k.py"))`` is what ``cspnet test`` evaluates,
``train_spec(...)`` what ``cspnet train`` trains; :data:`SCHEMA` lists every key a config may hold.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from . import load
from .load import ANY, Config, Fixed, Items, Typed, Variable, merge, parse_cfg_options, parse_value, validate
from .resolve import (SCHEMA, CheckpointPolicy, EmaSpec, EvalSpec, LoaderSpec, LossSpec, Metrics, OptimSpec,
                      RuntimeSpec, Scheduler, Source, TrainSpec, data_spec, eval_preset, eval_spec, head_width,
                      load_from, loader_spec, model_spec, train_pipeline, train_spec)


def load_config(path: str | os.PathLike, cfg_options: Sequence[str] | Mapping[str, Any] | None = None, *,
                schema: Mapping[str, Any] | None = SCHEMA) -> Config:
    """Read a config file with its ``_base_`` files and ``cfg_options``, checking every key against :data:`SCHEMA`
    (see :func:`cspnet.config.load.load_config`)."""
    return load.load_config(path, cfg_options, schema=schema)


__all__ = ["ANY", "SCHEMA", "CheckpointPolicy", "Config", "EmaSpec", "EvalSpec", "Fixed", "Items", "LoaderSpec",
           "LossSpec", "Metrics", "OptimSpec", "RuntimeSpec", "Scheduler", "Source", "TrainSpec", "Typed", "Variable",
           "data_spec", "eval_preset", "eval_spec", "head_width", "load_config", "load_from", "loader_spec", "merge",
           "model_spec", "parse_cfg_options", "parse_value", "train_pipeline", "train_spec", "validate"]
