"""Where pretrained weights come from, and fetching them safely. For ``pretrained=True`` the first of :data:`SOURCES`
that yields a file wins (the README's "Where the weights come from"; ``$CSPNET_WEIGHTS_DIR`` is
``os.pathsep``-separated). Offline mode (``offline=True``, ``$CSPNET_OFFLINE=1`` or ``$HF_HUB_OFFLINE=1``) skips the
network except the Hub's local cache; a URL the user gives is not fetched with ``offline=True`` or ``$CSPNET_OFFLINE=1``
(``$HF_HUB_OFFLINE`` is the Hub's own switch). A file name carrying a hash (``name-<hex>.pth``) is checked against the
sha256 of the bytes. Every download has a stall timeout, a total deadline and a size limit, and its first bytes must
be those of a weights file (no HTML page is cached); it is renamed into place only when complete and verified (no
partial or wrong file is cached). A cached file is keyed by the hash in its name, else by its URL
(:func:`cache_path`): two servers' ``model.pth`` never stand in for each other."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from .._io import atomic_path
from ..errors import DownloadError, InvalidOptionError, WeightsNotFoundError

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")  # torch.hub's convention: <name>-<sha256 prefix>.<ext>
# Download limits, each changed by its environment variable: a stall (no byte for this long), the whole transfer, and
# the size of a file whose record gives no bound (a CSPNet training checkpoint with EMA and optimizer is ~0.5 GB).
_TIMEOUT_S, _DEADLINE_S, _MAX_BYTES = 30.0, 3600.0, 2 << 30
# torch.serialization.MAGIC_NUMBER, the first object a legacy (non-zip) torch file pickles, as pickle's LONG1 bytes
_TORCH_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face Hub repository."""

    repo_id: str
    filename: str = "model.safetensors"
    layout: str = "timm"
    max_bytes: int | None = None  # an upper bound on the file's size (a mirror's copy is refused beyond it)

    def describe(self) -> str:
        return f"Hugging Face Hub {self.repo_id}/{self.filename}"


@dataclass(frozen=True)
class UrlFile:
    """A file at a URL; ``sha256_prefix`` is read from its name when it carries one; ``max_bytes``: an upper bound
    on its size (a download is stopped beyond it)."""

    url: str
    layout: str
    max_bytes: int | None = None

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


def is_offline(offline: bool | None = None, variables: Sequence[str] = ("CSPNET_OFFLINE", "HF_HUB_OFFLINE")) -> bool:
    if offline is not None:
        return offline
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in variables)


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


def _env_number(name: str, value: float | None, default: float) -> float:
    """``value`` if given, else ``$name``, else ``default``; a positive number either way."""
    if value is None:
        text = os.environ.get(name, "").strip()
        try:
            value = float(text) if text else default
        except ValueError:
            raise InvalidOptionError(f"${name}={text!r}: expected a positive number") from None
    if not value > 0:
        raise InvalidOptionError(f"{name.removeprefix('CSPNET_DOWNLOAD_').lower()}={value!r}: expected a positive "
                                 f"number (${name})")
    return float(value)


