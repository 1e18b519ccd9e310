"""Dead letters on the real broker: over a thousand malformed messages of every kind, mixed
with good ones. The worker does not crash; every bad message is in the dead-letter topic with
its original bytes, its reason and its source topic/partition/offset in headers; and input
consumed = events applied + events dead-lettered, in the worker's totals and on its
``/metrics`` endpoint."""

from __future__ import annotations

import random
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from stream_ae.core.records import MAX_STREAM_ID_CHARS, Reason
from stream_ae.worker.dead_letters import (
    ID_HEADER,
    MAX_DEAD_LETTER_BYTES,
    TRUNCATED_HEADER,
    dead_letter_id,
)
from stream_ae.worker.metrics import HealthServer
from stream_ae_dev.devstack import BrokerProcess, RedisProcess, find_free_port
from tests.support.kafka_clients import read_records
from tests.support.kafka_topics import committed_offsets, produce
from tests.support.outcomes import decode_states_equal, expected_outcome, stored_blobs
from tests.support.tiny_model import TinyModel, fleet, live_messages, load_tiny_scorer
from tests.support.waiting import wait_until
from tests.support.worker_process import metric_value, running_worker, settings_of
from tests.support.worker_setup import WorkerConfigFactory

pytestmark = pytest.mark.integration

MAX_MESSAGE_BYTES = 1024  # small, so that oversize messages stay cheap to send
BAD_MESSAGES = 1100
GOOD_STEPS = 100  # live steps per stream sent among the bad messages
TS = 1_700_000_000_000


def _event(**fields: object) -> bytes:
    body: dict[str, object] = {"stream": "host-0", "ts": TS, "value": 1.0}
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not _MISSING})


_MISSING = object()

# (key, value, reason): one of each kind of malformed message the worker must dead-letter.
MALFORMED: list[tuple[bytes | None, bytes | None, str]] = [
    # not JSON at all, or JSON that orjson refuses (NaN/inf literals, numbers beyond double)
    (b"host-0", b"not json", Reason.NOT_JSON),
    (b"host-0", b'{"stream": "host-0", "ts": 1', Reason.NOT_JSON),
    (b"host-0", b"\xff\xfe\x00garbage", Reason.NOT_JSON),
    (b"host-0", b"", Reason.NOT_JSON),
    (b"host-0", b'{"stream": "host-0", "ts": 1700000000000, "value": NaN}', Reason.NOT_JSON),
    (b"host-0", b'{"stream": "host-0", "ts": 1700000000000, "value": Infinity}', Reason.NOT_JSON),
    (b"host-0", b'{"stream": "host-0", "ts": 1700000000000, "value": 1e400}', Reason.NOT_JSON),
    (b"host-1", None, Reason.NOT_JSON),  # a tombstone
    # JSON, but not an object
    (b"host-0", b"[1, 2, 3]", Reason.NOT_OBJECT),
    (b"host-0", b'"a string"', Reason.NOT_OBJECT),
    (b"host-0", b"42", Reason.NOT_OBJECT),
    (b"host-0", b"null", Reason.NOT_OBJECT),
    # wrong types of value
    (b"host-0", _event(value="1.5"), Reason.BAD_VALUE),
    (b"host-0", _event(value=True), Reason.BAD_VALUE),
    (b"host-0", _event(value=None), Reason.BAD_VALUE),
    (b"host-0", _event(value=[["1"]]), Reason.BAD_VALUE),
    (b"host-0", _event(value=_MISSING), Reason.BAD_VALUE),
    # NaN and infinities as strings, and numbers beyond float32
    (b"host-0", _event(value="NaN"), Reason.BAD_VALUE),
    (b"host-0", _event(value="inf"), Reason.BAD_VALUE),
    (b"host-0", _event(value=["-Infinity"]), Reason.BAD_VALUE),
    (b"host-0", _event(value=1e39), Reason.NOT_FINITE),
    (b"host-0", _event(value=[-1e300]), Reason.NOT_FINITE),
    (b"host-0", _event(value={"value": 3.5e38}), Reason.NOT_FINITE),
    # wrong feature count or names (the model has one feature, "value")
    (b"host-0", _event(value=[]), Reason.FEATURE_COUNT),
    (b"host-0", _event(value=[1.0, 2.0]), Reason.FEATURE_COUNT),
    (b"host-0", _event(value={}), Reason.FEATURE_COUNT),
    (b"host-0", _event(value={"cpu": 1.0}), Reason.UNKNOWN_FEATURE),
    # timestamps
    (b"host-0", _event(ts="yesterday"), Reason.BAD_TS),
    (b"host-0", _event(ts=True), Reason.BAD_TS),
    (b"host-0", _event(ts=-5), Reason.BAD_TS),
    (b"host-0", _event(ts=1e20), Reason.BAD_TS),
    (b"host-0", _event(ts=_MISSING), Reason.BAD_TS),
    # stream ids
    (b"host-0", _event(stream=""), Reason.BAD_STREAM),
    (b"host-0", _event(stream="a{b}"), Reason.BAD_STREAM),
    (b"host-0", _event(stream="line\nbreak"), Reason.BAD_STREAM),
    (b"host-0", _event(stream="x" * (MAX_STREAM_ID_CHARS + 1)), Reason.BAD_STREAM),
    (b"host-0", _event(stream=123), Reason.BAD_STREAM),
    (None, _event(stream=_MISSING), Reason.BAD_STREAM),  # no stream and no key
    (b"\xff\xfe", _event(stream=_MISSING), Reason.BAD_STREAM),  # key is not UTF-8
    # oversize (valid JSON otherwise)
    (b"host-0", _event(pad="p" * MAX_MESSAGE_BYTES), Reason.OVERSIZE),
]


