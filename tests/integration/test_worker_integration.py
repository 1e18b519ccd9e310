"""The worker end to end on the real broker and a real Redis (issue 3, integration tests).

- streams with injected anomalies give alerts at the anomalies and none on normal streams;
  every alert validates against the shipped JSON Schema; the final states and alert ids are
  exactly those of the oracle (the same core replayed in one batch); a poll batch costs at
  most two Redis round trips;
- Redis going away mid-run (its server stopped and restarted on the same port): nothing is
  committed past unprocessed data, and the run ends with nothing lost or applied twice;
- two workers of one group split two partitions and their totals add up;
- fencing: a zombie's stale write is refused;
- a stream that pauses, under ``STREAM_AE_GAP_POLICY=mark``: the alerts of windows across the
  pause carry ``window.gap`` true, exactly as the oracle says.

The workers run in-process here (``build_worker``, as ``stream-ae worker`` builds them), on a
thread; the worker as a subprocess is exercised by the crash-replay and SIGTERM tests.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis
from jsonschema import Draft202012Validator

from stream_ae.core.records import alert_schema, parse_ts
from stream_ae.core.state_codec import decode_state
from stream_ae.io.window_store import RedisWindowStore
from stream_ae_dev.devstack import BrokerProcess, RedisProcess
from tests.support.kafka_clients import read_records
from tests.support.kafka_topics import committed_offsets, produce
from tests.support.outcomes import (
    alerts_of,
    applied_counts,
    decode_states_equal,
    expected_outcome,
    good_counts,
    stored_blobs,
)
from tests.support.tiny_model import (
    ANOMALOUS_STREAMS,
    HISTORY_STEPS,
    TinyModel,
    fleet,
    live_messages,
    load_tiny_scorer,
)
from tests.support.waiting import wait_until
from tests.support.worker_process import running_worker, settings_of
from tests.support.worker_setup import WorkerConfigFactory

pytestmark = pytest.mark.integration

PROCESS_TIMEOUT_S = 120.0


def _commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: int(entry["calls"]) for name, entry in stats.items()}


def test_end_to_end_alerts_at_anomalies_none_on_normal_streams(
    broker: BrokerProcess,
    redis_client: redis.Redis,
    new_worker_config: WorkerConfigFactory,
    tiny_model: TinyModel,
) -> None:
    streams = fleet()
    settings = settings_of(new_worker_config(partitions=2))
    (input_topic,) = settings.input_topics
    # A backlog, so the worker's rate below is its own, not the producer's.
    sent = produce(broker.bootstrap_servers, input_topic, live_messages(streams))
    expected = expected_outcome(sent, settings, load_tiny_scorer(tiny_model))
    assert expected.alert_ids, "the oracle finds no alert: the test data has lost its anomalies"

    redis_client.config_resetstat()
    with running_worker(settings) as worker:
        wait_until(lambda: worker.metrics.ready, PROCESS_TIMEOUT_S, "partition assignment")
        started = time.perf_counter()
        wait_until(
            lambda: worker.totals.applied >= len(sent),
            PROCESS_TIMEOUT_S,
            f"{len(sent)} events applied",
            interval_s=0.02,
        )
        elapsed_s = time.perf_counter() - started
        store = worker.processor.store
        assert isinstance(store, RedisWindowStore)
        round_trips = store.round_trips
        batches = worker.metrics.registry.get_sample_value("stream_ae_batch_size_count") or 0
        totals = worker.totals
    commands = _commandstats(redis_client)

    # Every event applied once; nothing dead-lettered or skipped; state = the oracle's.
    assert (totals.consumed, totals.applied, totals.skipped) == (len(sent), len(sent), 0)
    assert totals.dead_lettered == 0
    blobs = stored_blobs(redis_client, settings.redis_key_prefix)
    assert decode_states_equal(blobs, expected.blobs) == []

    # At most two round trips per poll batch: one pipelined load (only for streams not cached)
    # and one pipelined fenced write.
    assert batches >= 1
    assert batches <= round_trips <= 2 * batches
    # The fenced write is one EVALSHA per batch, running one GET and (every write of this lone
    # worker lands) one SET per touched state; the load, where a batch has streams not cached,
    # one more EVALSHA, running one GET per stream. Each state is loaded once (then cached), so
    # the GETs that are not the fence's number the streams (other users of Redis, such as the
    # hot-swap heartbeat, may add a few GETs or SETs of their own).
    evalsha = commands.get("cmdstat_evalsha", 0)
    scripted = commands.get("cmdstat_set", 0)
    loads = commands.get("cmdstat_get", 0) - scripted
    assert batches <= evalsha <= 2 * batches
    assert len(streams) <= scripted <= len(streams) * batches + 2 * batches
    assert len(streams) - 2 * batches <= loads <= len(streams) + 2 * batches
    print(
        f"\n[e2e] {len(sent)} events in {elapsed_s:.2f} s from assignment: "
        f"{len(sent) / elapsed_s:.0f} events/s end to end; batch processing "
        f"{len(sent) / totals.seconds:.0f} events/s; {int(batches)} poll batches, "
        f"{round_trips} Redis round trips ({round_trips / batches:.2f} per batch), "
        f"commandstats: {loads} GET outside the fence, {evalsha} EVALSHA"
    )

    # Alerts: valid, at the anomalies, none on normal streams, exactly the oracle's ids.
    records = read_records(broker.bootstrap_servers, settings.alerts_topic)
    validator = Draft202012Validator(
        alert_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    parsed = alerts_of(records)
    for record, alert in zip(records, parsed, strict=True):
        validator.validate(alert)
        assert record.key == alert["stream"].encode()
    assert {a["alert_id"] for a in parsed} == expected.alert_ids
    by_position = {(m.partition, m.offset): m for m in sent}
    window = tiny_model.window
    anomalous = {s.name: s for s in streams[:ANOMALOUS_STREAMS]}
    for alert in parsed:
        assert alert["stream"] in anomalous, f"alert on a normal stream: {alert}"
        # The source is the window's last event: that stream's event at the window's end.
        source = by_position[(alert["source"]["partition"], alert["source"]["offset"])]
        assert source.key == alert["stream"].encode()
        assert alert["source"]["topic"] == input_topic
        end_ts = parse_ts(alert["window"]["end_ts"])
        assert orjson.loads(source.value or b"{}")["ts"] == end_ts
        if alert["status"] == "open":
            stream = anomalous[alert["stream"]]
            step = int(np.searchsorted(stream.ts_ms, end_ts))
            # A window touches an anomaly [start, end) when it ends in [start, end + W - 1).
            assert any(start <= step < end + window - 1 for start, end, _ in stream.anomalies), (
                f"{alert['stream']}: alert at live step {step - HISTORY_STEPS}, anomalies at "
                f"{[(a - HISTORY_STEPS, b - HISTORY_STEPS) for a, b, _ in stream.anomalies]}"
            )
    opened = {a["stream"] for a in parsed if a["status"] == "open"}
    assert opened == set(anomalous), f"streams with an alert: {sorted(opened)}"


def test_a_worker_under_gap_policy_mark_flags_the_alerts_of_windows_across_a_pause(
    broker: BrokerProcess,
    redis_client: redis.Redis,
    new_worker_config: WorkerConfigFactory,
    tiny_model: TinyModel,
) -> None:
    streams = fleet()
    # host-0 pauses for an hour just before its first anomaly: the windows that see the
    # anomaly first also span the pause.
    first = min(start for start, _, _ in streams[0].anomalies)
    ts = streams[0].ts_ms.copy()
    ts[first:] += 3_600_000
    streams[0] = dataclasses.replace(streams[0], ts_ms=ts)
    settings = settings_of(new_worker_config(gap_policy="mark"))
    (input_topic,) = settings.input_topics
    sent = produce(broker.bootstrap_servers, input_topic, live_messages(streams))
    expected = expected_outcome(sent, settings, load_tiny_scorer(tiny_model))
    assert True in expected.alert_gaps.values(), "no alert across the pause: test data changed"
    with running_worker(settings) as worker:
        wait_until(
            lambda: worker.totals.applied >= len(sent),
            PROCESS_TIMEOUT_S,
            f"{len(sent)} events applied",
        )
    parsed = alerts_of(read_records(broker.bootstrap_servers, settings.alerts_topic))
    assert {a["alert_id"]: a["window"]["gap"] for a in parsed} == expected.alert_gaps
    validator = Draft202012Validator(alert_schema())
    for alert in parsed:
        validator.validate(alert)
        spans = (
            parse_ts(alert["window"]["start_ts"]) < ts[first] <= parse_ts(alert["window"]["end_ts"])
        )
        assert alert["window"]["gap"] == (alert["stream"] == "host-0" and spans), alert
    blobs = stored_blobs(redis_client, settings.redis_key_prefix)
    assert decode_states_equal(blobs, expected.blobs) == []


def test_redis_restart_mid_run_loses_and_doubles_nothing(
    broker: BrokerProcess,
    new_worker_config: WorkerConfigFactory,
    tiny_model: TinyModel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis stops (its data saved, as a persistent Redis keeps it) while events arrive, and
    comes back on the same port: no commit past unprocessed data, nothing lost or doubled."""
    streams = fleet()
    messages = list(live_messages(streams))
    first, second, third = messages[:600], messages[600:1200], messages[1200:]
    server = RedisProcess(run_dir=tmp_path / "redis").start()
    try:
        settings = settings_of(new_worker_config(redis_url=server.url))
        (input_topic,) = settings.input_topics
        client = redis.Redis.from_url(server.url)
        sent = produce(broker.bootstrap_servers, input_topic, first)
        caplog.set_level(logging.ERROR, logger="stream_ae.worker.loop")
        with running_worker(settings) as worker:
            wait_until(lambda: worker.totals.applied == len(first), PROCESS_TIMEOUT_S, "first part")
            committed_before = committed_offsets(
                broker.bootstrap_servers, settings.group_id, input_topic
            )
            assert committed_before == {0: len(first)}

            # Redis goes away (saving its data to the run dir first), events keep coming.
            client.shutdown(save=True)
            server.stop()
            client.close()
            sent += produce(broker.bootstrap_servers, input_topic, second)
            wait_until(
                lambda: (
                    (
                        worker.metrics.registry.get_sample_value(
                            "stream_ae_errors_total", {"kind": "store"}
                        )
                        or 0
                    )
                    >= 2
                ),
                PROCESS_TIMEOUT_S,
                "the worker to fail on Redis (twice)",
            )
            # Nothing committed past what was processed, nothing counted as applied.
            assert committed_offsets(broker.bootstrap_servers, settings.group_id, input_topic) == {
                0: len(first)
            }
            assert worker.totals.applied == len(first)
            assert any("unavailable" in r.getMessage() for r in caplog.records)

            # Redis comes back on the same port with its data; the worker resumes.
            server = RedisProcess(run_dir=tmp_path / "redis", port=server.port).start()
            sent += produce(broker.bootstrap_servers, input_topic, third)
            wait_until(lambda: worker.totals.applied >= len(sent), PROCESS_TIMEOUT_S, "all events")
            totals = worker.totals
        client = redis.Redis.from_url(server.url)
        expected = expected_outcome(sent, settings, load_tiny_scorer(tiny_model))
        blobs = stored_blobs(client, settings.redis_key_prefix)
        assert decode_states_equal(blobs, expected.blobs) == []
        assert applied_counts(client, settings.redis_key_prefix, tiny_model) == good_counts(sent)
        assert totals.applied == len(sent) and totals.dead_lettered == 0
        alert_ids = {
            a["alert_id"]
            for a in alerts_of(read_records(broker.bootstrap_servers, settings.alerts_topic))
        }
        assert alert_ids == expected.alert_ids
        assert committed_offsets(broker.bootstrap_servers, settings.group_id, input_topic) == {
            0: len(sent)
        }
    finally:
        server.stop()