def file_format(head: bytes) -> str | None:
    """``'zip'`` (torch.save's format), ``'torch-legacy'`` (torch.save's pickle format), ``'safetensors'`` or None,
    from a file's first bytes (64 are enough)."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") and _TORCH_LEGACY_MAGIC in head[:32]:
        return "torch-legacy"
    if len(head) >= 9 and 0 < int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] == b"{":
        return "safetensors"  # a little-endian u64 header length, then the JSON header
    return None


def _watched_opener(sockets: list) -> urllib.request.OpenerDirector:
    """urllib's opener, but every connection it makes notes its socket in ``sockets`` (so that the deadline can shut
    a transfer that is blocked in the middle of the headers or of a read)."""

    class Watch:
        def do_open(self, http_class, req, **kwargs):
            class Watched(http_class):
                def connect(self):
                    super().connect()
                    sockets.append(self.sock)

            return super().do_open(Watched, req, **kwargs)

    return urllib.request.build_opener(type("HTTPHandler", (Watch, urllib.request.HTTPHandler), {}),
                                       type("HTTPSHandler", (Watch, urllib.request.HTTPSHandler), {}))


def download(url: str, dst: str | os.PathLike, sha256_prefix: str | None = None, timeout: float | None = None,
             progress: bool = True, *, deadline: float | None = None, max_bytes: int | None = None) -> Path:
    """Download ``url`` to ``dst`` atomically, checking completeness, size, format and (if given) the sha256 prefix.

    ``timeout``: seconds without data (``$CSPNET_DOWNLOAD_TIMEOUT``, default 30); ``deadline``: seconds for the
    whole transfer (``$CSPNET_DOWNLOAD_DEADLINE``, default 3600); ``max_bytes``: the most the file may hold (the
    sources pass their record's bound; else ``$CSPNET_DOWNLOAD_MAX_BYTES``, default 2 GiB).

    Raises:
        DownloadError: on an HTTP error, an unreachable host, a stall, the deadline, a file over the size limit,
            bytes that are not a weights file (zip or legacy torch, safetensors: an HTML page is refused), a
            truncated transfer or a hash mismatch. ``dst`` is then untouched and nothing is left: no partial file,
            no folder made for it.
    """
    from tqdm import tqdm

    dst = Path(dst)
    timeout = _env_number("CSPNET_DOWNLOAD_TIMEOUT", timeout, _TIMEOUT_S)
    deadline = _env_number("CSPNET_DOWNLOAD_DEADLINE", deadline, _DEADLINE_S)
    limit = int(_env_number("CSPNET_DOWNLOAD_MAX_BYTES", max_bytes, _MAX_BYTES))
    why_limit = "this file's size bound" if max_bytes else "$CSPNET_DOWNLOAD_MAX_BYTES"
    made = [p for p in (dst.parent, *dst.parent.parents) if not p.exists()]  # removed again if the download fails
    sockets: list = []
    expired = threading.Event()

    def expire():  # shutting the socket wakes a read blocked in it; the loop then sees `expired`
        expired.set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def too_slow(got: int) -> DownloadError:
        return DownloadError(f"download of {url} did not finish within {deadline:g} s (got {got:,} bytes; "
                             f"$CSPNET_DOWNLOAD_DEADLINE): the server is too slow. Try again later, use a mirror "
                             f"($CSPNET_MIRROR), or fetch the file another way and give its path")

    timer = threading.Timer(deadline, expire)
    timer.daemon = True
    timer.start()
    got, total = 0, None
    try:
        with atomic_path(dst, what="download", error=DownloadError) as tmp:
            req = urllib.request.Request(url, headers={"User-Agent": "cspnet"})
            with _watched_opener(sockets).open(req, timeout=timeout) as resp, open(tmp, "wb") as out:
                total = resp.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                if total is not None and total > limit:
                    raise DownloadError(f"download of {url} refused: the server announces {total:,} bytes, more than "
                                        f"the {limit:,} allowed ({why_limit}); nothing was kept. Raise the limit with "
                                        f"$CSPNET_DOWNLOAD_MAX_BYTES if the file is really this large")
                read = getattr(resp, "read1", resp.read)  # read1: whatever has arrived, so the deadline is checked
                h, head = hashlib.sha256(), b""
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dst.name,
                          disable=not progress, file=sys.stderr, leave=False) as bar:
                    while not expired.is_set() and (chunk := read(1 << 20)):
                        got += len(chunk)
                        if got > limit:
                            raise DownloadError(f"download of {url} stopped: more than the {limit:,} bytes allowed "
                                                f"({why_limit}; the server announced "
                                                f"{'no length' if total is None else f'{total:,}'}); nothing was "
                                                f"kept. Raise the limit with $CSPNET_DOWNLOAD_MAX_BYTES if the file "
                                                f"is really this large")
                        if len(head) < 64:
                            head += chunk[: 64 - len(head)]
                            if len(head) == 64:
                                _check_format(url, head)
                        out.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
            if expired.is_set() and got != total:
                raise too_slow(got)
            if total is not None and got != total:
                raise DownloadError(f"download of {url} was cut off: got {got} of {total} bytes")
            _check_format(url, head)
            digest = h.hexdigest()
            if sha256_prefix and not digest.startswith(sha256_prefix):
                raise DownloadError(f"download of {url} has sha256 {digest[:16]}..., but its name promises "
                                    f"{sha256_prefix}: the file is corrupt or not the published one; nothing was kept")
    except BaseException as e:
        for folder in made:  # deepest first; a folder another process has filled meanwhile stays
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(e, DownloadError):
            raise
        if expired.is_set() and isinstance(e, (OSError, http.client.HTTPException)):
            raise too_slow(got) from None
        if isinstance(e, urllib.error.HTTPError):
            raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
        if isinstance(e, urllib.error.URLError):
            if isinstance(e.reason, (socket.timeout, TimeoutError)):
                raise DownloadError(f"download of {url} timed out after {timeout:g} s without data") from None
            raise DownloadError(f"cannot reach {url}: {e.reason}") from None
        if isinstance(e, (socket.timeout, TimeoutError)):
            raise DownloadError(f"download of {url} stalled: no data for {timeout:g} s") from None
        if isinstance(e, (OSError, http.client.HTTPException)):  # connection reset, IncompleteRead, disk errors
            raise DownloadError(f"download of {url} failed: {type(e).__name__}: {e}") from None
        raise
    finally:
        timer.cancel()
    return dst


def _check_format(url: str, head: bytes) -> None:
    if file_format(head) is None:
        raise DownloadError(f"download of {url} is refused: it is {describe_bytes(head)}, not a weights file (a "
                            f"zip-based or legacy torch file, or safetensors): it starts with {head[:40]!r}. Nothing "
                            f"was kept; check the URL in a browser (it may need a login, or name a page, not the file)")


def describe_bytes(head: bytes) -> str:
    """What a file that is no weights file seems to be, from its first bytes (for messages)."""
    if b"<html" in head.lower() or head.lstrip().startswith(b"<"):
        return "an HTML page (a login, error or download page?)"
    if not head:
        return "empty"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # (a multi-byte character cut at the end of ``head`` counts as binary: rare)
        return "data of another format"
    return "text" if all(c.isprintable() or c in "\t\r\n" for c in text) else "data of another format"


def cache_path(cache: Path, url: str, name: str) -> Path:
    """Where the download of ``url`` (file name ``name``) is cached. A name carrying its sha256 prefix is its own key,
    as in torch.hub's cache: any copy that passes the hash is the file, wherever it came from. Any other name is kept
    in a folder of its URL (host and a hash of the whole URL; no credentials), so that two servers' ``model.pth``
    never stand in for each other."""
    if hash_prefix_of(name):
        return cache / name
    parts = urllib.parse.urlparse(url)
    host = re.sub(r"[^A-Za-z0-9.-]", "_", f"{parts.hostname or 'local'}{f'_{parts.port}' if parts.port else ''}")
    return cache / "by-url" / f"{host}-{hashlib.sha256(url.encode()).hexdigest()[:16]}" / name


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

    def url_files(self) -> list[tuple[str, Path, str | None, int | None]]:
        """``(url, cache path, sha256 prefix, size bound)`` of the original URLs (rewritten by ``url_mapping``)."""
        return [(s.url, cache_path(self.cache, s.url, s.filename), s.sha256_prefix, s.max_bytes) for s in self.urls]

    def mirror_files(self) -> list[tuple[str, Path, str | None, int | None]]:
        """The same for the mirror, which serves the published file names, or <weights name>.safetensors for the
        Hub's files; none without a mirror."""
        if not self.mirror:
            return []
        base = self.mirror.rstrip("/")
        files = [(s.filename, s.sha256_prefix, s.max_bytes) for s in self.published]
        files += [(f"{self.weights_name}.safetensors", None, s.max_bytes) for s in self.hub[:1]]
        return [(f"{base}/{name}", cache_path(self.cache, f"{base}/{name}", name), sha, bound)
                for name, sha, bound in files]


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
    """Every file a download by :func:`from_mirror` or :func:`from_original_urls` would have left, and
    torch.hub's cache (mmpretrain's downloads), which is keyed by the file name alone: there only a name whose
    hash is checked is trusted."""
    hub = _torch_hub_checkpoints()
    places = [(dst, sha) for _, dst, sha, _ in search.url_files() + search.mirror_files()]
    places += [(cache_path(search.cache, s.url, s.filename), s.sha256_prefix) for s in search.published]
    places += [(hub / s.filename, s.sha256_prefix) for s in [*search.published, *search.urls] if s.sha256_prefix]
    for p, sha in dict.fromkeys(places):
        if p.is_file():
            if _verified(p, sha):
                return p
            search.tried.append(f"{p}: cached file fails its sha256 check; ignored")
    search.tried.append(f"download caches {search.cache} and {hub}: no file")
    return None


def _download_first(search: Search, wanted: list[tuple[str, Path, str | None, int | None]],
                    label: str = "") -> Path | None:
    """Download the first of ``(url, cache path, sha256 prefix, size bound)`` that works, noting each failure."""
    for url, dst, sha, bound in wanted:
        try:
            return download(url, dst, sha, max_bytes=bound)
        except DownloadError as e:
            search.tried.append(f"{label}{e}")
    return None


def from_mirror(search: Search) -> Path | None:
    if not search.mirror or search.offline:
        return None
    return _download_first(search, search.mirror_files(), "mirror: ")


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
    return _download_first(search, search.url_files())


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
    is downloaded into the cache, under its URL (``where`` as for :func:`resolve`; offline, only the cache).

    Raises:
        WeightsNotFoundError: offline, and the cache has no copy.
        DownloadError: see :func:`download`.
    """
    if any(isinstance(s, UrlFile) and s.url == url for s in sources):
        return resolve(weights_name, sources, **where)
    name = Path(urllib.parse.urlparse(url).path).name or "checkpoint.pth"
    dst, sha = cache_path(default_cache_dir(where.get("cache_dir")), url, name), hash_prefix_of(name)
    if dst.is_file() and _verified(dst, sha):
        return dst
    # $HF_HUB_OFFLINE keeps the Hub's client off the network; a URL the user typed is not the Hub's, so only
    # cspnet's own switch stops it
    if is_offline(where.get("offline"), ("CSPNET_OFFLINE",)) and urllib.parse.urlparse(url).scheme != "file":
        raise WeightsNotFoundError(f"{url}: not downloaded, as offline mode is on (offline=True, --offline or "
                                   f"$CSPNET_OFFLINE), and the cache holds no copy ({dst}). Turn offline mode off, or "
                                   f"download the file on a connected machine and give its path")
    return download(url, dst, sha)
