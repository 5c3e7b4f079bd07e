"""``cspnet serve``: an HTTP service (FastAPI on uvicorn) classifying uploaded images, with dynamic batching."""

from __future__ import annotations

import argparse
import re

from ..serve.limits import Limits
from . import add_dtype_argument, add_model_arguments, at_least, load_model

HELP = "serve a model over HTTP: POST /predict (images -> top-k JSON), GET /health, /ready, /metrics"
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def byte_size(text: str) -> int:
    """An argparse ``type``: ``20971520``, ``20MiB``, ``512KiB``, ``5MB`` -> bytes (>= 1)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) * _UNITS[m.group(2).lower()] < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 20MiB, 512KiB or 1000000 (bytes), got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def number(least: float, strict: bool):
    """An argparse ``type``: a number > ``least`` (``strict``) or >= ``least``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value > least if strict else value >= least):
            raise argparse.ArgumentTypeError(f"expected a number {'>' if strict else '>='} {least:g}, got {text!r}")
        return value
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Limits()
    add_model_arguments(p)
    add_dtype_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s; 0.0.0.0: all)")
    p.add_argument("--port", type=at_least(0), default=8000, help="port (default %(default)s; 0: any free one)")
    g = p.add_argument_group("batching")
    g.add_argument("--max-batch-size", metavar="N", type=at_least(1), default=d.max_batch_size,
                   help="images from concurrent requests in one forward pass (default %(default)s)")
    g.add_argument("--max-wait-ms", metavar="MS", type=number(0, strict=False), default=d.max_wait_ms,
                   help="how long the first image of a batch waits for more (default %(default)s ms)")
    g.add_argument("--decode-threads", metavar="N", type=at_least(0), default=d.decode_threads,
                   help="threads decoding and resizing uploads (default: one per CPU core)")
    g = p.add_argument_group("limits (each refusal is a 4xx/503 saying which limit)")
    g.add_argument("--max-body-size", type=byte_size, default=d.max_body_bytes, metavar="SIZE",
                   help=f"request body size, e.g. 20MiB (default {d.max_body_bytes >> 20} MiB): over it, 413")
    g.add_argument("--max-pixels", metavar="N", type=at_least(1), default=d.max_pixels,
                   help="pixels an image may declare, the decompression-bomb limit (default %(default)s, Pillow's "
                        "limit, the most allowed): over it, 400 before decoding")
    g.add_argument("--request-timeout", type=number(0, strict=True), default=d.request_timeout_s, metavar="SECONDS",
                   help="time for a request's body to arrive (else 408: a stalled client is cut) and for its answer "
                        "(else 503) (default %(default)s s)")
    g.add_argument("--max-queue", metavar="N", type=at_least(1), default=d.max_queue,
                   help="requests in hand at once; over it, 503 with Retry-After (default %(default)s)")
    g.add_argument("--max-files", metavar="N", type=at_least(1), default=d.max_files,
                   help="images in one multipart request (default %(default)s)")
    g.add_argument("--topk", metavar="N", type=at_least(1), default=d.topk,
                   help="classes per image unless the request says ?topk=N (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default %(default)s)")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="log each request (default on)")


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from ..errors import InvalidOptionError

    # an optional extra: said before the model loads, not as a traceback from deep in the server's imports
    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client", "multipart")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise InvalidOptionError(f"cspnet serve needs {', '.join(missing)} (not installed here): "
                                 f"pip install \"cspnet[serve]\"")
    from ..serve.handler import ModelHandler
    from ..serve.server import run_server

    limits = Limits(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                    max_body_bytes=args.max_body_size, max_pixels=args.max_pixels,
                    request_timeout_s=args.request_timeout, max_queue=args.max_queue, max_files=args.max_files,
                    topk=args.topk, decode_threads=args.decode_threads)  # a bad limit fails before the model loads
    handler = ModelHandler(load_model(args), limits, dtype=args.dtype)
    return run_server(handler, args.host, args.port, access_log=args.access_log, log_level=args.log_level)
