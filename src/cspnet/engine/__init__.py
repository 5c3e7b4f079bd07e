"""Evaluation and the distributed plumbing shared with training.

``evaluate``: exact top-1/top-5 over a dataset, in one process or many (torchrun). ``distributed``: process-group
setup from torchrun's environment, rank helpers, rank-0 logging and object gathering.
"""

from .distributed import (
    DistInfo,
    all_gather_object,
    broadcast_object,
    destroy_distributed,
    get_rank,
    get_world_size,
    init_distributed,
    setup_logging,
)
from .evaluate import EvalResult, ShardSampler, build_eval_loader, evaluate, forward_batch

__all__ = [
    "DistInfo",
    "EvalResult",
    "ShardSampler",
    "all_gather_object",
    "broadcast_object",
    "build_eval_loader",
    "destroy_distributed",
    "evaluate",
    "forward_batch",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "setup_logging",
]
