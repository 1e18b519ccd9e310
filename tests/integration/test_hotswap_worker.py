"""Hot-swap through the shipped worker: ``python -m stream_ae worker`` (a subprocess, as
deployed) follows a registry on the test broker and Redis while events flow.

The registry's champion is promoted, rolled back, pointed at a corrupt version and promoted
(forced) to one of another window size, then promoted to a good version again. What the worker
did is read from the outside only:

- the alerts topic: each alert names the model version that scored it, so the versions in the
  order the alerts were produced are the versions the worker ran, in order;
- ``/metrics``: ``stream_ae_model_swaps_total`` by result and ``stream_ae_model_info``;
- its heartbeat in Redis (what ``stream-ae model status`` lists), and the window states.

A worker restarted after the champion moved to a model that does not fit the stored window
states refuses it at start-up, as it would on a swap, and ``/readyz`` says why.

The hand-driven manager's cases (recycling, jitter, memory) are in ``test_hotswap.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from stream_ae.cli.model import read_heartbeats
from stream_ae.io.window_store import RedisWindowStore
from stream_ae.model.artifacts import StateShape
from stream_ae.model.network import ModelSpec
from stream_ae.worker.state_shape import check_stored_states
from tests.support.hotswap_models import NAME, SPEC, Load, corrupt_version, publish, read_all
from tests.support.waiting import wait_until
from tests.support.worker_process import WorkerProcess, metric_value
from training.registry import Registry, redis_notifier

pytestmark = [pytest.mark.integration]

SWAPS = "stream_ae_model_swaps_total"


def _collapsed(versions: list[str]) -> list[str]:
    """``versions`` with consecutive repeats collapsed: the order the models ran in."""
    out: list[str] = []
    for version in versions:
        if not out or out[-1] != version:
            out.append(version)
    return out


class Observed:
    """What the worker did, read from its alerts topic and its ``/metrics``."""

    def __init__(self, worker: WorkerProcess, bootstrap: str, alerts_topic: str) -> None:
        self.worker, self.bootstrap, self.alerts_topic = worker, bootstrap, alerts_topic

    def alerts(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in read_all(self.bootstrap, self.alerts_topic)]

    def alert_versions(self) -> list[str]:
        return _collapsed([a["model"]["version"] for a in self.alerts()])

    def metrics(self) -> str:
        status, body = self.worker.get("/metrics")
        assert status == 200, f"/metrics answered {status}:\n{self.worker.tail()}"
        return body

    def swaps(self, result: str) -> float:
        return metric_value(self.metrics(), SWAPS, {"result": result})

    def model_version(self) -> str | None:
        for line in self.metrics().splitlines():
            if line.startswith("stream_ae_model_info{") and line.endswith(" 1.0"):
                return line.split('version="')[1].split('"')[0]
        return None

    def wait(self, predicate: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        def alive_and(predicate: Callable[[], bool]) -> bool:
            assert self.worker.returncode is None, f"the worker exited:\n{self.worker.tail()}"
            return predicate()

        wait_until(
            lambda: alive_and(predicate),
            timeout_s,
            what,
            interval_s=0.5,
            on_timeout=lambda: (
                f"versions in the alerts: {self.alert_versions()}\n" + self.worker.tail()
            ),
        )


def worker_settings(
    registry: Registry, broker: Any, redis_server: Any, topic_factory: Callable[..., str]
) -> dict[str, Any]:
    """The settings of one test's worker, following ``registry`` (fresh topics, group, prefix)."""
    tag = uuid.uuid4().hex[:8]
    return {
        "bootstrap_servers": broker.bootstrap_servers,
        "redis_url": redis_server.url,
        "model_path": str(registry.root),
        "model_name": NAME,
        "input_topics": [topic_factory()],
        "alerts_topic": topic_factory(prefix="alerts"),
        "dlq_topic": topic_factory(prefix="dlq"),
        "group_id": f"hsw-{tag}",
        "redis_key_prefix": f"hsw{tag}",
        "worker_id": f"hsw-{tag}",
        "session_timeout_ms": 6000,
        "fetch_max_wait_ms": 20,
        "max_batch_wait_ms": 50,
        "max_poll_records": 200,
        "batch_buckets": [16, 128],
        "retry_backoff_max_s": 1.0,
        # Notifications make swaps prompt; the poll is the fallback a lost one would need.
        "model_poll_interval_s": 2.0,
        # Many alerts, opened and resolved, so that every model leaves some behind.
        "threshold": 0.8,
        "resolve_after_windows": 1,
        "metrics_host": "127.0.0.1",
        "log_format": "text",
        "log_level": "INFO",
    }