def test_two_workers_in_one_group_split_the_partitions_and_totals_add_up(
    broker: BrokerProcess,
    redis_client: redis.Redis,
    new_worker_config: WorkerConfigFactory,
    tiny_model: TinyModel,
) -> None:
    settings = settings_of(new_worker_config(partitions=2))
    (input_topic,) = settings.input_topics
    with running_worker(settings) as first, running_worker(settings) as second:
        workers = (first, second)
        wait_until(
            lambda: all(len(w.consumer.assignment()) == 1 for w in workers),
            PROCESS_TIMEOUT_S,
            "one partition for each worker",
        )
        sent = produce(broker.bootstrap_servers, input_topic, live_messages(fleet()))
        assert {m.partition for m in sent} == {0, 1}, "the streams' keys should use both"
        wait_until(
            lambda: (
                applied_counts(redis_client, settings.redis_key_prefix, tiny_model)
                == good_counts(sent)
            ),
            PROCESS_TIMEOUT_S,
            "every event applied",
        )
        totals = [w.totals for w in workers]
        partitions = [{tp.partition for tp in w.consumer.assignment()} for w in workers]
        cached = [set(w.processor.cache) for w in workers]

    # Each worker did its partition's share, and only that: the totals add up to the input.
    assert partitions[0] | partitions[1] == {0, 1} and not partitions[0] & partitions[1]
    for worker_totals, worker_partitions in zip(totals, partitions, strict=True):
        share = sum(m.partition in worker_partitions for m in sent)
        assert (worker_totals.consumed, worker_totals.applied) == (share, share)
        assert worker_totals.skipped == 0
    assert sum(t.applied for t in totals) == len(sent)
    assert cached[0] and cached[1] and not cached[0] & cached[1]
    expected = expected_outcome(sent, settings, load_tiny_scorer(tiny_model))
    blobs = stored_blobs(redis_client, settings.redis_key_prefix)
    assert decode_states_equal(blobs, expected.blobs) == []


