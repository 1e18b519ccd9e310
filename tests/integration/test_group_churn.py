"""Group churn: workers killed, added and stopped while events flow; every count stays exact.

Three ``stream-ae worker`` subprocesses share one consumer group on a 6-partition topic while a
producer sends the events of eight streams (two or more per worker's partitions). Then, with
the stream still flowing:

1. one worker is killed with ``kill -9`` (no flush, no commit: its partitions move to the
   others after the session timeout and their uncommitted events are replayed);
2. a fourth worker joins (warmed up beforehand behind a closed gate in front of Redis);
3. another worker gets SIGTERM: it finishes its batch, commits and leaves, exiting 0.

Meanwhile an uninterrupted in-process worker consumes the same topic in its own group. In the
end every stream's state counts exactly the events sent for it (none lost, none applied twice),
the states are byte for byte the uninterrupted run's and the oracle's, and the set of alert ids
is the same (the churned group may repeat an alert, never miss or invent one).

What is not tested here: Apache Kafka's own rebalancing (the broker is Tansu, whose commits are
not fenced); the guarantee rests on the fenced, offset-stamped state, which holds either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from stream_ae.core.synthetic import make_stream
from stream_ae_dev.devstack import BrokerProcess, RedisProcess
from tests.support.kafka_topics import BackgroundProducer
from tests.support.outcomes import (
    applied_counts,
    assert_same_as_uninterrupted,
    good_counts,
)
from tests.support.port_gate import PortGate
from tests.support.tiny_model import (
    HISTORY_STEPS,
    TinyModel,
    live_messages,
    long_fleet,
)
from tests.support.waiting import wait_until
from tests.support.worker_process import (
    WorkerProcess,
    metric_value,
    running_worker,
    settings_of,
    worker_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 6
# fleet()'s six streams land on partitions 4, 3, 3, 5, 1, 0 (Kafka's default partitioner);
# host-6 and host-7 add 0 and 2, so every partition carries at least one stream.
EXTRA_STREAMS = ("host-6", "host-7")
RATE_PER_S = 60.0
# Enough live events never to run dry (~530 s at RATE_PER_S); the fleet's anomalies come in its
# first 300 steps (~40 s), so alerts are opened and resolved while the group churns.
LIVE_STEPS = 4000
SESSION_TIMEOUT_MS = 6000  # Tansu: a join takes about half of it, a rebalance about all of it
# Seconds of flow between the churn steps, so each step lands while the group is working.
FLOW_S = 3.0
# Liveness bounds, not speed assertions.
CATCH_UP_TIMEOUT_S = 180.0
GRACE_S = 30.0
APPLIED = ("stream_ae_events_total", {"outcome": "applied"})
SKIPPED = ("stream_ae_events_total", {"outcome": "skipped"})
FENCED = ("stream_ae_fenced_writes_refused_total", None)


def test_kill_add_and_sigterm_in_a_group_of_three_keep_every_count_exact(
    broker: BrokerProcess,
    redis_server: RedisProcess,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    tiny_model: TinyModel,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    streams = long_fleet(LIVE_STEPS) + [
        make_stream(name, HISTORY_STEPS + LIVE_STEPS, seed=100 + int(name.split("-")[1]))
        for name in EXTRA_STREAMS
    ]
    input_topic = topic_factory(PARTITIONS, prefix="churn-in")
    common: dict[str, Any] = {
        "bootstrap_servers": broker.bootstrap_servers,
        "redis_url": redis_server.url,
        "model": tiny_model,
        "input_topic": input_topic,
        "dlq_topic": topic_factory(1, prefix="churn-dlq"),
        "session_timeout_ms": SESSION_TIMEOUT_MS,
    }
    group = worker_config(alerts_topic=topic_factory(1, prefix="alerts-churn"), **common)
    reference = worker_config(alerts_topic=topic_factory(1, prefix="alerts-ref"), **common)
    reference_settings = settings_of(reference)

    # All four start now: TensorFlow's import and the warm-up are most of a start's time. The
    # fourth waits at a closed gate in front of Redis (not yet in the group) until its turn.
    gate = PortGate(redis_server.host, redis_server.port)
    workers = [WorkerProcess(group, tmp_path / f"worker-{i}.log").start() for i in range(3)]
    added = WorkerProcess({**group, "redis_url": gate.redis_url}, tmp_path / "worker-3.log")
    workers.append(added.start())
    first, second, third = workers[:3]
    producer = BackgroundProducer(
        broker.bootstrap_servers, input_topic, live_messages(streams), rate_per_s=RATE_PER_S
    )
    churn: list[str] = []
    skipped = fenced = 0.0
    with running_worker(reference_settings) as uninterrupted:
        try:
            for worker in workers[:3]:
                worker.wait_ready()
            producer.start()
            # Every worker of the three owns partitions with events and works on them.
            wait_until(
                lambda: all(_metric(w, *APPLIED) > 0 for w in workers[:3]),
                CATCH_UP_TIMEOUT_S,
                "each of the three workers to apply events",
                on_timeout=lambda: "\n".join(w.tail(1500) for w in workers[:3]),
            )
            churn.append(f"3 workers applying at {time.monotonic() - started:.0f} s")
            time.sleep(FLOW_S)

            # 1. kill -9: whatever it had polled and not committed is replayed by the others.
            assert producer.running and first.returncode is None, first.tail()
            skipped += _metric(first, *SKIPPED)
            fenced += _metric(first, *FENCED)
            first.kill()
            churn.append(f"kill -9 at {time.monotonic() - started:.0f} s")
            time.sleep(FLOW_S)

            # 2. A fourth worker joins.
            gate.open()
            added.wait_ready()
            wait_until(
                lambda: _metric(added, *APPLIED) > 0,
                CATCH_UP_TIMEOUT_S,
                "the added worker to apply events",
                on_timeout=added.tail,
            )
            churn.append(f"worker added, applying at {time.monotonic() - started:.0f} s")
            time.sleep(FLOW_S)

            # 3. SIGTERM: the batch is finished and committed, then the worker leaves the group.
            assert producer.running, "the stream must still flow at the SIGTERM"
            skipped_before = _metric(second, *SKIPPED)
            fenced_before = _metric(second, *FENCED)
            second.terminate()
            assert second.wait(GRACE_S) == 0, second.tail()
            skipped += skipped_before
            fenced += fenced_before
            churn.append(f"SIGTERM, exited 0 at {time.monotonic() - started:.0f} s")
            time.sleep(FLOW_S)

            sent = producer.finish()
            expected_counts = good_counts(sent)
            wait_until(
                lambda: (
                    applied_counts(redis_client, group["redis_key_prefix"], tiny_model)
                    == expected_counts
                ),
                CATCH_UP_TIMEOUT_S,
                "the remaining two workers to apply every event",
                on_timeout=lambda: third.tail(1500) + added.tail(1500),
            )
            wait_until(
                lambda: (
                    applied_counts(redis_client, reference["redis_key_prefix"], tiny_model)
                    == expected_counts
                ),
                CATCH_UP_TIMEOUT_S,
                "the uninterrupted worker to apply every event",
            )
            for worker in (third, added):
                skipped += _metric(worker, *SKIPPED)
                fenced += _metric(worker, *FENCED)
                worker.terminate()
                assert worker.wait(GRACE_S) == 0, worker.tail()
        finally:
            producer.finish()
            for worker in workers:
                worker.stop()
            gate.close()
        uninterrupted_totals = uninterrupted.totals

    # Each event applied exactly once, per stream.
    assert applied_counts(redis_client, group["redis_key_prefix"], tiny_model) == expected_counts
    assert set(expected_counts) == {s.name for s in streams}
    assert uninterrupted_totals.applied == len(sent) and uninterrupted_totals.skipped == 0

    churned_ids, reference_ids = assert_same_as_uninterrupted(
        redis_client,
        broker.bootstrap_servers,
        group,
        reference,
        reference_settings,
        sent,
        tiny_model,
    )
    print(
        f"\n[churn] {len(sent)} events of {len(streams)} streams on {PARTITIONS} partitions; "
        f"{'; '.join(churn)}; done at {time.monotonic() - started:.0f} s; "
        f"{len(set(reference_ids))} alert ids, {len(churned_ids) - len(set(churned_ids))} "
        f"repeated by the churned group; {skipped:.0f} replayed events skipped, "
        f"{fenced:.0f} fenced writes refused"
    )


def _metric(worker: WorkerProcess, name: str, labels: dict[str, str] | None) -> float:
    """One sample of a running worker's ``/metrics`` (0 when it does not answer)."""
    status, text = worker.get("/metrics")
    return metric_value(text, name, labels) if status == 200 else 0.0
