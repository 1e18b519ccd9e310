"""Fuzz through a real worker: bad input never crashes or stalls it, and is never lost.

``BAD_MESSAGES`` generated bad messages of every kind (``tests/fuzz_messages.py``: arbitrary
bytes, wrong types, deep nesting, NaN and infinities, wrong feature counts and names, bad
timestamps, oversize, keys that are not UTF-8, ...) are shuffled with the good events of
:func:`tests.support.tiny_model.fleet`'s streams, from a fixed seed, and sent to a
``stream-ae worker``
subprocess on the real broker and Redis. Then:

- the worker never exits and never stalls: its ``/healthz`` answers 200 at every look, and it
  consumes and commits to the end of the input within a bound (a liveness bound, not a speed
  assertion);
- consumed = applied + dead-lettered, on its ``/metrics``, with applied = the good events and
  dead-lettered = the bad ones;
- the dead-letter topic holds exactly the bad messages, each once, as sent, with the decoder's
  reason;
- the good streams' stored states equal the oracle's
  (:func:`tests.support.outcomes.expected_outcome`).

The poison examples of issue 14 run as their own tests, each against its own worker (one that
crashes must not hide the others): a message nested 1,000 deep, which crashed the worker on
every restart, and a near-1 MiB message, whose dead-letter copy was over the producer's size
limit and stalled the worker.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from stream_ae.core.records import Reason, decode_event
from stream_ae.errors import SchemaError
from stream_ae.settings import Settings
from stream_ae.worker.metrics import HealthServer
from stream_ae_dev.devstack import BrokerProcess, RedisProcess, find_free_port
from tests.support.fuzz_messages import BAD_KINDS, fuzz_input
from tests.support.kafka_topics import Sent, committed_offsets, produce
from tests.support.outcomes import decode_states_equal, expected_outcome, stored_blobs
from tests.support.tiny_model import TinyModel, fleet, live_messages, load_tiny_scorer
from tests.support.waiting import wait_until
from tests.support.worker_process import (
    WorkerProcess,
    metric_value,
    running_worker,
    settings_of,
    worker_config,
)

pytestmark = pytest.mark.integration

SEED = 14
BAD_MESSAGES = 10_000
# Small, so that the generated oversize messages stay cheap to send and to dead-letter.
MAX_MESSAGE_BYTES = 16_384
PARTITIONS = 2
# Liveness bounds: a worker that has not consumed its input by then is stuck.
CONSUME_TIMEOUT_S = 240.0
POISON_TIMEOUT_S = 30.0
# Once the worker has committed everything, its dead letters are all acknowledged; a topic is
# read until nothing new has come for this long (Tansu misreports log ends, see _read_all).
QUIET_S = 2.0
# Issue 14's near-limit input: under Apache Kafka's default broker limit (1,048,588 bytes) with
# its key and batch overhead, but its dead-letter copy with headers is over a 1 MiB request.
NEAR_LIMIT_BYTES = 1_048_400
DLQ_REASON = "stream-ae.reason"
DLQ_OFFSET = "stream-ae.source.offset"
DLQ_PARTITION = "stream-ae.source.partition"


def test_fuzzed_messages_never_crash_or_stall_the_worker_and_all_bad_ones_are_dead_lettered(
    broker: BrokerProcess,
    redis_server: RedisProcess,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    tiny_model: TinyModel,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    input_topic = topic_factory(PARTITIONS, prefix="fuzz-in")
    dlq_topic = topic_factory(1, prefix="fuzz-dlq")
    config = worker_config(
        bootstrap_servers=broker.bootstrap_servers,
        redis_url=redis_server.url,
        model=tiny_model,
        input_topic=input_topic,
        alerts_topic=topic_factory(1, prefix="fuzz-alerts"),
        dlq_topic=dlq_topic,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )
    settings = settings_of(config)
    # The worker imports TensorFlow and warms its model while the input is made and sent.
    worker = WorkerProcess(config, tmp_path / "worker.log").start()
    try:
        messages = fuzz_input(
            SEED, list(live_messages(fleet())), BAD_MESSAGES, max_message_bytes=MAX_MESSAGE_BYTES
        )
        sent = produce(broker.bootstrap_servers, input_topic, [(m.key, m.value) for m in messages])
        bad = [s for m, s in zip(messages, sent, strict=True) if m.bad]
        good_total = len(sent) - len(bad)
        assert len(bad) == BAD_MESSAGES and good_total > 0
        assert {m.kind for m in messages if m.bad} == set(BAD_KINDS)
        produced_s = time.monotonic() - started
        worker.wait_ready()
        ready_s = time.monotonic() - started

        def consumed() -> float:
            return _consumed(_alive_and_healthy(worker.port, worker.returncode, worker.tail))

        wait_until(
            lambda: consumed() >= len(sent),
            CONSUME_TIMEOUT_S,
            f"the worker to consume all {len(sent)} messages",
            interval_s=0.5,
            on_timeout=lambda: f"consumed {consumed():.0f}\n{worker.tail()}",
        )
        metrics_text = _alive_and_healthy(worker.port, worker.returncode, worker.tail)
        consumed_s = time.monotonic() - started
        committed = committed_offsets(broker.bootstrap_servers, config["group_id"], input_topic)
        dead_letters = _read_all(broker.bootstrap_servers, dlq_topic, at_least=len(bad))
        stored = stored_blobs(redis_client, config["redis_key_prefix"])
        _alive_and_healthy(worker.port, worker.returncode, worker.tail)
        worker.terminate()
        assert worker.wait(30) == 0, worker.tail()
    finally:
        worker.stop()

    # Consumed to the end and committed.
    assert committed == _ends(sent, PARTITIONS)
    # consumed = applied + dead-lettered: the good events and the bad messages, exactly.
    events = {
        outcome: metric_value(metrics_text, "stream_ae_events_total", {"outcome": outcome})
        for outcome in ("applied", "skipped", "dead_lettered")
    }
    assert _consumed(metrics_text) == len(sent) == sum(events.values())
    assert events == {"applied": good_total, "skipped": 0, "dead_lettered": len(bad)}
    reasons = _reasons(bad, settings, tiny_model)
    for reason, count in Counter(reasons.values()).items():
        assert metric_value(metrics_text, "stream_ae_dlq_total", {"reason": reason}) == count

    # The dead-letter topic holds each bad message once, as sent, with the decoder's reason.
    by_source: dict[tuple[int, int], Any] = {}
    for record in dead_letters:
        headers = {name: value.decode() for name, value in record.headers}
        source = (int(headers[DLQ_PARTITION]), int(headers[DLQ_OFFSET]))
        assert source not in by_source, f"{source} dead-lettered twice"
        by_source[source] = record
    assert sorted(by_source) == sorted((s.partition, s.offset) for s in bad)
    for message in bad:
        record = by_source[message.partition, message.offset]
        assert (record.key, record.value) == (message.key, message.value)
        assert dict(record.headers)[DLQ_REASON].decode() == reasons[message]

    # The good streams end where the oracle does, as if no bad message had been there.
    oracle = expected_outcome(sent, settings, load_tiny_scorer(tiny_model))
    assert (oracle.applied, oracle.dead_lettered) == (good_total, len(bad))
    assert decode_states_equal(stored, oracle.blobs) == []
    kinds = Counter(m.kind for m in messages)
    print(
        f"\n[fuzz] {len(sent)} messages ({good_total} good, {len(bad)} bad of {len(BAD_KINDS)} "
        f"kinds, seed {SEED}): made and sent at {produced_s:.1f} s, worker ready at "
        f"{ready_s:.1f} s, all consumed at {consumed_s:.1f} s, checked at "
        f"{time.monotonic() - started:.1f} s; by kind: {dict(kinds)}; "
        f"by reason: {dict(Counter(reasons.values()))}"
    )


# --- the poison examples of issue 14 --------------------------------------------------------


def _deeply_nested(depth: int) -> list[tuple[bytes | None, bytes]]:
    """Issue 14's repro (nesting in ``stream``, no key) and the same depth in ``value``."""
    nested = b"[" * depth + b"]" * depth
    return [
        (None, b'{"stream":' + nested + b',"ts":1,"value":1}'),
        (b"host-0", b'{"stream":"host-0","ts":1,"value":' + nested + b"}"),
        (b"host-1", b'{"stream":"host-1","ts":1,"value":[' + nested + b"]}"),
        (b"host-2", b'{"stream":"host-2","ts":1,"value":{"value":' + nested + b"}}"),
    ]


