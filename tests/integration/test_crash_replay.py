"""Crash-replay: ``kill -9`` the worker process at random points while a stream flows.

A worker subprocess (``python -m stream_ae worker``) is killed at a random moment shortly after
it has joined the group, ``KILLS`` times, and replaced each time, while a producer keeps sending.
Meanwhile an uninterrupted worker consumes the same input topic in its own consumer group,
writing under its own Redis key prefix and to its own alerts topic. In the end:

- the final Redis states are byte for byte the same (and the same as the oracle's);
- every stream's state counts exactly the events sent for it: none lost, none applied twice;
- the set of alert ids is the same (the crashed run may repeat alerts, never miss one).

The kill points are random; the seed is printed, and ``CRASH_REPLAY_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from stream_ae_dev.devstack import BrokerProcess, RedisProcess
from tests.support.kafka_topics import BackgroundProducer, read_topic
from tests.support.outcomes import (
    alerts_of,
    applied_counts,
    decode_states_equal,
    expected_outcome,
    good_counts,
    stored_blobs,
)
from tests.support.port_gate import PortGate
from tests.support.tiny_model import TinyModel, live_messages, load_tiny_scorer, long_fleet
from tests.support.waiting import wait_until
from tests.support.worker_process import (
    WorkerProcess,
    metric_value,
    running_worker,
    settings_of,
    worker_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 5
# Events per second sent while the worker is killed and restarted: while it is down a backlog
# builds up, which the restarted worker works off in several poll batches (max_poll_records
# below), so a random kill shortly after the restart usually lands inside a batch.
RATE_PER_S = 40.0
MAX_POLL_RECORDS = 25
# The latest a kill comes after the worker has joined the group (while it works off the
# backlog, typically).
KILL_WITHIN_S = 0.8
# Enough live events never to run dry during the kills (~750 s at RATE_PER_S); the
# anomalies come in the first 300 steps (~45 s).
LIVE_STEPS = 5000
FINISH_TIMEOUT_S = 180.0
GRACE_S = 30.0
# Replacements start ahead of time, held at a closed gate in front of Redis while they import
# TensorFlow and warm the model (most of a start's time); a gate opens when its predecessor has
# been killed. Starting them one after the other would make this test several times longer.
WARM_AHEAD = 3
SKIPPED = ("stream_ae_events_total", {"outcome": "skipped"})


def test_kill_9_at_random_points_gives_the_state_and_alerts_of_an_uninterrupted_run(
    broker: BrokerProcess,
    redis_server: RedisProcess,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    tiny_model: TinyModel,
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("CRASH_REPLAY_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    print(f"\n[crash-replay] seed {seed} (set CRASH_REPLAY_SEED={seed} to replay it)")
    streams = long_fleet(LIVE_STEPS)
    input_topic = topic_factory(2, prefix="in")
    common: dict[str, Any] = {
        "bootstrap_servers": broker.bootstrap_servers,
        "redis_url": redis_server.url,
        "model": tiny_model,
        "input_topic": input_topic,
        "dlq_topic": topic_factory(1, prefix="dlq"),
        "max_poll_records": MAX_POLL_RECORDS,
    }
    crashing = worker_config(alerts_topic=topic_factory(1, prefix="alerts-crash"), **common)
    reference = worker_config(alerts_topic=topic_factory(1, prefix="alerts-ref"), **common)
    reference_settings = settings_of(reference)

    producer = BackgroundProducer(
        broker.bootstrap_servers, input_topic, live_messages(streams), rate_per_s=RATE_PER_S
    )
    launched: list[tuple[WorkerProcess, PortGate]] = []
    waiting: deque[tuple[WorkerProcess, PortGate]] = deque()

    def launch() -> None:
        gate = PortGate(redis_server.host, redis_server.port)
        log_path = tmp_path / f"worker-{len(launched)}.log"
        process = WorkerProcess({**crashing, "redis_url": gate.redis_url}, log_path).start()
        launched.append((process, gate))
        waiting.append((process, gate))

    replayed = 0.0
    with running_worker(reference_settings) as uninterrupted:
        producer.start()
        try:
            for run in range(KILLS + 1):
                while len(launched) < KILLS + 1 and len(waiting) < WARM_AHEAD:
                    launch()
                worker, gate = waiting.popleft()
                gate.open()  # the restart: the warmed-up replacement connects and joins
                worker.wait_ready()
                if run == KILLS:
                    break  # the last one runs to the end
                time.sleep(rng.uniform(0.0, KILL_WITHIN_S))
                assert producer.running, "the stream must still flow when the worker is killed"
                assert worker.returncode is None, worker.tail()
                # For the report: events this worker found already applied (its predecessor
                # was killed between writing the states and committing).
                replayed += metric_value(worker.get("/metrics")[1], *SKIPPED)
                worker.kill()
                gate.close()
            sent = producer.finish()
            expected_counts = good_counts(sent)

            def done(prefix: str) -> Callable[[], bool]:
                return lambda: applied_counts(redis_client, prefix, tiny_model) == expected_counts

            wait_until(
                done(crashing["redis_key_prefix"]),
                FINISH_TIMEOUT_S,
                "the restarted worker to apply every event",
                on_timeout=worker.tail,
            )
            wait_until(
                done(reference["redis_key_prefix"]),
                FINISH_TIMEOUT_S,
                "the uninterrupted worker to apply every event",
            )
            replayed += metric_value(worker.get("/metrics")[1], *SKIPPED)
            worker.terminate()
            assert worker.wait(GRACE_S) == 0, worker.tail()
        finally:
            producer.finish()
            for process, port_gate in launched:
                process.stop()
                port_gate.close()
        uninterrupted_totals = uninterrupted.totals

    # No event applied twice or lost: per stream, the state counts the events sent for it.
    assert applied_counts(redis_client, crashing["redis_key_prefix"], tiny_model) == (
        expected_counts
    )
    assert uninterrupted_totals.applied == len(sent) and uninterrupted_totals.skipped == 0

    # The same final state, byte for byte, as the uninterrupted run and as the oracle.
    crashed_blobs = stored_blobs(redis_client, crashing["redis_key_prefix"])
    reference_blobs = stored_blobs(redis_client, reference["redis_key_prefix"])
    assert decode_states_equal(crashed_blobs, reference_blobs) == []
    oracle = expected_outcome(sent, reference_settings, load_tiny_scorer(tiny_model))
    assert decode_states_equal(reference_blobs, oracle.blobs) == []

    # The same set of alert ids: duplicates allowed, nothing missing, nothing extra.
    crashed_ids = [
        a["alert_id"]
        for a in alerts_of(read_topic(broker.bootstrap_servers, crashing["alerts_topic"]))
    ]
    reference_ids = [
        a["alert_id"]
        for a in alerts_of(read_topic(broker.bootstrap_servers, reference["alerts_topic"]))
    ]
    assert reference_ids, "no alert at all: the comparison below would prove nothing"
    assert len(set(reference_ids)) == len(reference_ids)  # the uninterrupted run never repeats
    assert set(crashed_ids) == set(reference_ids) == oracle.alert_ids
    print(
        f"[crash-replay] {KILLS} kills, {len(sent)} events, {len(set(reference_ids))} alert ids, "
        f"{len(crashed_ids) - len(set(crashed_ids))} repeated by the crashed run, "
        f"{replayed:.0f} replayed events skipped by the restarted workers"
    )
