"""Reading a topic from the command line: every partition, without a consumer group, until the
topic has been quiet for a while (the reported log end is not trusted: see
:meth:`stream_ae.io.kafka.BatchConsumer.end_offsets`). Shared by ``tail``, ``dlq`` and
``explain``."""

from __future__ import annotations

import time
from collections.abc import Iterator

from stream_ae.errors import ConfigError
from stream_ae.io.kafka import BatchConsumer, KafkaConnection, Partition, Record

# How long a read waits for more records before taking the topic as read to its end.
IDLE_END_S = 3.0


def topic_reader(
    connection: KafkaConnection, topic: str, *, from_beginning: bool, purpose: str
) -> BatchConsumer:
    """A consumer of every partition of ``topic`` (no group: nothing is committed), at the
    oldest record or at the end; :class:`ConfigError` when the topic does not exist."""
    consumer = connection.consumer(
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        client_id_suffix=purpose,
    )
    partitions = [Partition(topic, p) for p in consumer.partitions_of(topic)]
    if not partitions:
        consumer.close()
        raise ConfigError(f"topic {topic!r} does not exist (or this client may not see it)")
    consumer.assign(partitions)
    if from_beginning:
        consumer.seek_to_beginning(partitions)
    return consumer


def batches(
    consumer: BatchConsumer, idle_s: float | None = IDLE_END_S, max_records: int = 2000
) -> Iterator[list[Record]]:
    """Poll batches until none came for ``idle_s`` (None: for ever)."""
    idle_since = time.monotonic()
    while idle_s is None or time.monotonic() - idle_since < idle_s:
        records = consumer.poll_batch(timeout_ms=300, max_records=max_records)
        if records:
            idle_since = time.monotonic()
            yield records


def headers_of(record: Record) -> dict[str, str]:
    """A record's headers as text (the last value of a repeated name wins)."""
    return {name: value.decode("utf-8", "replace") for name, value in record.headers or ()}
