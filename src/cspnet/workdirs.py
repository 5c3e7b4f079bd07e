"""A work dir's run folders: each run writes into its own ``<work_dir>/<YYYYmmdd_HHMMSS>/`` (as mmengine's log
folders), so two runs in one work dir never touch each other's files; ``run.lock`` marks a live one. Torch-free, so
``cspnet plot`` finds runs without importing it."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from pathlib import Path
from typing import Iterator

from .errors import TrainingError

LAST = "last_checkpoint"  # a text file naming the run's newest checkpoint, as mmengine's
LOCK = "run.lock"
_RUN_NAME = re.compile(r"\d{8}_\d{6}(_\d+)?")  # a run folder: its start time (and a counter, if two start at once)


def new_run_dir(work_dir: str | os.PathLike) -> Path:
    """Create ``<work_dir>/<YYYYmmdd_HHMMSS>`` for a new run; a run started in the same second gets ``_1``, ``_2``."""
    stamp, n = time.strftime("%Y%m%d_%H%M%S"), 0
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    while True:
        path = Path(work_dir) / (stamp if n == 0 else f"{stamp}_{n}")
        try:
            path.mkdir()  # atomic: of two runs starting at once, one gets the name and the other tries the next
            return path
        except FileExistsError:
            n += 1


def run_dirs(work_dir: str | os.PathLike) -> list[Path]:
    """The run folders of ``work_dir``, oldest first (their names are their start times)."""
    work_dir = Path(work_dir)
    found = [p for p in work_dir.iterdir() if _RUN_NAME.fullmatch(p.name) and p.is_dir()] if work_dir.is_dir() else []
    return sorted(found, key=lambda p: tuple(int(x) for x in p.name.split("_")))


def find_latest(work_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint of the newest run in ``work_dir`` that has one (``work_dir`` may also be a run folder,
    or hold checkpoints itself, as before run folders): what ``last_checkpoint`` names, else the newest
    ``epoch_*.pth``/``iter_*.pth``; None if none."""
    for folder in [*reversed(run_dirs(work_dir)), Path(work_dir)]:
        last = folder / LAST
        if last.is_file():
            p = folder / last.read_text().strip()
            if p.is_file():
                return p
        found = [p for p in folder.glob("*.pth") if re.fullmatch(r"(epoch|iter)_\d+\.pth", p.name)]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    return None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/run.lock`` while a run writes there; a second process (a resume of a live run) gets a
    :class:`TrainingError` naming the holder. An ``flock``, not the file's existence, is the lock: the kernel
    releases it when the holder dies, even by SIGKILL, so a stale file never blocks the next run."""
    import fcntl

    path, held = run_dir / LOCK, False
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process"
            raise TrainingError(f"{str(run_dir)!r} belongs to a live training run ({holder}); let it finish or stop "
                                f"it first, or start a new run (without --resume: it gets a folder of its "
                                f"own)") from None
        held = True
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        if held:
            path.unlink(missing_ok=True)
        os.close(fd)
