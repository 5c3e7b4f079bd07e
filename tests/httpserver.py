"""A file server on 127.0.0.1 for download tests, with paths that misbehave on purpose.

``/<name>``: the file from the served folder. ``/status/<code>/<name>``: that HTTP status. ``/truncate/<name>``:
announces the full length, sends half, closes. ``/stall/<name>``: sends headers, then nothing for 30 s.
``/trickle/<name>``: sends the file at 20 bytes/s. ``/slowheaders/<name>``: sends the headers at 20 bytes/s, without
end. ``/unsized/<name>``: the file without a Content-Length. ``/endless/<name>``: the file over and over, without a
Content-Length. ``/html/<name>``: an HTML page, with status 200. Each misbehaviour ends after 30 s at most.
"""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path
    hits: list

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.hits.append(self.path)
        parts = self.path.strip("/").split("/")
        if parts[0] == "status":
            self.send_error(int(parts[1]))
            return
        mode = parts[0] if parts[0] in _MODES else None
        name = parts[-1]
        path = self.root / name
        if mode == "html":
            page = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in.</body></html>\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)
            return
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        try:
            if mode == "slowheaders":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                self._trickle(b"a" * 600)
                return
            self.send_response(200)
            if mode not in ("unsized", "endless"):
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if mode == "trickle":
                self._trickle(data)
                return
            if mode == "endless":
                end = time.monotonic() + 30
                while time.monotonic() < end:
                    self.wfile.write(data)
                return
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            return
        if mode == "stall":
            time.sleep(30)
            return
        if mode == "truncate":
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def _trickle(self, data: bytes) -> None:
        for i in range(min(len(data), 600)):  # 30 s at most
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            time.sleep(0.05)


_MODES = ("truncate", "stall", "trickle", "slowheaders", "unsized", "endless", "html")


class FileServer:
    """Serve ``root`` on an ephemeral port: ``with FileServer(dir) as s: s.url('name')``."""

    def __init__(self, root: Path):
        handler = type("Handler", (_Handler,), {"root": Path(root), "hits": []})
        self.hits = handler.hits
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str, mode: str = "") -> str:
        return f"{self.base}/{mode + '/' if mode else ''}{name}"

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def unused_port() -> int:
    """A port nothing listens on (bound then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
