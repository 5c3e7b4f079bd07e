"""The bounds of a server, one frozen spec (torch-free: ``cspnet serve --help`` prints its defaults)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..errors import InvalidOptionError


@dataclass(frozen=True)
class Limits:
    """Every bound of the server; the command line's defaults are these (``cspnet serve --help`` prints them)."""

    max_batch_size: int = 32  # images in one forward pass
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for more
    max_body_bytes: int = 20 << 20  # request body; Content-Length over it is refused before reading
    # pixels an upload may declare (the decompression-bomb limit): Pillow's own by default, never above it
    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485
    request_timeout_s: float = 30.0  # body upload + answer; a client that stalls mid-body is cut here (408)
    max_queue: int = 256  # requests in hand at once (reading, decoding, waiting, in a batch); over it: 503
    max_files: int = 64  # images in one multipart request
    topk: int = 5  # default classes per image (?topk= in the request)
    decode_threads: int = 0  # threads decoding and resizing uploads; 0: one per CPU core

    def __post_init__(self):
        pillow = Image.MAX_IMAGE_PIXELS or float("inf")
        checks = {"max_batch_size": self.max_batch_size >= 1, "max_wait_ms": self.max_wait_ms >= 0,
                  "max_body_bytes": self.max_body_bytes >= 1, "max_pixels": 1 <= self.max_pixels <= pillow,
                  "request_timeout_s": self.request_timeout_s > 0, "max_queue": self.max_queue >= 1,
                  "max_files": self.max_files >= 1, "topk": self.topk >= 1, "decode_threads": self.decode_threads >= 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            ranges = {"max_pixels": f"1..{Image.MAX_IMAGE_PIXELS} (Pillow's limit)", "max_wait_ms": ">= 0",
                      "request_timeout_s": "> 0", "decode_threads": ">= 0 (0: one per core)"}
            raise InvalidOptionError("; ".join(f"{n}={getattr(self, n)!r} is out of range: use {ranges.get(n, '>= 1')}"
                                               for n in bad))

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "Limits":
        """From ``{field: value}`` (the Ray app's arguments); an unknown key is an error naming the known ones."""
        types = {f.name: type(f.default) for f in dataclasses.fields(cls)}  # int or float: strings converted
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise InvalidOptionError(f"unknown serving limit(s) {unknown}; known: {sorted(types)}")
        try:
            return cls(**{k: types[k](v) for k, v in values.items()})
        except (TypeError, ValueError) as e:
            raise InvalidOptionError(f"serving limits {values}: {e}") from None

    @property
    def threads(self) -> int:
        return self.decode_threads or os.cpu_count() or 1
