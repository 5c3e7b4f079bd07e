"""The server's Prometheus metrics (``GET /metrics``), in a registry of their own per served model, so two apps in
one process (tests; Ray replicas share nothing anyway) never collide."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (.005, .01, .025, .05, .075, .1, .15, .2, .3, .5, .75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 30, 60)


class Metrics:
    """``requests`` (by status code), ``latency`` (seconds per ``/predict`` request, any status), ``batch_size``
    (images per forward pass: one bucket per size up to 64, then powers of two), ``queue_depth`` (images handed to
    the model and not yet answered), ``in_flight`` (requests in hand: what ``max_queue`` bounds)."""

    def __init__(self, max_batch_size: int):
        self.registry = CollectorRegistry()
        sizes = range(1, max_batch_size + 1) if max_batch_size <= 64 else [
            *range(1, 65), *(2**i for i in range(7, max_batch_size.bit_length() + 1)), max_batch_size]
        kw = {"registry": self.registry}
        self.requests = Counter("cspnet_requests", "POST /predict requests answered, by HTTP status", ["code"], **kw)
        self.images = Counter("cspnet_images", "images classified", **kw)
        self.latency = Histogram("cspnet_request_latency_seconds", "POST /predict latency, any status",
                                 buckets=LATENCY_BUCKETS, **kw)
        self.batch_size = Histogram("cspnet_batch_size", "images per forward pass", buckets=sorted(set(sizes)), **kw)
        self.queue_depth = Gauge("cspnet_queue_depth", "images handed to the model, not yet answered", **kw)
        self.in_flight = Gauge("cspnet_requests_in_flight", "requests in hand (reading, decoding, queued, in a batch)",
                               **kw)

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
