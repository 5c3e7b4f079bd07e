"""The HTTP face of a :class:`~cspnet.serve.handler.ModelHandler`: a FastAPI app (``POST /predict``, ``GET /health``,
``/ready``, ``/metrics``), the same for ``cspnet serve`` (uvicorn, :func:`run_server`) and for Ray Serve (its
ingress, :mod:`cspnet.serve.ray_serve`): only who batches differs.

Every bad request is answered with a 4xx and ``{"detail": message}`` saying what was wrong, and the server keeps
serving: 400 an empty body, a file that is not an image, a truncated one, a decompression bomb (more pixels than
``max_pixels``), a malformed multipart body; 408 a body that did not arrive within ``request_timeout_s``; 413 a body
over ``max_body_bytes``; 415 a Content-Type that is not an image or multipart; 503 with ``Retry-After`` when
``max_queue`` requests are in hand, during warm-up, or when no answer came within the timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

import torch
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from ..errors import ImageError
from .batcher import Batcher
from .handler import ModelHandler

log = logging.getLogger("uvicorn.error")  # uvicorn's own: shown with its messages, at its --log-level
Predict = Callable[[torch.Tensor], Awaitable[torch.Tensor]]  # one crop (3, H, W) uint8 -> its scores (num_classes,)
HOW_TO_SEND = ("send the image as the body (Content-Type image/jpeg, image/png, ... or application/octet-stream; "
               "curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg') or as files of a multipart/form-data "
               "body (curl -F file=@photo.jpg)")


class RequestError(Exception):
    """A request answered with ``status`` and ``{"detail": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


class _Progress:
    received = 0


async def read_uploads(request: Request, limits, progress: _Progress) -> list[tuple[str, bytes]]:
    """The request's images as ``(name, bytes)``: the raw body (named ``"body"``) or each file of a multipart body
    (named by its filename). Raises :class:`RequestError` (415, 413, 400) or ``ClientDisconnect``."""
    ctype = request.headers.get("content-type") or ""
    media = ctype.split(";", 1)[0].strip().lower()
    multipart = media == "multipart/form-data"
    if not (multipart or media in ("", "application/octet-stream") or media.startswith("image/")):
        raise RequestError(415, f"Content-Type {ctype!r} is not an image: {HOW_TO_SEND}")
    too_big = f"the request body is over the limit of {limits.max_body_bytes} bytes (--max-body-size): send a " \
              "smaller image, or fewer files per request"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:  # refused unread; the connection then closes
        raise RequestError(413, too_big, {"Connection": "close"})
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        progress.received = len(body)
        if len(body) > limits.max_body_bytes:
            raise RequestError(413, too_big, {"Connection": "close"})
    if not body:
        raise RequestError(400, f"the request body is empty: {HOW_TO_SEND}")
    if not multipart:
        return [("request body", bytes(body))]
    return await _multipart_files(request.scope, bytes(body), limits.max_files)


async def _multipart_files(scope: dict, body: bytes, max_files: int) -> list[tuple[str, bytes]]:
    """The file parts of a multipart body already read (Starlette's parser, over the bytes in hand)."""
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form(max_files=max_files, max_fields=max_files)
    except (HTTPException, MultiPartException) as e:
        detail = getattr(e, "detail", None) or getattr(e, "message", None) or str(e)
        if "Too many files" in detail:
            detail += " (--max-files)"
        raise RequestError(400, f"malformed multipart/form-data body: {detail}") from None
    try:
        files = [(f.filename or key, await f.read()) for key, f in form.multi_items() if isinstance(f, UploadFile)]
    finally:
        await form.close()
    if not files:
        raise RequestError(400, f"the multipart/form-data body has no file part: {HOW_TO_SEND}")
    return files


async def _disconnected(receive) -> None:
    """Returns when the client has gone (the body is read by now: the next message is the disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(handler: ModelHandler, predict: Predict | None = None, watch_disconnect: bool = True) -> FastAPI:
    """The app serving ``handler``. ``predict``: who batches (default: a :class:`~cspnet.serve.batcher.Batcher`
    over ``handler.predict_batch``, run by the app's lifespan). Warm-up runs in the background at startup unless
    ``handler`` is warm already; ``/ready`` says when it is done. ``watch_disconnect``: drop the images of a client
    that left before its answer (a server whose ``receive`` does not report it may turn this off)."""
    limits, metrics = handler.limits, handler.metrics
    batcher = Batcher(handler.predict_batch, limits.max_batch_size, limits.max_wait_ms / 1000) if predict is None \
        else None
    run = predict or batcher
    decode_pool = ThreadPoolExecutor(limits.threads, thread_name_prefix="cspnet-decode")
    state: dict[str, Any] = {"in_flight": 0, "warm_error": None}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        if batcher is not None:
            batcher.start()
        warming = None if handler.warm else loop.run_in_executor(None, handler.warm_up)
        if warming is not None:
            warming.add_done_callback(lambda f: f.cancelled() or _warmed(f.exception()))
        try:
            yield
        finally:
            if warming is not None:
                await asyncio.gather(warming, return_exceptions=True)
            if batcher is not None:
                await batcher.stop()
            decode_pool.shutdown(wait=False, cancel_futures=True)

    def _warmed(error: BaseException | None) -> None:
        if error is not None:
            state["warm_error"] = f"warm-up failed: {type(error).__name__}: {error}"
            log.error("cspnet serve: %s", state["warm_error"])
        else:
            log.info("cspnet serve: %s is warm (batch 1 and %d), ready", handler.name, limits.max_batch_size)

    app = FastAPI(title="cspnet", lifespan=lifespan)
    app.state.handler = handler

    @app.get("/health")
    async def health() -> dict:
        """The process answers (whether or not the model is ready)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        """200 once the weights are loaded and the warm-up is done, else 503."""
        if handler.warm:
            return {"ready": True, "model": handler.name}
        return _error(503, state["warm_error"] or "warming up", {"Retry-After": "1"})

    @app.get("/metrics")
    async def metrics_text() -> Response:
        body, ctype = metrics.exposition()
        return Response(body, media_type=ctype)

    @app.post("/predict")
    async def predict_route(request: Request, topk: int = Query(limits.topk, ge=1)):
        """Classify the image of the body, or each file of a multipart body: ``{"model", "predictions": [{image,
        pred_label, pred_score, pred_class, topk: [{label, score, class}]}]}``, in the order sent."""
        start = time.perf_counter()
        if not handler.warm:
            response = _error(503, state["warm_error"] or "the model is warming up: retry shortly (GET /ready "
                                                          "says when)", {"Retry-After": "1"})
        elif state["in_flight"] >= limits.max_queue:
            response = _error(503, f"the server has {limits.max_queue} requests in hand (--max-queue): retry "
                                   "after 1 s", {"Retry-After": "1"})
        else:
            state["in_flight"] += 1
            metrics.in_flight.inc()
            try:
                response = await _answer(request, min(topk, handler.num_classes))
            finally:
                state["in_flight"] -= 1
                metrics.in_flight.dec()
        metrics.requests.labels(str(response.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - start)
        return response

    async def _answer(request: Request, topk: int) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.request_timeout_s
        progress = _Progress()
        try:
            try:
                uploads = await asyncio.wait_for(read_uploads(request, limits, progress), limits.request_timeout_s)
            except asyncio.TimeoutError:
                declared = request.headers.get("content-length")
                raise RequestError(408, f"the request body did not arrive within {limits.request_timeout_s:g} s "
                                        f"({progress.received} of {declared or 'an unknown number of'} bytes "
                                        "received; --request-timeout)", {"Connection": "close"}) from None
            decoding = asyncio.gather(*(loop.run_in_executor(decode_pool, handler.preprocess, data, name)
                                        for name, data in uploads))
            crops = await _until(decoding, request, deadline)
            metrics.queue_depth.inc(len(crops))
            try:
                scores = await _until(asyncio.gather(*(run(c) for c in crops)), request, deadline)
            finally:
                metrics.queue_depth.dec(len(crops))
        except RequestError as e:
            return _error(e.status, e.message, e.headers)
        except ImageError as e:
            return _error(400, str(e))
        except ClientDisconnect:  # gone before its answer: nothing to send, nothing to log
            return Response(status_code=499)
        metrics.images.inc(len(scores))
        preds = [handler.answer(s, name, topk) for s, (name, _) in zip(scores, uploads)]
        return JSONResponse({"model": handler.name, "predictions": preds})

    async def _until(work: asyncio.Future, request: Request, deadline: float):
        """``await work``, unless the client leaves (``ClientDisconnect``) or the deadline passes (503) first; then
        ``work`` is cancelled (the batcher drops its images)."""
        gone = asyncio.ensure_future(_disconnected(request.receive)) if watch_disconnect else None
        left = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            done, _ = await asyncio.wait({work, gone} - {None}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if gone is not None:
                gone.cancel()
        if work in done:
            return work.result()
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        if gone is not None and gone in done:
            raise ClientDisconnect()
        raise RequestError(503, f"no answer within {limits.request_timeout_s:g} s (--request-timeout): the server "
                                "is overloaded; retry after 1 s", {"Retry-After": "1"})

    return app


def run_server(handler: ModelHandler, host: str = "127.0.0.1", port: int = 8000, access_log: bool = True,
               log_level: str = "info") -> int:
    """Serve ``handler`` with uvicorn until SIGTERM or Ctrl-C; returns 0 after a drained SIGTERM.

    On SIGTERM uvicorn stops accepting connections, lets every request in hand finish (up to the request timeout
    and 5 s more), then runs the app's shutdown (the batcher stops once nothing waits on it)."""
    import uvicorn

    config = uvicorn.Config(create_app(handler), host=host, port=port, access_log=access_log, log_level=log_level,
                            timeout_graceful_shutdown=int(handler.limits.request_timeout_s) + 5)
    server = uvicorn.Server(config)
    main = threading.current_thread() is threading.main_thread()
    # uvicorn raises a captured SIGTERM again after its graceful shutdown; under the default handler that kills the
    # drained process (status -15). Ignored here, a drained SIGTERM exits 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
    try:
        server.run()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    answered = metrics_by_code(handler)
    print(f"cspnet serve: stopped; answered {sum(answered.values())} requests {answered}", file=sys.stderr,
          flush=True)
    return 0 if server.started else 1


def metrics_by_code(handler: ModelHandler) -> dict[str, int]:
    """``{status code: requests answered}`` so far."""
    return {s.labels["code"]: int(s.value) for m in handler.metrics.requests.collect() for s in m.samples
            if s.name.endswith("_total")}