def test_a_zombie_write_is_refused_by_the_fence(
    redis_client: redis.Redis, tiny_model: TinyModel
) -> None:
    """A worker that lost its partition without noticing (a zombie) still holds an old cached
    state and processes a stale batch; its write must not overwrite the newer state written
    by the partition's new owner."""
    from stream_ae.core.alerting import AlertPolicy
    from stream_ae.core.records import Event
    from stream_ae.worker.processor import StreamProcessor

    scorer = load_tiny_scorer(tiny_model)
    stream = fleet()[0]
    events = [
        Event(stream.name, int(stream.ts_ms[k]), stream.values[k], "metrics", 3, offset)
        for offset, k in enumerate(range(HISTORY_STEPS, HISTORY_STEPS + 200))
    ]

    def processor() -> StreamProcessor:
        store = RedisWindowStore(redis_client, tiny_model.window, tiny_model.features, "fence")
        return StreamProcessor(
            store, lambda: scorer, stride=1, policy=AlertPolicy(), clock_ms=lambda: 0
        )

    zombie, owner = processor(), processor()
    key = f"fence:w:{{{stream.name}}}"
    first = zombie.process(events[:100])
    assert zombie.save(first.touched) == []

    # The partition moves: the new owner loads the state at offset 99 and goes on to 199.
    newer = owner.process(events[100:])
    assert newer.events_applied == 100
    assert owner.save(newer.touched) == []
    stored = redis_client.get(key)

    # The zombie, from its cache at offset 99, applies a stale batch up to offset 149 and
    # writes: refused, and its cached state is dropped so it cannot build on it.
    stale = zombie.process(events[100:150])
    assert stale.touched[stream.name].offset == 149
    assert zombie.save(stale.touched) == [stream.name]
    assert stream.name not in zombie.cache
    assert redis_client.get(key) == stored
    # A replay of applied events is skipped, and a write at an equal offset is refused: a
    # second owner that applied the same batch writes a state at the stored offset, 199.
    replay = processor().process(events[:100])
    assert replay.events_skipped == 100 and not replay.touched
    equal = StreamProcessor(
        RedisWindowStore(redis_client, tiny_model.window, tiny_model.features, "fence-twin"),
        lambda: scorer,
        stride=1,
        policy=AlertPolicy(),
        clock_ms=lambda: 0,
    ).process(events)  # the same 200 events elsewhere: a different state at offset 199
    different = equal.touched[stream.name]
    assert different.offset == 199
    tampered = dataclasses.replace(different, count=different.count + 1)
    assert owner.save({stream.name: tampered}) == [stream.name]  # equal offset: refused
    assert redis_client.get(key) == stored
    # The state the zombie would have written was genuinely older.
    assert isinstance(stored, bytes)
    assert decode_state(stored).offset == 199 and decode_state(stored).count == 200


