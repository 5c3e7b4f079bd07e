"""Where pretrained weights come from, and fetching them safely. For ``pretrained=True`` the first of :data:`SOURCES`
that yields a file wins (the README's "Where the weights come from"; ``$CSPNET_WEIGHTS_DIR`` is
``os.pathsep``-separated). Offline mode (``offline=True``, ``$CSPNET_OFFLINE=1`` or ``$HF_HUB_OFFLINE=1``) skips the
network except the Hub's local cache. A file name carrying a hash (``name-<hex>.pth``) is checked against the sha256
of the bytes; downloads are renamed into place only when complete and verified (no partial or wrong file is cached)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from .._io import atomic_path
from ..errors import DownloadError, WeightsNotFoundError

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")  # torch.hub's convention: <name>-<sha256 prefix>.<ext>


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face Hub repository."""

    repo_id: str
    filename: str = "model.safetensors"
    layout: str = "timm"

    def describe(self) -> str:
        return f"Hugging Face Hub {self.repo_id}/{self.filename}"


@dataclass(frozen=True)
class UrlFile:
    """A file at a URL; ``sha256_prefix`` is read from its name when it carries one."""

    url: str
    layout: str

    @property
    def filename(self) -> str:
        return Path(urllib.parse.urlparse(self.url).path).name

    @property
    def sha256_prefix(self) -> str | None:
        return hash_prefix_of(self.filename)

    def describe(self) -> str:
        return self.url


def hash_prefix_of(filename: str) -> str | None:
    m = _HASH_IN_NAME.search(filename)
    return m.group(1) if m else None


def is_offline(offline: bool | None = None) -> bool:
    if offline is not None:
        return offline
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("CSPNET_OFFLINE", "HF_HUB_OFFLINE"))


def _xdg_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    chosen = cache_dir or os.environ.get("CSPNET_CACHE")
    return Path(chosen).expanduser() if chosen else _xdg_cache() / "cspnet"


def _torch_hub_checkpoints() -> Path:
    return Path(os.environ.get("TORCH_HOME") or _xdg_cache() / "torch").expanduser() / "hub" / "checkpoints"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dst: str | os.PathLike, sha256_prefix: str | None = None, timeout: float | None = None,
             progress: bool = True) -> Path:
    """Download ``url`` to ``dst`` atomically, checking completeness and (if given) the sha256 prefix.

    Raises:
        DownloadError: on an HTTP error, an unreachable host, a stall longer than ``timeout`` seconds
            (``$CSPNET_DOWNLOAD_TIMEOUT``, default 30), a truncated transfer or a hash mismatch. ``dst`` is then
            untouched and no partial file remains.
    """
    from tqdm import tqdm

    dst = Path(dst)
    timeout = float(timeout or os.environ.get("CSPNET_DOWNLOAD_TIMEOUT", 30))
    try:
        with atomic_path(dst) as tmp:
            req = urllib.request.Request(url, headers={"User-Agent": "cspnet"})
            with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
                total = resp.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                h, got = hashlib.sha256(), 0
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dst.name,
                          disable=not progress, file=sys.stderr, leave=False) as bar:
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        out.write(chunk)
                        h.update(chunk)
                        got += len(chunk)
                        bar.update(len(chunk))
            if total is not None and got != total:
                raise DownloadError(f"download of {url} was cut off: got {got} of {total} bytes")
            digest = h.hexdigest()
            if sha256_prefix and not digest.startswith(sha256_prefix):
                raise DownloadError(f"download of {url} has sha256 {digest[:16]}..., but its name promises "
                                    f"{sha256_prefix}: the file is corrupt or not the published one; nothing was kept")
    except DownloadError:
        raise
    except urllib.error.HTTPError as e:
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise DownloadError(f"download of {url} timed out after {timeout:g} s without data") from None
        raise DownloadError(f"cannot reach {url}: {e.reason}") from None
    except (socket.timeout, TimeoutError):
        raise DownloadError(f"download of {url} stalled: no data for {timeout:g} s") from None
    except (ConnectionError, OSError) as e:  # connection reset, IncompleteRead, disk errors
        raise DownloadError(f"download of {url} failed: {type(e).__name__}: {e}") from None
    return dst


def _verified(path: Path, sha256_prefix: str | None) -> bool:
    return sha256_prefix is None or sha256_of(path).startswith(sha256_prefix)


def local_names(weights_name: str, sources: Sequence[HubFile | UrlFile]) -> list[str]:
    """File names accepted in a weights folder for a checkpoint (relative paths)."""
    names = [f"{weights_name}.safetensors", f"{weights_name}.pth"]
    for s in sources:
        names += ([s.filename] if isinstance(s, UrlFile)
                  else [f"{s.repo_id}/{s.filename}", f"{s.repo_id.split('/')[-1]}/{s.filename}"])
    return list(dict.fromkeys(names))


@dataclass
class Search:
    """One :func:`resolve` call: what is asked for, where to look, and what each source said (``tried``)."""

    weights_name: str
    sources: Sequence[HubFile | UrlFile]
    weights_dir: str | os.PathLike | None = None
    cache_dir: str | os.PathLike | None = None
    mirror: str | None = None
    offline: bool | None = None
    url_mapping: tuple[str, str] | None = None
    tried: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.offline = is_offline(self.offline)
        self.mirror = self.mirror or os.environ.get("CSPNET_MIRROR")
        self.cache = default_cache_dir(self.cache_dir)
        self.published = [s for s in self.sources if isinstance(s, UrlFile)]
        self.hub = [s for s in self.sources if isinstance(s, HubFile)]
        mapping = self.url_mapping  # (pattern, replacement) rewrites the original URLs, as in mmpretrain's get_model
        self.urls = [replace(s, url=re.sub(*mapping, s.url)) for s in self.published] if mapping else self.published


