"""File writes that never leave a half-written file, and never replace what they should not.

:func:`atomic_path` writes a temporary file beside the destination and renames it into place: a reader sees the old
file or the complete new one. Before that, :func:`output_path` (which commands also call before any model work)
refuses a destination the rename would wreck or that cannot be written: a folder, a device, FIFO or socket, a
standard stream (``/dev/stdout``), an input of the command, a folder that is read-only. A symbolic link is written
through: the regular file it points to is replaced, and the link stays. A writer killed by SIGKILL leaves its
temporary file (``.{name}.{host}-{pid}.{random}.partial``); the next write to the same destination removes those
whose writer is dead, never a live one's. A write that fails for lack of space (or quota, or permission) is an error
that names the file and says so; the file that was there is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import CSPNetError, InvalidOptionError

PARTIAL = ".partial"
_STEM = 120  # of the destination's name in its partials' names: 255 bytes is the usual limit of a whole name
# Partials carry their writer's host (a hash: host names may hold dots) and pid: a pid is only meaningful on its host
# (a work dir on a shared file system is written from several).
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
# Partials of cspnet before the pid was in the name: no writer to ask, so only those untouched for a day go (every
# writer here updates its file continuously; a download stalls out after $CSPNET_DOWNLOAD_TIMEOUT seconds).
_LEGACY_PARTIAL_AGE_S = 24 * 3600
# Writes through these would reach a standard stream or another process's file descriptor, not a file.
_STREAM = re.compile(r"^/(?:proc/[^/]+/fd|dev/fd)(?:/|$)|^/dev/std(?:in|out|err)$")
_FULL_BYTES = 1 << 20  # a failed write that leaves less free space than this ran out of space
_STORAGE = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file is too large for its file system",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied", errno.EIO: "an I/O error (a failing disk or network file system?)",
            errno.EBUSY: "it is busy (a mount point, such as a file bind-mounted into a container?)"}
if hasattr(errno, "EDQUOT"):
    _STORAGE[errno.EDQUOT] = "the disk quota is exceeded"


def special_kind(mode: int) -> str:
    """What a file that is not a regular file or a folder is, by its ``st_mode``: 'FIFO (named pipe)', ..."""
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _follow_links(path: str, what: str, given: str) -> str:
    """The path a chain of symbolic links at ``path`` ends at (lexically; folders are resolved by the caller)."""
    seen: set[str] = set()
    cur = path
    while True:
        if _STREAM.match(cur):
            raise InvalidOptionError(f"{what} {given!r} leads to {cur!r}, a standard stream or file descriptor, not a "
                                     f"file: cspnet writes files whole and renames them into place; give a file path")
        if not os.path.islink(cur):
            return cur
        if cur in seen or len(seen) >= 40:
            raise InvalidOptionError(f"{what} {given!r} is a symbolic link that loops; give a file path")
        seen.add(cur)
        cur = os.path.normpath(os.path.join(os.path.dirname(cur), os.readlink(cur)))


def _read_only(folder: str) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_folder(folder: str | os.PathLike, what: str = "output folder", given: str | None = None) -> Path:
    """Refuse, naming ``what`` and the folder, a ``folder`` that cannot be created or written: a file in its place
    (or in place of a parent), or a read-only or unwritable folder (or nearest existing parent). Returns it.

    Raises:
        InvalidOptionError: as above.
    """
    folder = Path(os.path.abspath(folder))
    given = str(folder) if given is None else given
    anc = folder
    while not os.path.exists(anc) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise InvalidOptionError(f"{what} {given!r}: {str(anc)!r} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only(str(anc)) else "no write permission"
        cannot = (f"cannot write into the folder {str(anc)!r}" if anc == folder else
                  f"cannot make the folder {str(folder)!r}: {str(anc)!r} is not writable")
        raise InvalidOptionError(f"{what} {given!r}: {cannot} ({why}); choose a folder you can write to")
    return folder


def output_path(dst: str | os.PathLike, what: str = "output file",
                inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """The file a write to ``dst`` replaces: ``dst``, or the file a symbolic link there leads to. Checked without
    touching anything, so a command calls it before any work: refused (naming ``what`` and ``dst``) are a folder, a
    device, FIFO or socket (the rename would replace the device itself with a regular file), a standard stream or
    ``/proc/*/fd`` entry, a link loop, the same file as one of ``inputs`` (a path, a link to it or a hard link: the
    write would replace the input), and a folder that cannot be created or written (:func:`check_folder`).

    Raises:
        InvalidOptionError: as above.
    """
    given = str(dst)
    path = os.path.abspath(dst)
    real = os.path.realpath(_follow_links(path, what, given))  # also resolves linked folders on the way
    if _STREAM.match(real):
        raise InvalidOptionError(f"{what} {given!r} leads to {real!r}, a standard stream or file descriptor, not a "
                                 f"file; give a file path")
    through = f" (a link to {real!r})" if os.path.islink(path) else ""
    try:
        st = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):  # a new file (a parent that is a file: check_folder says so)
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise InvalidOptionError(f"{what} {given!r}{through} is a folder; give a file path")
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = special_kind(st.st_mode)
        raise InvalidOptionError(f"{what} {given!r}{through} is a {kind}, not a regular file: cspnet writes a new file "
                                 f"and renames it into place, which would put a regular file where the {kind} was; "
                                 f"give a file path")
    for inp in inputs:
        if st is not None and inp is not None and os.path.isfile(inp) and os.path.samefile(real, inp):
            raise InvalidOptionError(f"{what} {given!r}{through} is the input {str(inp)!r} itself; writing it would "
                                     f"replace the input: give another path")
    check_folder(os.path.dirname(real), what, given)
    return Path(real)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the existence check
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OverflowError, ValueError):  # not a pid this system can have
        return False
    return True


def remove_stale_partials(dst: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of earlier writes to ``dst`` whose writer is dead (killed mid-write): those with
    this host's tag and a pid that no longer exists, and pre-pid ones untouched for a day. Returns what it removed."""
    dst = Path(dst)
    if os.name != "posix":  # os.kill(pid, 0) is only an existence check on POSIX
        return []
    # (two destinations whose names share the first _STEM characters share partial names too: harmless, as only
    # a dead writer's partial is ever removed)
    ours = re.compile(re.escape(f".{dst.name[:_STEM]}.") + r"([0-9a-f]{8})-(\d+)\.[a-z0-9_]+" + re.escape(PARTIAL))
    legacy = re.compile(re.escape(f".{dst.name}.") + r"[a-z0-9_]{8}" + re.escape(PARTIAL))
    removed = []
    try:
        entries = list(os.scandir(dst.parent))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.endswith(PARTIAL):
            continue
        m = ours.fullmatch(entry.name)
        try:
            if m:
                stale = m.group(1) == _HOST and not _alive(int(m.group(2)))
            else:
                stale = legacy.fullmatch(entry.name) is not None and (
                    time.time() - entry.stat(follow_symlinks=False).st_mtime > _LEGACY_PARTIAL_AGE_S)
            if stale and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:  # another writer removed it first
            continue
    return removed


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    # root may write into the blocks reserved for it (f_bfree); everyone else stops at f_bavail
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def _storage_failure(e: BaseException, tmp: Path, real: Path) -> str | None:
    """Why writing ``tmp`` (to become ``real``) failed, if the destination's storage is the cause; else None."""
    if not isinstance(e, Exception) or isinstance(e, CSPNetError):
        return None  # Ctrl-C, SystemExit, and errors that already say what went wrong pass through
    if isinstance(e, OSError) and e.errno in _STORAGE:
        if e.filename is None or os.path.abspath(e.filename) in (str(tmp), str(real), str(real.parent)):
            return f"{_STORAGE[e.errno]} ({e.strerror or e})"
        return None  # e.g. an input that cannot be read: not the destination's fault
    # torch.save reports a full disk as RuntimeError("... unexpected pos ..."), safetensors as its own error type:
    # what they have in common is the disk they leave full (looked at before the partial file is removed)
    free = _free_bytes(real.parent)
    if free is not None and free < _FULL_BYTES or os.strerror(errno.ENOSPC) in str(e):
        return f"the disk is full ({free} bytes free; {type(e).__name__}: {str(e)[:120]})"
    return None


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike, *, what: str = "output file",
                error: type[CSPNetError] = InvalidOptionError) -> Iterator[Path]:
    """Yield a temporary path beside the file ``dst`` names; on success it replaces that file in one
    ``os.replace``.

    ``dst`` is checked by :func:`output_path` (a symbolic link is written through; ``what`` names ``dst`` in its
    errors). The temporary file lives in the destination folder so the final rename never crosses file systems, and
    gets the mode of the file it replaces (else what a plain ``open()`` would give). On any exception (including
    KeyboardInterrupt) it is removed and the destination is left untouched; a failure of the destination's storage
    (full, over quota, read-only, no permission, I/O error) becomes ``error`` with a message naming ``dst``.

    Raises:
        InvalidOptionError: ``dst`` is refused by :func:`output_path`. ``error``: the storage failed.
    """
    given = str(dst)
    real = output_path(dst, what)
    try:
        mode = stat.S_IMODE(os.stat(real).st_mode)  # replacing a private file must not make it readable by all
        existed = True
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode, existed = 0o666 & ~umask, False
    unchanged = f"the file already at {given!r} is unchanged" if existed else "nothing was written"
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(real)
        fd, tmp = tempfile.mkstemp(prefix=f".{real.name[:_STEM]}.{_HOST}-{os.getpid()}.", suffix=PARTIAL,
                                   dir=real.parent)
    except OSError as e:
        why = _STORAGE.get(e.errno, "error")
        raise error(f"cannot write {what} {given!r}: {why} ({e.strerror or e}); {unchanged}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:  # flush to disk before the rename makes the file visible
            os.fsync(f.fileno())
        os.chmod(tmp_path, mode)  # mkstemp makes 0600; set last, as a read-only mode would stop the writer
        os.replace(tmp_path, real)
    except BaseException as e:
        why = _storage_failure(e, tmp_path, real)
        tmp_path.unlink(missing_ok=True)
        if why is None:
            raise
        hint = "; free some space or write elsewhere" if "full" in why or "quota" in why else ""
        raise error(f"cannot write {what} {given!r}: {why}; {unchanged}{hint}") from None


def atomic_write(dst: str | os.PathLike, write: Callable[[Path], None], *, what: str = "output file",
                 error: type[CSPNetError] = InvalidOptionError) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``dst`` atomically (:func:`atomic_path`). Returns
    ``Path(dst)``."""
    with atomic_path(dst, what=what, error=error) as tmp:
        write(tmp)
    return Path(dst)
