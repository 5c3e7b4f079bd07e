"""Distributed runs started by ``torchrun``: process-group setup, rank helpers, rank-0 logging, object gathering.

``torchrun --nproc-per-node N tools/test.py ... --launcher pytorch`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them. Every helper also works
without a process group (one process: rank 0 of 1), so callers never branch on it."""

from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from ..errors import CheckpointError, InvalidOptionError

T = TypeVar("T")

@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine, and the
    ``device`` it should compute on (``cuda:<local_rank>`` under torchrun with CUDA)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def valid_devices() -> list[str]:
    """The devices this process can compute on: ``cpu``, then ``cuda`` and ``cuda:<i>`` per visible GPU, ``mps``
    and ``xpu`` where available."""
    found = ["cpu"]
    for kind in ("cuda", "xpu"):
        backend = getattr(torch, kind, None)
        if backend is not None and backend.is_available():
            found += [kind, *(f"{kind}:{i}" for i in range(backend.device_count()))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def default_device(device: str | torch.device | None = None, name: str = "--device") -> torch.device:
    """``device`` as given, else ``cuda`` when available, else ``cpu``.

    Raises:
        InvalidOptionError: ``device`` is not a device name, or not one this machine has (``cuda`` without CUDA, a
            GPU index past the last one); the message, naming the option ``name``, lists :func:`valid_devices`.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    valid = valid_devices()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidOptionError(f"{name} {str(device)!r} is not a device; valid here: {', '.join(valid)}") from None
    if dev.type == "cpu":
        return dev
    # torch only finds out at the first tensor moved there (an AssertionError "Torch not compiled with CUDA
    # enabled", or "invalid device ordinal" deep in the model build): say so now, with what there is instead.
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = ("this torch build has no CUDA" if torch.version.cuda is None else
               "no GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")
        raise InvalidOptionError(f"{name} {str(device)!r}: CUDA is not available ({why}); valid here: "
                                 f"{', '.join(valid)}")
    if (str(dev) if dev.index is not None else dev.type) not in valid:  # meta, a GPU past the last, an absent mps
        raise InvalidOptionError(f"{name} {str(device)!r} is not available on this machine; valid here: "
                                 f"{', '.join(valid)}")
    return dev


def init_distributed(launcher: str = "none", device: str | torch.device | None = None,
                     timeout_s: float = 1800, backend: str = "nccl") -> DistInfo:
    """Join the process group that ``torchrun`` describes (``launcher='pytorch'``), or run alone (``'none'``).

    ``backend='nccl'`` (``env_cfg.dist_cfg.backend``): NCCL on CUDA, gloo on CPU; ``'gloo'``: gloo everywhere. Under
    torchrun with CUDA, a process uses GPU ``LOCAL_RANK`` (an explicit ``device='cuda:1'`` wins, for one process).

    Raises:
        InvalidOptionError: for an unknown launcher, or ``'pytorch'`` without torchrun's environment.
    """
    if launcher not in ("none", "pytorch"):
        raise InvalidOptionError(f"--launcher {launcher!r}: choose 'none' or 'pytorch' (torchrun)")
    if launcher == "none":
        return DistInfo(0, 1, 0, default_device(device))
    missing = [v for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise InvalidOptionError(f"--launcher pytorch needs the environment torchrun sets ({', '.join(missing)} "
                                 f"missing): run `torchrun --nproc-per-node N {os.path.basename(sys.argv[0])} ... "
                                 f"--launcher pytorch`")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    dev = default_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            if local >= torch.cuda.device_count():  # more processes per node than GPUs
                raise InvalidOptionError(f"LOCAL_RANK {local} has no GPU: this machine has "
                                         f"{torch.cuda.device_count()}; start at most that many processes per node "
                                         f"(torchrun --nproc-per-node)")
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" and backend == "nccl" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, dev)


def destroy_distributed() -> None:
    """Leave the process group, if any (call at the end of a torchrun process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (any picklable object), in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def rank0_first(build: Callable[[], T], what: str) -> T:
    """``build()`` on rank 0, then on the other ranks: only one process downloads a checkpoint, the others read the
    cache it filled. A failure on rank 0 is told to the others, which raise :class:`~cspnet.errors.CheckpointError`
    ("rank 0 could not load ``what``: ...") instead of waiting for it."""
    if get_rank() == 0:
        try:
            result = build()
        except Exception as e:  # any failure: the other ranks would otherwise wait for rank 0 until the timeout
            broadcast_object(str(e) or type(e).__name__)
            raise
        broadcast_object(None)
        return result
    failure = broadcast_object(None)
    if failure is not None:
        raise CheckpointError(f"rank 0 could not load {what}: {failure}")
    return build()


class RankFilter(logging.Filter):
    """Pass every record on rank 0; on other ranks only warnings and errors, prefixed with the rank. A filter on the
    handler, rather than a patched ``print``, keeps other libraries' output and tracebacks intact."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if self.rank == 0:
            return True
        if record.levelno < logging.WARNING:
            return False
        prefix = f"[rank {self.rank}] "
        if not str(record.msg).startswith(prefix):
            record.msg = prefix + str(record.msg)
        return True


def setup_logging(rank: int | None = None, level: int | str = logging.INFO,
                  log_file: str | os.PathLike | None = None) -> None:
    """Log the ``cspnet`` logger to stderr (and ``log_file`` on rank 0), filtered by :class:`RankFilter`. Replaces
    handlers installed by an earlier call, so calling it again (e.g. in tests) does not duplicate lines."""
    rank = get_rank() if rank is None else rank
    logger = logging.getLogger("cspnet")
    for h in list(logger.handlers):
        if getattr(h, "_cspnet", False):
            logger.removeHandler(h)
            h.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for h in handlers:
        h._cspnet = True  # type: ignore[attr-defined]
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        h.addFilter(RankFilter(rank))
        logger.addHandler(h)
    logger.setLevel(level)
    logger.propagate = False