def _near_limit() -> list[tuple[bytes | None, bytes]]:
    """A valid event but for its size, ``NEAR_LIMIT_BYTES`` long."""
    head = orjson.dumps({"stream": "host-0", "ts": 1_700_000_000_000, "value": 1.0, "pad": ""})
    pad = b"p" * (NEAR_LIMIT_BYTES - len(head))
    return [(b"host-0", head[:-2] + pad + b'"}')]


@pytest.mark.parametrize(
    "poison",
    [
        pytest.param(_deeply_nested(1000), id="nested-1000-deep"),
        pytest.param(_near_limit(), id="near-1MiB"),
    ],
)
def test_a_poison_message_is_dead_lettered_and_the_worker_goes_on(
    poison: list[tuple[bytes | None, bytes]],
    broker: BrokerProcess,
    redis_server: RedisProcess,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    tiny_model: TinyModel,
) -> None:
    input_topic = topic_factory(1, prefix="poison-in")
    dlq_topic = topic_factory(1, prefix="poison-dlq")
    config = worker_config(
        bootstrap_servers=broker.bootstrap_servers,
        redis_url=redis_server.url,
        model=tiny_model,
        input_topic=input_topic,
        alerts_topic=topic_factory(1, prefix="poison-alerts"),
        dlq_topic=dlq_topic,
    )  # the default max_message_bytes (64 KiB): the near-1 MiB message is oversize
    settings = settings_of(config)
    # Good events before and after each poison message, on one partition: the ones after it
    # are applied only if the worker goes past it.
    good = iter(live_messages(fleet()))
    messages: list[tuple[bytes | None, bytes | None]] = []
    for message in poison:
        messages += [next(good) for _ in range(12)] + [message]
    messages += [next(good) for _ in range(12)]
    sent = produce(broker.bootstrap_servers, input_topic, messages)
    bad = [s for s in sent if (s.key, s.value) in poison]
    assert len(bad) == len(poison)

    with running_worker(settings) as worker:
        health = HealthServer(worker.metrics, "127.0.0.1", find_free_port(), 10.0).start()
        try:
            wait_until(
                lambda: (
                    _consumed(_alive_and_healthy(health.port, tail=_in_process_worker_died))
                    >= len(sent)
                ),
                POISON_TIMEOUT_S,
                f"the worker to consume all {len(sent)} messages past the poison",
            )
            metrics_text = _alive_and_healthy(health.port, tail=_in_process_worker_died)
        finally:
            health.stop()
    committed = committed_offsets(broker.bootstrap_servers, config["group_id"], input_topic)
    assert committed == _ends(sent, 1)
    applied = metric_value(metrics_text, "stream_ae_events_total", {"outcome": "applied"})
    dead = metric_value(metrics_text, "stream_ae_events_total", {"outcome": "dead_lettered"})
    assert (applied, dead) == (len(sent) - len(bad), len(bad))
    # Recorded once each with its reason; a copy too large to send whole may be truncated.
    dead_letters = _read_all(broker.bootstrap_servers, dlq_topic, at_least=len(bad))
    sources = sorted(int(dict(r.headers)[DLQ_OFFSET]) for r in dead_letters)
    assert sources == sorted(s.offset for s in bad)
    assert all(dict(r.headers)[DLQ_REASON].decode() in _REASONS for r in dead_letters)
    good_sent = [s for s in sent if s not in bad]
    oracle = expected_outcome(good_sent, settings, load_tiny_scorer(tiny_model))
    stored = stored_blobs(redis_client, config["redis_key_prefix"])
    assert decode_states_equal(stored, oracle.blobs) == []