def test_the_shipped_worker_swaps_rolls_back_and_refuses_while_events_flow(
    tmp_path: Path,
    broker: Any,
    redis_server: Any,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
) -> None:
    registry = Registry(tmp_path / "registry", notifier=redis_notifier(redis_server.url))
    v1 = publish(registry)
    config = worker_settings(registry, broker, redis_server, topic_factory)
    worker = WorkerProcess(config, tmp_path / "worker.log").start()
    seen = Observed(worker, broker.bootstrap_servers, config["alerts_topic"])
    load: Load | None = None
    try:
        worker.wait_ready()
        assert seen.model_version() == v1
        load = Load(broker.bootstrap_servers, config["input_topics"][0], rate_per_s=300)
        seen.wait(lambda: seen.alert_versions() == [v1], "alerts of the first champion")

        # 1. Publish and promote: the worker swaps, its alerts name the new version.
        v2 = publish(registry, seed=1)
        seen.wait(lambda: seen.alert_versions() == [v1, v2], "alerts of the promoted version")
        assert seen.swaps("swapped") == 1 and seen.model_version() == v2

        # 2. Roll back: back to the first version (kept warm, no reload).
        assert registry.rollback(NAME) == v1
        seen.wait(lambda: seen.alert_versions() == [v1, v2, v1], "alerts after the rollback")
        assert seen.swaps("swapped") == 2 and seen.model_version() == v1

        # 3. Refused: a corrupt version (a raw pointer flip, as a disk fault would leave it)
        # and one of another window size (promoted by force past the registry's own check).
        corrupt = corrupt_version(registry, "truncated")
        assert registry.notifier is not None
        registry.notifier(NAME, corrupt)
        seen.wait(lambda: seen.swaps("refused_invalid") == 1, "the corrupt model refused")
        incompatible = publish(registry, ModelSpec(window=24, hidden=8), force=True)
        seen.wait(lambda: seen.swaps("refused_incompatible") == 1, "the incompatible model refused")
        applied = metric_value(seen.metrics(), "stream_ae_events_total", {"outcome": "applied"})
        seen.wait(
            lambda: (
                metric_value(seen.metrics(), "stream_ae_events_total", {"outcome": "applied"})
                > applied + 100
            ),
            "events still applied after the refusals",
        )
        assert seen.model_version() == v1 and seen.swaps("swapped") == 2

        # 4. Still following the registry: the next good version goes live (forced too: the
        # registry's champion is now the window-24 one, which the workers refused).
        v3 = publish(registry, seed=2, force=True)
        seen.wait(lambda: seen.alert_versions()[-1:] == [v3], "alerts of the version after")
        (beat,), unreadable = read_heartbeats(
            redis_client, config["redis_key_prefix"], config["group_id"]
        )
        assert unreadable == []
        assert (beat.version, beat.previous_version, beat.swaps, beat.failures) == (v3, v1, 3, 2)
        assert beat.refused is None  # it moved on to a good version

        load.stop()
        seen.wait(
            lambda: (
                metric_value(seen.metrics(), "stream_ae_events_total", {"outcome": "applied"})
                == load.total  # type: ignore[union-attr]
            ),
            "every event applied",
        )
        metrics = seen.metrics()
    finally:
        if load is not None:
            load.stop()
        worker.stop()

    assert worker.returncode == 0, worker.tail()
    alerts = seen.alerts()
    assert _collapsed([a["model"]["version"] for a in alerts]) == [v1, v2, v1, v3]
    assert all(a["model"]["name"] == NAME for a in alerts)
    assert len({a["alert_id"] for a in alerts}) == len(alerts)  # none sent twice
    assert {corrupt, incompatible}.isdisjoint(a["model"]["version"] for a in alerts)
    for result, count in (
        ("swapped", 3),
        ("refused_invalid", 1),
        ("refused_incompatible", 1),
    ):
        assert metric_value(metrics, SWAPS, {"result": result}) == count, result
    # Nothing lost or applied twice across the swaps: each stream's state counts what was sent.
    assert metric_value(metrics, "stream_ae_events_total", {"outcome": "skipped"}) == 0
    states = RedisWindowStore(redis_client, SPEC.window, 1, config["redis_key_prefix"]).load(
        list(load.sent)
    )
    assert {s: st.count if st else 0 for s, st in states.items()} == load.sent
    # A stopped worker leaves no heartbeat behind.
    assert read_heartbeats(redis_client, config["redis_key_prefix"]) == ([], [])


def test_a_champion_that_does_not_fit_the_stored_states_is_refused_at_start_up(
    tmp_path: Path,
    broker: Any,
    redis_server: Any,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
) -> None:
    """A worker restarted after ``CHAMPION`` moved (by force) to a model of another window
    size: it must not load it over the states of the old one. It stays alive and not ready,
    ``/readyz`` says why, and it comes up when the pointer is put right."""
    registry = Registry(tmp_path / "registry")
    v1 = publish(registry)
    config = worker_settings(registry, broker, redis_server, topic_factory)
    # The states a worker on v1 left (their shape is recorded beside them).
    check_stored_states(
        redis_client, config["redis_key_prefix"], StateShape.of(SPEC), "the first worker"
    )
    wide = publish(registry, ModelSpec(window=24, hidden=8), force=True)
    worker = WorkerProcess(config, tmp_path / "worker.log").start()
    try:
        wait_until(
            lambda: worker.get("/readyz")[0] == 503 and "differs" in worker.get("/readyz")[1],
            120,
            "/readyz to say why the worker cannot start",
            on_timeout=worker.tail,
        )
        status, body = worker.get("/readyz")
        assert status == 503 and f"model {NAME}/{wide}" in body
        assert "window 24 x ['value'] differs from window 16 x ['value']" in body
        assert worker.get("/healthz")[0] == 200  # alive: waiting, not crash-looping
        # Forced as the promotion was: the registry compares with its champion (window 24).
        assert registry.rollback(NAME, force=True) == v1
        worker.wait_ready()
        assert worker.get("/readyz") == (200, "ready\n")
    finally:
        worker.stop()
    assert worker.returncode == 0, worker.tail()