def _mixed_input(seed: int) -> tuple[list[tuple[bytes | None, bytes | None]], list[str | None]]:
    """Good live events and ``BAD_MESSAGES`` malformed ones, shuffled into each other while
    each stream's good events keep their order; with the reason expected of each (None: good)."""
    rng = random.Random(seed)
    streams = fleet()
    good = list(live_messages(streams))[: GOOD_STEPS * len(streams)]
    # A good event may leave the stream to the key: it is still good.
    good[0] = (
        good[0][0],
        orjson.dumps({k: v for k, v in orjson.loads(good[0][1]).items() if k != "stream"}),
    )
    bad = [MALFORMED[i % len(MALFORMED)] for i in range(BAD_MESSAGES)]
    rng.shuffle(bad)
    slots = sorted(rng.sample(range(len(good) + len(bad)), len(bad)))
    messages: list[tuple[bytes | None, bytes | None]] = []
    reasons: list[str | None] = []
    good_iter, bad_iter = iter(good), iter(bad)
    slot_set = set(slots)
    for position in range(len(good) + len(bad)):
        if position in slot_set:
            key, value, reason = next(bad_iter)
            messages.append((key, value))
            reasons.append(reason)
        else:
            messages.append(next(good_iter))
            reasons.append(None)
    return messages, reasons


def test_malformed_messages_go_to_the_dlq_and_counts_add_up(
    broker: BrokerProcess,
    redis_client: redis.Redis,
    new_worker_config: WorkerConfigFactory,
    tiny_model: TinyModel,
) -> None:
    settings = settings_of(new_worker_config(max_message_bytes=MAX_MESSAGE_BYTES))
    (input_topic,), dlq_topic = settings.input_topics, settings.dlq_topic
    messages, reasons = _mixed_input(seed=7)
    sent = produce(broker.bootstrap_servers, input_topic, messages)
    good_total = sum(r is None for r in reasons)
    bad_total = len(reasons) - good_total
    assert bad_total >= 1000 and set(reasons) - {None} == {r for _, _, r in MALFORMED}

    with running_worker(settings) as worker:
        health = HealthServer(worker.metrics, "127.0.0.1", find_free_port(), 60.0).start()
        try:
            wait_until(
                lambda: worker.totals.consumed >= len(sent), 120, f"{len(sent)} messages consumed"
            )
            url = f"http://127.0.0.1:{health.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as reply:
                metrics_text = reply.read().decode()
        finally:
            health.stop()
        totals = worker.totals

    # No crash (running_worker re-raises a failure of the worker thread), and the counts add up.
    assert totals.consumed == totals.applied + totals.skipped + totals.dead_lettered
    assert (totals.applied, totals.skipped, totals.dead_lettered) == (good_total, 0, bad_total)
    applied = metric_value(metrics_text, "stream_ae_events_total", {"outcome": "applied"})
    dead = metric_value(metrics_text, "stream_ae_events_total", {"outcome": "dead_lettered"})
    assert (applied, dead) == (good_total, bad_total)
    expected_reasons = Counter(r for r in reasons if r is not None)
    for reason, count in expected_reasons.items():
        assert metric_value(metrics_text, "stream_ae_dlq_total", {"reason": reason}) == count

    # Every bad message is in the DLQ once: original bytes and key, reason, source position.
    dead_letters = read_records(broker.bootstrap_servers, dlq_topic)
    assert len(dead_letters) == bad_total
    by_offset = {}
    for record in dead_letters:
        headers = {name: value.decode() for name, value in record.headers}
        assert headers["stream-ae.source.topic"] == input_topic
        assert headers["stream-ae.source.partition"] == "0"
        assert headers["stream-ae.detail"]
        offset = int(headers["stream-ae.source.offset"])
        assert offset not in by_offset, f"offset {offset} dead-lettered twice"
        by_offset[offset] = record
        original = sent[offset]
        assert (original.partition, original.offset) == (0, offset)
        assert record.value == original.value and record.key == original.key
        assert headers["stream-ae.reason"] == reasons[offset], (original.value or b"")[:100]
    assert sorted(by_offset) == [i for i, r in enumerate(reasons) if r is not None]

    # The good events were applied as if the bad ones had never been there.
    oracle = expected_outcome(sent, settings, load_tiny_scorer(tiny_model))
    assert (oracle.applied, oracle.dead_lettered) == (good_total, bad_total)
    assert (
        decode_states_equal(stored_blobs(redis_client, settings.redis_key_prefix), oracle.blobs)
        == []
    )


