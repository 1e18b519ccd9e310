"""Prometheus metrics and the health endpoints of a worker.

One :class:`WorkerMetrics` per worker, on its own registry (tests run several in a process).
:class:`HealthServer` serves ``/metrics``, ``/healthz`` (liveness: the poll loop turned recently)
and ``/readyz`` (readiness: a model is loaded and partitions are assigned; when not ready, the
body says why) on one port.

Every labelled counter starts with its known label values at 0 (:data:`KNOWN_LABELS`): a counter
that first appears at 1 has no earlier sample, so ``increase()`` in an alert rule would miss
that first event (e.g. a single refused model swap).
"""

from __future__ import annotations

import platform
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from typing import Any

from prometheus_client import (
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from stream_ae.core.records import Reason
from stream_ae.io.state_guard import LOSS_REASONS

_BATCH_SIZES = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

DLQ_REASONS: tuple[str, ...] = tuple(
    value for name, value in vars(Reason).items() if name.isupper() and isinstance(value, str)
)

# The label values each labelled counter is created with (at 0), by metric attribute.
KNOWN_LABELS: dict[str, dict[str, tuple[str, ...]]] = {
    "events": {"outcome": ("applied", "skipped", "dead_lettered")},
    "alerts": {"status": ("open", "resolved")},
    "dlq": {"reason": DLQ_REASONS},
    "errors": {"kind": ("store", "broker")},
    "model_swaps": {"result": ("swapped", "refused_invalid", "refused_incompatible")},
    "state_loss": {"reason": LOSS_REASONS},
}

NOT_READY_DEFAULT = "no model loaded yet"


class WorkerMetrics:
    """The worker's metrics on one registry, labelled counters pre-initialised.

    ``process=True`` also exports the standard ``process_*`` and ``python_info`` metrics (one
    worker per process; off for the in-process workers of the tests and benchmarks, whose
    registries would otherwise all report the same process).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = False) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        if process:
            r.register(PROCESS_COLLECTOR)
            r.register(PLATFORM_COLLECTOR)
        self.build_info = Info("stream_ae_build", "Version of stream-ae and its Python", registry=r)
        self.build_info.info({"version": version("stream-ae"), "python": platform.python_version()})
        self.events = Counter(
            "stream_ae_events", "Input events by outcome", ["outcome"], registry=r
        )
        self.windows_scored = Counter(
            "stream_ae_windows_scored", "Windows scored by the model", registry=r
        )
        self.batch_size = Histogram(
            "stream_ae_batch_size", "Events per poll batch", buckets=_BATCH_SIZES, registry=r
        )
        self.batch_seconds = Histogram(
            "stream_ae_batch_seconds",
            "Processing time of a poll batch",
            buckets=_SECONDS,
            registry=r,
        )
        self.model_seconds = Histogram(
            "stream_ae_model_seconds", "Model call time per batch", buckets=_SECONDS, registry=r
        )
        self.alerts = Counter("stream_ae_alerts", "Alerts produced", ["status"], registry=r)
        self.dlq = Counter("stream_ae_dlq", "Messages dead-lettered", ["reason"], registry=r)
        self.errors = Counter("stream_ae_errors", "Errors by kind (retried)", ["kind"], registry=r)
        self.consumer_lag = Gauge(
            "stream_ae_consumer_lag",
            "Messages behind the log end",
            ["topic", "partition"],
            registry=r,
        )
        self.model_info = Gauge(
            "stream_ae_model_info", "The model in use (value 1)", ["name", "version"], registry=r
        )
        self.model_swaps = Counter(
            "stream_ae_model_swaps", "Model hot-swaps by result", ["result"], registry=r
        )
        self.fenced_refused = Counter(
            "stream_ae_fenced_writes_refused",
            "State writes refused by the fence (another worker is ahead)",
            registry=r,
        )
        self.state_loss = Counter(
            "stream_ae_state_loss",
            "Partitions found at assignment with window states older than their committed "
            "offset, by cause (stream_ae.io.state_guard)",
            ["reason"],
            registry=r,
        )
        self.state_loss_streams = Counter(
            "stream_ae_state_loss_streams",
            "Stream states found evicted at assignment",
            registry=r,
        )
        for attribute, labels in KNOWN_LABELS.items():
            ((label, values),) = labels.items()
            counter = getattr(self, attribute)
            for value in values:
                counter.labels(**{label: value})
        self.last_loop_ts = time.monotonic()
        self.ready = False
        self.not_ready_reason = NOT_READY_DEFAULT

    def set_not_ready(self, reason: str) -> None:
        """Mark the worker not ready, with the reason ``/readyz`` gives."""
        self.ready = False
        self.not_ready_reason = reason

    def readiness(self) -> tuple[bool, str]:
        """``(ready, why)``: the answer of ``/readyz``."""
        if self.ready:
            return True, "ready"
        return False, f"not ready: {self.not_ready_reason or NOT_READY_DEFAULT}"

    def set_model(self, name: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version).set(1)
        if self.not_ready_reason == NOT_READY_DEFAULT:
            self.not_ready_reason = "no partitions assigned yet (joining the consumer group)"

    def heartbeat(self) -> None:
        self.last_loop_ts = time.monotonic()


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` in a daemon thread."""

    def __init__(self, metrics: WorkerMetrics, host: str, port: int, stale_after_s: float) -> None:
        self.metrics = metrics
        self.stale_after_s = stale_after_s
        handler = self._handler()
        self.server = ThreadingHTTPServer((host, port), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="health")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                metrics = outer.metrics
                if self.path == "/metrics":
                    self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    age = time.monotonic() - metrics.last_loop_ts
                    ok = age < outer.stale_after_s
                    self._reply(200 if ok else 503, f"loop age {age:.1f}s\n".encode())
                elif self.path == "/readyz":
                    ready, why = metrics.readiness()
                    self._reply(200 if ready else 503, f"{why}\n".encode())
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the prober gave up (e.g. while the model loads): nothing to tell it

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would flood the logs

        return Handler

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
