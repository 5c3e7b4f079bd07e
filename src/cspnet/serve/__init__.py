"""Serving a model over HTTP: ``cspnet serve`` (FastAPI on uvicorn, dynamic batching on one event loop) and the same
app as a Ray Serve deployment (``serve run cspnet.serve:ray_app``, ``cspnet.serve.ray_app(...)``).

:mod:`.handler` (the model's part: decode, batch forward, answer; the limits), :mod:`.batcher` (gathering requests
into batches), :mod:`.server` (the routes, limits and metrics; uvicorn), :mod:`.ray_serve` (Ray: needs
``pip install "cspnet[ray]"``), :mod:`.metrics` (Prometheus). Names import on first use, so ray is imported only
for ``ray_app``/``app``."""

from .._lazy import lazy_exports

_EXPORTS = {"Limits": "limits", "ModelHandler": "handler", "Batcher": "batcher", "create_app": "server",
            "run_server": "server", "ray_app": "ray_serve", "app": "ray_serve"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