# --- helpers ----------------------------------------------------------------------------------

_REASONS = {value for name, value in vars(Reason).items() if name.isupper()}


def _in_process_worker_died() -> str:
    return "(the in-process worker's loop stopped turning: its thread died, see the log)"


def _alive_and_healthy(
    port: int, returncode: int | None = None, tail: Callable[[], str] = str
) -> str:
    """The worker's ``/metrics`` text, after failing unless it runs and ``/healthz`` says 200."""
    if returncode is not None:
        raise AssertionError(f"the worker exited with {returncode}:\n{tail()}")
    status, body = _get(port, "/healthz")
    assert status == 200, f"/healthz answered {status} {body!r}\n{tail()}"
    status, text = _get(port, "/metrics")
    assert status == 200, f"/metrics answered {status}\n{tail()}"
    return text


def _get(port: int, path: str) -> tuple[int, str]:
    """(HTTP status, body) of a worker endpoint; (0, '') when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""


def _consumed(metrics_text: str) -> float:
    """Messages the worker has consumed and finished (its batch-size histogram's sum)."""
    return metric_value(metrics_text, "stream_ae_batch_size_sum")


def _ends(sent: Iterable[Sent], partitions: int) -> dict[int, int | None]:
    """The offset after the last message sent to each partition (None: nothing sent there):
    where the group's commits must end."""
    ends: dict[int, int | None] = dict.fromkeys(range(partitions))
    for message in sent:
        ends[message.partition] = max(ends[message.partition] or 0, message.offset + 1)
    return ends


def _reasons(messages: Iterable[Sent], settings: Settings, model: TinyModel) -> dict[Sent, str]:
    """The decoder's dead-letter reason of each message (each must be refused)."""
    feature_names = load_tiny_scorer(model).artifact.spec.feature_names
    reasons = {}
    for m in messages:
        try:
            decode_event(
                m.key,
                m.value,
                topic=m.topic,
                partition=m.partition,
                offset=m.offset,
                feature_names=feature_names,
                max_bytes=settings.max_message_bytes,
            )
        except SchemaError as exc:
            reasons[m] = exc.reason
        else:
            raise AssertionError(f"a generated bad message decodes: {m.value!r:.200}")
    return reasons


def _read_all(bootstrap_servers: str, topic: str, *, at_least: int) -> list[Any]:
    """Every record of ``topic``: read until at least ``at_least`` records have come and then
    nothing new for ``QUIET_S``. Not to the log end the broker reports: Tansu misreports it
    after a multi-record batch (issue 14, item 10), which would under-read."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
        group_id=None,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + 60.0
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = [r for rs in consumer.poll(timeout_ms=200).values() for r in rs]
            if batch:
                records += batch
                last_new = time.monotonic()
            elif len(records) >= at_least and time.monotonic() - last_new > QUIET_S:
                break
        return records
    finally:
        consumer.close()