def _dead_letter_ids(records: list[Any]) -> list[str]:
    return [dict(r.headers)[ID_HEADER].decode() for r in records]


# Value plus headers of the input: under Apache Kafka's default broker limit (1,048,588 B), so
# a broker lets it in; its dead letter (the value plus our headers) is over the producer's.
NEAR_LIMIT_BYTES = 1_048_400


def test_a_near_1_mib_message_is_dead_lettered_cut_to_fit_and_the_batch_goes_on(
    broker: BrokerProcess, new_worker_config: WorkerConfigFactory
) -> None:
    settings = settings_of(new_worker_config(max_message_bytes=MAX_MESSAGE_BYTES))
    (input_topic,) = settings.input_topics
    body = _event()
    huge = body[:-1] + b',"pad":"' + b"p" * (NEAR_LIMIT_BYTES - len(body) - 9) + b'"}'
    assert len(huge) == NEAR_LIMIT_BYTES
    good = list(live_messages(fleet()))[:120]
    messages = [*good[:60], (b"host-0", huge), *good[60:]]
    sent = produce(broker.bootstrap_servers, input_topic, messages)

    with running_worker(settings) as worker:
        wait_until(lambda: worker.totals.consumed >= len(sent), 120, "every message consumed")
        totals = worker.totals
    assert (totals.applied, totals.dead_lettered) == (len(good), 1)
    assert committed_offsets(broker.bootstrap_servers, settings.group_id, input_topic) == {
        0: len(sent)
    }

    (letter,) = read_records(broker.bootstrap_servers, settings.dlq_topic)
    headers = {name: value.decode() for name, value in letter.headers}
    assert headers["stream-ae.reason"] == Reason.OVERSIZE
    assert headers["stream-ae.source.offset"] == "60"
    assert headers[TRUNCATED_HEADER] == str(len(huge))
    assert headers[ID_HEADER] == dead_letter_id(input_topic, 0, 60)
    assert 0 < len(letter.value) < len(huge) and huge.startswith(letter.value)
    assert len(letter.value) + sum(len(n) + len(v) for n, v in letter.headers) <= (
        MAX_DEAD_LETTER_BYTES
    )


BAD_IN_OUTAGE = 60


def test_dead_letters_once_per_bad_message_when_batches_are_retried_over_a_redis_outage(
    broker: BrokerProcess, new_worker_config: WorkerConfigFactory, tmp_path: Path
) -> None:
    """Redis stops while good and bad messages arrive, so their batch fails after its dead
    letters went out and is retried, several times, until Redis is back: each bad message is
    in the dead-letter topic once, with its own id, and every counter says the same number."""
    server = RedisProcess(run_dir=tmp_path / "redis").start()
    try:
        settings = settings_of(
            new_worker_config(redis_url=server.url, max_message_bytes=MAX_MESSAGE_BYTES)
        )
        (input_topic,) = settings.input_topics
        messages, reasons = _mixed_input(seed=11)
        bad_positions = [i for i, r in enumerate(reasons) if r is not None][:BAD_IN_OUTAGE]
        mixed = messages[: bad_positions[-1] + 1]
        bad = sum(r is not None for r in reasons[: len(mixed)])
        client = redis.Redis.from_url(server.url)
        with running_worker(settings) as worker:
            wait_until(lambda: worker.metrics.ready, 120, "partitions assigned")
            client.shutdown(save=True)
            server.stop()
            client.close()
            sent = produce(broker.bootstrap_servers, input_topic, mixed)

            def store_errors() -> float:
                sample = worker.metrics.registry.get_sample_value(
                    "stream_ae_errors_total", {"kind": "store"}
                )
                return sample or 0.0

            wait_until(lambda: store_errors() >= 3, 120, "three failed tries of the batch")
            assert worker.totals.consumed == 0
            server = RedisProcess(run_dir=tmp_path / "redis", port=server.port).start()
            wait_until(lambda: worker.totals.consumed >= len(sent), 120, "every message")
            totals = worker.totals
            registry = worker.metrics.registry
            dlq_counted = sum(
                registry.get_sample_value("stream_ae_dlq_total", {"reason": reason}) or 0
                for reason in {r for r in reasons if r is not None}
            )
            events_dead = registry.get_sample_value(
                "stream_ae_events_total", {"outcome": "dead_lettered"}
            )
        assert (totals.dead_lettered, dlq_counted, events_dead) == (bad, bad, bad)
        assert totals.applied == len(sent) - bad
        records = read_records(broker.bootstrap_servers, settings.dlq_topic)
        ids = _dead_letter_ids(records)
        assert len(records) == bad and len(set(ids)) == bad
        expected_ids = {
            dead_letter_id(input_topic, 0, m.offset)
            for m, reason in zip(sent, reasons, strict=False)
            if reason is not None
        }
        assert set(ids) == expected_ids
    finally:
        server.stop()
