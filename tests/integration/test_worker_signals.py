"""Graceful SIGTERM: the worker process finishes its batch, commits, closes and exits 0.

A worker subprocess works off a backlog while a producer keeps sending; SIGTERM arrives at a
random moment. Within the grace time it must exit 0 with its last batch committed: the group's
committed offset is exactly what was applied (each stream's state holds the events below it and
none above). A worker restarted in the same group then applies the rest: nothing twice (no
replay at all), nothing lost, and no alert repeated.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import redis

from stream_ae_dev.devstack import BrokerProcess
from tests.support.kafka_clients import read_records
from tests.support.kafka_topics import BackgroundProducer, committed_offsets
from tests.support.outcomes import (
    alerts_of,
    applied_counts,
    decode_states_equal,
    expected_outcome,
    good_counts,
    stored_blobs,
    stored_states,
)
from tests.support.tiny_model import TinyModel, live_messages, load_tiny_scorer, long_fleet
from tests.support.waiting import wait_until
from tests.support.worker_process import WorkerProcess, running_worker, settings_of
from tests.support.worker_setup import WorkerConfigFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Kubernetes' default terminationGracePeriodSeconds.
GRACE_S = 30.0
RATE_PER_S = 100.0
MAX_POLL_RECORDS = 100  # the backlog built during start-up takes many batches to work off


def test_sigterm_mid_stream_commits_the_last_batch_and_exits_0(
    broker: BrokerProcess,
    redis_client: redis.Redis,
    new_worker_config: WorkerConfigFactory,
    tiny_model: TinyModel,
    tmp_path: Path,
) -> None:
    config = new_worker_config(max_poll_records=MAX_POLL_RECORDS)
    (input_topic,), alerts_topic = config["input_topics"], config["alerts_topic"]
    prefix = config["redis_key_prefix"]
    producer = BackgroundProducer(
        broker.bootstrap_servers,
        input_topic,
        live_messages(long_fleet(5000)),
        rate_per_s=RATE_PER_S,
    ).start()
    worker = WorkerProcess(config, tmp_path / "worker.log").start()
    try:
        worker.wait_ready()
        wait_until(
            lambda: sum(applied_counts(redis_client, prefix, tiny_model).values()) > 0,
            60,
            "the first events applied",
            interval_s=0.05,
        )
        time.sleep(random.uniform(0.0, 0.5))
        assert producer.running, "SIGTERM must come while the stream flows"
        worker.terminate()
        returncode = worker.wait(GRACE_S)  # raises TimeoutExpired past the grace time
        assert returncode == 0, worker.tail()
        assert "signal received" in worker.tail(20_000)
        time.sleep(0.5)  # the stream flows on past the stop: events no worker has consumed
    finally:
        sent = producer.finish()
        worker.stop()

    # Committed = applied: every event below the committed offset is in the states, none above.
    committed = committed_offsets(broker.bootstrap_servers, config["group_id"], input_topic)
    assert set(committed) == {0} and committed[0] is not None
    boundary = committed[0]
    assert 0 < boundary < len(sent), "SIGTERM should have come mid-stream"
    states = stored_states(redis_client, prefix, tiny_model)
    assert {s: st.count for s, st in states.items()} == good_counts(sent[:boundary])
    for stream, state in states.items():
        last = max(m.offset for m in sent[:boundary] if m.key == stream.encode())
        assert (state.partition, state.offset) == (0, last)

    # Restarted in the same group: the rest is applied, nothing replayed, nothing lost.
    settings = settings_of(config)
    with running_worker(settings) as restarted:
        wait_until(
            lambda: applied_counts(redis_client, prefix, tiny_model) == good_counts(sent),
            120,
            "the restarted worker to apply the rest",
        )
        totals = restarted.totals
    assert (totals.consumed, totals.applied, totals.skipped) == (
        len(sent) - boundary,
        len(sent) - boundary,
        0,
    )
    oracle = expected_outcome(sent, settings, load_tiny_scorer(tiny_model))
    assert decode_states_equal(stored_blobs(redis_client, prefix), oracle.blobs) == []
    alert_ids = [
        a["alert_id"] for a in alerts_of(read_records(broker.bootstrap_servers, alerts_topic))
    ]
    assert sorted(alert_ids) == sorted(oracle.alert_ids)  # none lost, none repeated
