"""The Kafka edge's contract, on the real broker, for both clients: what the worker relies on
behaves the same whichever library is underneath.

Poll in offset order within a bound; commit and read back; seek back; lag from the last fetch;
rebalance callbacks on the poll thread; a producer that counts what arrived and refuses a
message over its limit with a non-retriable error.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest

from stream_ae.errors import MessageTooLargeError
from stream_ae.io.kafka import BatchConsumer, KafkaConnection, Partition, Record, lag
from stream_ae_dev.devstack import BrokerProcess

pytestmark = pytest.mark.integration

MESSAGES = 300


def _connection(broker: BrokerProcess, client: str) -> KafkaConnection:
    return KafkaConnection(broker.bootstrap_servers, client=client)  # type: ignore[arg-type]


def _fill(connection: KafkaConnection, topic: str, count: int = MESSAGES) -> None:
    producer = connection.producer()
    for i in range(count):
        producer.send(topic, f"v{i}".encode(), key=b"k", headers=[("h", str(i).encode())])
    assert producer.flush(30.0) == count
    producer.close()


def _poll_until(consumer: BatchConsumer, count: int, max_records: int = 1000) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + 60
    while len(records) < count:
        assert time.monotonic() < deadline, f"{len(records)} of {count} records"
        batch = consumer.poll_batch(100, max_records)
        assert len(batch) <= max_records
        records += batch
    return records


def test_poll_in_offset_order_commit_and_seek_back(
    broker: BrokerProcess, topic_factory: Callable[..., str], kafka_client: str
) -> None:
    topic = topic_factory(1)
    connection = _connection(broker, kafka_client)
    _fill(connection, topic)
    group = f"contract-{uuid.uuid4().hex[:8]}"
    partition = Partition(topic, 0)

    consumer = connection.consumer(group_id=group, session_timeout_ms=6000, fetch_max_wait_ms=20)
    consumer.assign([partition])
    records = _poll_until(consumer, MESSAGES, max_records=64)
    assert [r.offset for r in records] == list(range(MESSAGES))
    assert [r.value for r in records[:3]] == [b"v0", b"v1", b"v2"]
    assert records[7].key == b"k" and list(records[7].headers or []) == [("h", b"7")]
    assert lag(consumer, [partition]) == {partition: 0}

    consumer.commit({partition: 120})
    assert consumer.committed([partition]) == {partition: 120}
    consumer.seek(partition, 250)
    again = _poll_until(consumer, MESSAGES - 250)
    assert [r.offset for r in again] == list(range(250, MESSAGES))
    consumer.close()

    # A new member of the group starts at the committed offset.
    resumed = connection.consumer(group_id=group, session_timeout_ms=6000, fetch_max_wait_ms=20)
    resumed.assign([partition])
    assert _poll_until(resumed, 1)[0].offset == 120
    resumed.close()


def test_rebalance_callbacks_run_on_the_poll_thread(
    broker: BrokerProcess, topic_factory: Callable[..., str], kafka_client: str
) -> None:
    topic = topic_factory(2)
    connection = _connection(broker, kafka_client)
    consumer = connection.consumer(
        group_id=f"contract-{uuid.uuid4().hex[:8]}", session_timeout_ms=6000, fetch_max_wait_ms=20
    )
    calls: list[tuple[str, set[Partition], int]] = []
    consumer.subscribe(
        [topic],
        on_assigned=lambda ps: calls.append(("assigned", ps, threading.get_ident())),
        on_revoked=lambda ps: calls.append(("revoked", ps, threading.get_ident())),
    )
    deadline = time.monotonic() + 60
    while not any(kind == "assigned" for kind, _, _ in calls):
        assert time.monotonic() < deadline, f"no assignment: {calls}"
        consumer.poll_batch(100, 10)
    assert [call[:2] for call in calls] == [
        ("assigned", {Partition(topic, 0), Partition(topic, 1)})
    ]
    assert {thread for _, _, thread in calls} == {threading.get_ident()}
    assert consumer.assignment() == {Partition(topic, 0), Partition(topic, 1)}
    consumer.close()


def test_a_message_over_the_producer_limit_is_refused_for_good(
    broker: BrokerProcess, topic_factory: Callable[..., str], kafka_client: str
) -> None:
    topic = topic_factory(1)
    producer = _connection(broker, kafka_client).producer(max_request_bytes=10_000)
    with pytest.raises(MessageTooLargeError) as refused:
        producer.send(topic, b"x" * 20_000)
    assert not refused.value.retriable
    producer.send(topic, b"small")
    assert producer.flush(30.0) == 1
    producer.close()


def test_an_unknown_topic_has_no_partitions(broker: BrokerProcess, kafka_client: str) -> None:
    consumer = _connection(broker, kafka_client).consumer()
    assert consumer.partitions_of(f"absent-{uuid.uuid4().hex[:8]}") == []
    consumer.close()
