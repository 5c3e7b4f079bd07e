"""Atomic file writes: a reader sees the old file or the complete new one, never a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success it replaces ``dst`` in one ``os.replace``.

    The temporary file lives in the destination folder so the final rename never crosses file systems. On any
    exception (including KeyboardInterrupt) the temporary file is removed and ``dst`` is left untouched.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # flush to disk before the rename makes the file visible
            os.fsync(f.fileno())
        os.replace(tmp_path, dst)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(dst: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``dst`` atomically. Returns ``Path(dst)``."""
    with atomic_path(dst) as tmp:
        write(tmp)
    return Path(dst)
