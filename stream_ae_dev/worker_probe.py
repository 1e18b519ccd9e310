"""A worker process seen from outside: one request to its HTTP endpoints, and the readiness
poller that the demo, the benchmarks and the tests all use.

``stream-ae worker`` serves ``/metrics``, ``/healthz`` and ``/readyz`` on its metrics port
(:mod:`stream_ae.worker.metrics`). ``/readyz`` answers 200 once the model is loaded and the
consumer has partitions: only then does the worker consume, so anything that starts a worker
and then feeds it waits for that answer first.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

# How much of the worker's log an error message quotes.
_LOG_TAIL_CHARS = 3000


class WorkerNotReadyError(RuntimeError):
    """The worker exited, or did not become ready in time; the message quotes its log."""


def http_get(
    port: int, path: str, *, host: str = "127.0.0.1", timeout_s: float = 2.0
) -> tuple[int, bytes]:
    """(HTTP status, body) of one of the worker's endpoints; ``(0, b"")`` when nothing answers.

    >>> from stream_ae_dev.devstack import find_free_port
    >>> http_get(find_free_port(), "/readyz")
    (0, b'')
    """
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout_s) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


def log_tail(log_path: Path | None, chars: int = _LOG_TAIL_CHARS) -> str:
    """The end of a worker's log, for error messages ('' when there is none)."""
    if log_path is None:
        return ""
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_ready(
    port: int,
    process: subprocess.Popen[bytes],
    *,
    timeout_s: float,
    log_path: Path | None = None,
    interval_s: float = 0.2,
) -> float:
    """Poll the worker's ``/readyz`` until it answers 200; return the seconds it took.

    Raises :class:`WorkerNotReadyError` as soon as ``process`` has exited, or after
    ``timeout_s`` (a liveness bound: the worker imports TensorFlow and warms its model first).
    """
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise WorkerNotReadyError(
                f"the worker exited with {process.returncode} before it was ready:\n"
                f"{log_tail(log_path)}"
            )
        if http_get(port, "/readyz")[0] == 200:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise WorkerNotReadyError(
                f"the worker was not ready within {timeout_s:.0f} s:\n{log_tail(log_path)}"
            )
        time.sleep(interval_s)