def test_a_non_retriable_error_stops_the_worker_with_one_fatal_line(
    broker: BrokerProcess,
    new_worker_config: WorkerConfigFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``auto_offset_reset='error'`` and a group that never committed: the client will not
    guess where to start, and no retry changes that. The worker stops at once with exit code
    1 and one line saying why, having committed nothing, instead of retrying forever."""
    from stream_ae.worker.bootstrap import build_worker

    settings = settings_of(new_worker_config(auto_offset_reset="error"))
    (input_topic,) = settings.input_topics
    produce(broker.bootstrap_servers, input_topic, list(live_messages(fleet()))[:50])
    caplog.set_level(logging.ERROR, logger="stream_ae.worker.loop")
    worker = build_worker(settings)
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(worker.run()), daemon=True)
    thread.start()
    thread.join(PROCESS_TIMEOUT_S)
    assert not thread.is_alive(), "the worker did not stop"
    assert exit_codes == [1]
    assert worker.fatal is not None and "not retriable" in worker.fatal
    fatal_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopped:")]
    assert len(fatal_lines) == 1 and "\n" not in fatal_lines[0], fatal_lines
    assert worker.totals.consumed == 0
    assert committed_offsets(broker.bootstrap_servers, settings.group_id, input_topic) == {0: None}


def test_a_worker_runs_the_alert_policy_its_artifact_carries(
    broker: BrokerProcess,
    new_worker_config: WorkerConfigFactory,
    tiny_model: TinyModel,
    tmp_path: Path,
) -> None:
    """An artifact whose detector.json resolves after 10 windows (and cools down 5): the worker,
    with no alert settings of its own, opens and resolves exactly the alerts of that policy,
    not those of the built-in one."""
    from stream_ae.core.alerting import AlertPolicy
    from stream_ae.model.artifacts import load_artifact, write_artifact
    from stream_ae.model.inference import Scorer
    from tests.support.tiny_model import DEFAULT_BUCKETS

    policy = AlertPolicy(resolve_after=10, cooldown=5)
    path = write_artifact(
        dataclasses.replace(load_artifact(tiny_model.path), policy=policy), tmp_path / "policy"
    )
    settings = settings_of(new_worker_config(model_path=str(path)))
    assert settings.alert_policy() == AlertPolicy()  # nothing set: the detector's
    (input_topic,) = settings.input_topics
    sent = produce(broker.bootstrap_servers, input_topic, live_messages(fleet()))
    scorer = Scorer(load_artifact(path), DEFAULT_BUCKETS)
    expected = expected_outcome(sent, settings, scorer)
    built_in = expected_outcome(sent, settings, load_tiny_scorer(tiny_model))
    assert expected.alert_ids and expected.alert_ids != built_in.alert_ids
    with running_worker(settings) as worker:
        wait_until(lambda: worker.totals.applied >= len(sent), PROCESS_TIMEOUT_S, "events applied")
    parsed = alerts_of(read_records(broker.bootstrap_servers, settings.alerts_topic))
    assert {a["alert_id"] for a in parsed} == expected.alert_ids
