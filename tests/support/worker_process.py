"""Workers of the integration tests: their settings, an in-process worker on a thread, and
``python -m stream_ae worker`` as a child process.

- :func:`worker_config` -> a dict of worker settings for one test (unique group id and Redis
  key prefix); :func:`worker_config_on_new_topics` the same on an input, an alerts and a
  dead-letter topic created for it; :func:`settings_of` turns it into :class:`Settings` for
  an in-process worker, :func:`env_of` into ``STREAM_AE_*`` variables for a worker subprocess.
- :func:`running_worker`: an in-process :class:`Worker` (built by ``build_worker``) on a thread.
- :class:`WorkerProcess`: the worker as a child process, ready when its ``/readyz`` answers 200
  (:func:`stream_ae_dev.worker_probe.wait_ready`); killed, terminated and reaped. With a
  ``fault_point`` it kills itself at that point of the poll-batch protocol, in the first batch
  that produced alerts (``overlap``, with ``overlap`` on: that batch scored and the next one
  polled; ``alerts_flushed``, ``state_written``: see
  :data:`stream_ae.worker.loop.FAULT_POINT_ENV`).
- :func:`metric_value`: one sample of the worker's ``/metrics``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from stream_ae.settings import ENV_PREFIX, Settings
from stream_ae.worker.loop import FAULT_POINT_ENV, Worker
from stream_ae_dev.devstack import find_free_port
from stream_ae_dev.worker_probe import http_get, log_tail, wait_ready
from tests.support.tiny_model import DEFAULT_BUCKETS, TinyModel

# A worker subprocess imports TensorFlow, loads and warms the model, then joins the group.
WORKER_START_TIMEOUT_S = 180.0


def worker_config(
    *,
    bootstrap_servers: str,
    redis_url: str,
    model: TinyModel,
    input_topic: str,
    alerts_topic: str,
    dlq_topic: str,
    **overrides: Any,
) -> dict[str, Any]:
    """Settings of one test's worker(s): a unique group id and Redis key prefix."""
    tag = uuid.uuid4().hex[:10]
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "redis_url": redis_url,
        "model_path": str(model.path),
        "input_topics": [input_topic],
        "alerts_topic": alerts_topic,
        "dlq_topic": dlq_topic,
        "group_id": f"itest-{tag}",
        "redis_key_prefix": f"it{tag}",
        # Tansu: a group join takes about half the session timeout, an idle fetch about half
        # of fetch_max_wait_ms (see BrokerProcess).
        "session_timeout_ms": 6000,
        "fetch_max_wait_ms": 20,
        "max_batch_wait_ms": 100,
        "max_poll_records": 500,
        "batch_buckets": list(DEFAULT_BUCKETS),
        "retry_backoff_max_s": 1.0,
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
        "log_format": "text",
        "log_level": "INFO",
    }
    config.update(overrides)
    return config


def worker_config_on_new_topics(
    bootstrap_servers: str,
    redis_url: str,
    topic_factory: Callable[..., str],
    model: TinyModel,
    *,
    partitions: int = 1,
    **overrides: Any,
) -> dict[str, Any]:
    """:func:`worker_config` on topics of the test's own, made by the ``topic_factory``
    fixture: an input topic of ``partitions`` partitions, an alerts and a dead-letter topic
    (``config["input_topics"][0]``, ``config["alerts_topic"]``, ``config["dlq_topic"]``)."""
    return worker_config(
        bootstrap_servers=bootstrap_servers,
        redis_url=redis_url,
        model=model,
        input_topic=topic_factory(partitions, prefix="in"),
        alerts_topic=topic_factory(1, prefix="alerts"),
        dlq_topic=topic_factory(1, prefix="dlq"),
        **overrides,
    )


def settings_of(config: Mapping[str, Any]) -> Settings:
    """The frozen settings of an in-process worker."""
    return Settings(**dict(config))


def env_of(config: Mapping[str, Any]) -> dict[str, str]:
    """The environment of a worker subprocess: ours, less any ``STREAM_AE_*`` of the caller."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(ENV_PREFIX) and k != FAULT_POINT_ENV
    }
    for name, value in config.items():
        text = ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
        env[f"{ENV_PREFIX}{name.upper()}"] = text
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


@contextlib.contextmanager
def running_worker(
    settings: Settings, prepare: Callable[[Worker], None] | None = None
) -> Iterator[Worker]:
    """A worker built from ``settings`` (as ``stream-ae worker`` does), polling on a thread.

    ``prepare`` sees the built worker before it polls its first batch. On exit the worker is
    stopped (it finishes its batch, commits and closes) and joined; an exception raised on the
    worker thread is re-raised here.
    """
    from stream_ae.worker.bootstrap import build_worker

    worker = build_worker(settings)
    if prepare is not None:
        prepare(worker)
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            worker.run()
        except BaseException as exc:  # re-raised on the test's thread
            failure.append(exc)

    thread = threading.Thread(target=loop, name="test-worker", daemon=True)
    thread.start()
    try:
        yield worker
        if failure:
            raise failure[0]
    finally:
        worker.stop()
        thread.join(timeout=60)
    if thread.is_alive():
        raise AssertionError("the worker thread did not stop within 60 s of stop()")
    if failure:
        raise failure[0]


class WorkerProcess:
    """``python -m stream_ae worker`` with the given settings, as a child process."""

    def __init__(
        self, config: Mapping[str, Any], log_path: Path, *, fault_point: str | None = None
    ) -> None:
        self.config = {**config, "metrics_port": find_free_port()}
        self.log_path = log_path
        self.fault_point = fault_point
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return int(self.config["metrics_port"])

    def start(self) -> WorkerProcess:
        env = env_of(self.config)
        if self.fault_point is not None:
            env[FAULT_POINT_ENV] = self.fault_point
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stream_ae", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout_s: float = WORKER_START_TIMEOUT_S) -> None:
        """Until ``/readyz`` says 200: model loaded and partitions assigned."""
        assert self.process is not None
        wait_ready(self.port, self.process, timeout_s=timeout_s, log_path=self.log_path)

    def get(self, path: str) -> tuple[int, str]:
        """(HTTP status, body) of one of the worker's endpoints; (0, '') when it is down."""
        status, body = http_get(self.port, path)
        return status, body.decode(errors="replace")

    @property
    def returncode(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    def kill(self) -> None:
        """``kill -9``: no chance to finish the batch, flush or commit."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """Make sure the child is gone (teardown): SIGTERM, then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def tail(self, chars: int = 4000) -> str:
        return log_tail(self.log_path, chars)


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The value of one sample in Prometheus text exposition format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted((labels or {}).items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        found = ",".join(sorted(p for p in label_text.rstrip("}").split(",") if p))
        if metric == name and found == wanted:
            total += float(value)
    return total