# The sources, in the order they are tried: each returns a file or None, saying why in ``search.tried``.
def from_weights_folders(search: Search) -> Path | None:
    folders = [Path(search.weights_dir).expanduser()] if search.weights_dir else []
    folders += [Path(p).expanduser() for p in os.environ.get("CSPNET_WEIGHTS_DIR", "").split(os.pathsep) if p]
    names = local_names(search.weights_name, search.sources)
    for folder in folders:
        for name in names:
            p = folder / name
            if p.is_file():
                if _verified(p, hash_prefix_of(p.name)):
                    return p
                search.tried.append(f"{p}: sha256 does not match its name; ignored")
        search.tried.append(f"weights folder {folder}: none of {', '.join(names)}")
    return None


def from_download_caches(search: Search) -> Path | None:
    for s in search.urls:
        for folder in (search.cache, _torch_hub_checkpoints()):
            p = folder / s.filename
            if p.is_file():
                if _verified(p, s.sha256_prefix):
                    return p
                search.tried.append(f"{p}: cached file fails its sha256 check; ignored")
    search.tried.append(f"download caches {search.cache} and {_torch_hub_checkpoints()}: no file")
    return None


def _download_first(search: Search, wanted: list[tuple[str, str, str | None]], label: str = "") -> Path | None:
    """Download the first of ``(url, file name, sha256 prefix)`` that works into the cache, noting each failure."""
    for url, name, sha in wanted:
        try:
            return download(url, search.cache / name, sha)
        except DownloadError as e:
            search.tried.append(f"{label}{e}")
    return None


def from_mirror(search: Search) -> Path | None:
    if not search.mirror or search.offline:
        return None
    base = search.mirror.rstrip("/")
    # a mirror serves the published file names, or <weights name>.safetensors for the Hub's files
    names = [(s.filename, s.sha256_prefix) for s in search.published]
    names += [(f"{search.weights_name}.safetensors", None)] if search.hub else []
    return _download_first(search, [(f"{base}/{name}", name, sha) for name, sha in names], "mirror: ")


def _resolves(url: str) -> bool:
    """Whether the host of ``url`` has an address: one DNS lookup, where huggingface_hub would retry a failed
    connection five times with back-off (~30 s) before giving up on a machine without network."""
    try:
        socket.getaddrinfo(urllib.parse.urlparse(url).hostname or "", 443)
        return True
    except (socket.gaierror, UnicodeError):
        return False


def from_hub(search: Search) -> Path | None:
    home = os.environ.get("HF_HOME")  # read at call time: huggingface_hub reads its environment once, at import
    cache = os.environ.get("HF_HUB_CACHE") or (str(Path(home) / "hub") if home else None)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    local = bool(search.offline) or not (search.hub and _resolves(endpoint))
    why = " (offline: local Hub cache only)" if search.offline else f" ({endpoint} unreachable: local Hub cache only)"
    for s in search.hub:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(s.repo_id, s.filename, cache_dir=cache, local_files_only=local))
        except Exception as e:  # huggingface_hub raises many types: offline, HTTP, connection, auth
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            search.tried.append(f"{s.describe()}{why if local else ''}: {msg}")
    return None


def from_original_urls(search: Search) -> Path | None:
    if search.offline:
        search.tried += [f"{s.url}: skipped (offline)" for s in search.urls]
        return None
    return _download_first(search, [(s.url, s.filename, s.sha256_prefix) for s in search.urls])


SOURCES = (from_weights_folders, from_download_caches, from_mirror, from_hub, from_original_urls)


def resolve(weights_name: str, sources: Sequence[HubFile | UrlFile], **where) -> Path:
    """Find or fetch the file of a checkpoint from the first of :data:`SOURCES` that has it. ``where``:
    ``weights_dir``, ``cache_dir``, ``mirror``, ``offline``, ``url_mapping`` (the fields of :class:`Search`).

    Raises:
        WeightsNotFoundError: listing every source tried, why it failed, and how to provide the file.
    """
    search = Search(weights_name, sources, **where)
    for source in SOURCES:
        path = source(search)
        if path is not None:
            return path
    lines = "\n".join(f"  - {t}" for t in search.tried)
    files = ", ".join(local_names(weights_name, sources))
    raise WeightsNotFoundError(f"no source could provide the weights of {weights_name}. Tried:\n{lines}\nTo provide "
                               f"them: give a file in any of the timm, mmpretrain or cspnet layouts (--weights FILE on "
                               f"the command line, load_from=PATH in a training config, pretrained='PATH' in Python), "
                               f"or put the file (named one of: {files}) in a folder given by --weights-dir or "
                               f"$CSPNET_WEIGHTS_DIR, or set $CSPNET_MIRROR to a server holding it, or fill the "
                               f"Hugging Face cache on a connected machine (`cspnet download {weights_name}`) and copy it "
                               f"over. Without a network, $CSPNET_OFFLINE=1 skips the downloads.")


def is_url(s: str) -> bool:
    return urllib.parse.urlparse(s).scheme in ("http", "https", "file")


def fetch_url(url: str, weights_name: str, sources: Sequence[HubFile | UrlFile], **where) -> Path:
    """A URL the user gave: one of the record's own URLs goes through every source (mirror, Hub, ...); any other
    is downloaded into the cache (``where`` as for :func:`resolve`)."""
    if any(isinstance(s, UrlFile) and s.url == url for s in sources):
        return resolve(weights_name, sources, **where)
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint.pth"
    dst = default_cache_dir(where.get("cache_dir")) / name
    return dst if dst.is_file() else download(url, dst, hash_prefix_of(name))
