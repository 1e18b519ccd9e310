"""Kafka from the tests' side: send messages and learn where they landed, on a thread at a
steady rate too; read a topic back; read a consumer group's committed offsets."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition


@dataclass(frozen=True)
class Sent:
    """One message as sent, and where the broker put it."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


def produce(
    bootstrap_servers: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
    *,
    rate_per_s: float | None = None,
    stop: threading.Event | None = None,
    partition: int | None = None,
) -> list[Sent]:
    """Send (key, value) messages in order and wait for every acknowledgement.

    ``rate_per_s`` paces them; ``stop`` ends the sending early (what was sent is returned).
    Keys choose the partition (Kafka's default partitioner) unless ``partition`` is given.
    """
    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, max_request_size=4_194_304
    )
    futures: list[tuple[bytes | None, bytes | None, Any]] = []
    started = time.perf_counter()
    try:
        for key, value in messages:
            if stop is not None and stop.is_set():
                break
            future = producer.send(topic, key=key, value=value, partition=partition)
            futures.append((key, value, future))
            if rate_per_s:
                ahead = len(futures) / rate_per_s - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(timeout=60)
        sent = []
        for key, value, future in futures:
            meta = future.get(timeout=60)
            sent.append(Sent(key, value, meta.topic, meta.partition, meta.offset))
        return sent
    finally:
        producer.close(timeout=10)


class BackgroundProducer:
    """:func:`produce` on a thread, so a worker can be killed while the stream flows."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        messages: Iterable[tuple[bytes | None, bytes | None]],
        *,
        rate_per_s: float,
    ) -> None:
        self._stop = threading.Event()
        self.sent: list[Sent] = []
        self.error: BaseException | None = None

        def send() -> None:
            try:
                self.sent = produce(
                    bootstrap_servers, topic, messages, rate_per_s=rate_per_s, stop=self._stop
                )
            except BaseException as exc:
                self.error = exc

        self._thread = threading.Thread(target=send, name="test-producer", daemon=True)

    def start(self) -> BackgroundProducer:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def finish(self, timeout_s: float = 60.0) -> list[Sent]:
        """Stop sending; return every message sent (all acknowledged)."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        if self._thread.is_alive():
            raise AssertionError("the producer did not finish")
        return self.sent


def read_topic(bootstrap_servers: str, topic: str, timeout_s: float = 60.0) -> list[Any]:
    """Every record of ``topic`` as of now, in offset order per partition (no consumer group:
    nothing is committed).

    Reads to the high watermark of the fetches, not to the end offset the broker reports:
    Tansu reports the base offset of the last record batch + 1 there, which under-reads after
    multi-record batches (:func:`training.data.read_topic` is the one reader).
    """
    from training.data import read_topic as read_all

    records: list[Any] = []
    read_all(bootstrap_servers, topic, lambda _p, r: records.append(r), timeout_s=timeout_s)
    return records


def committed_offsets(bootstrap_servers: str, group_id: str, topic: str) -> dict[int, int | None]:
    """The committed offset of ``group_id`` on each partition of ``topic`` (None: none)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False
    )
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or set())
        return {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close(autocommit=False)
