"""The narrow Kafka interface the rest of stream-ae sees: a batch consumer and a producer.

Two clients implement it (:mod:`.kafka_python` and :mod:`.confluent`), chosen by the
``kafka_client`` setting. Every client error leaves the implementation as a
:class:`~stream_ae.errors.BrokerError` whose ``retriable`` flag says whether trying again can help.

Offsets follow Kafka: a committed offset and a position are the *next* offset to read.

>>> Partition("metrics", 3)
Partition(topic='metrics', partition=3)
>>> str(Partition("metrics", 3))
'metrics:3'
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol


class Partition(NamedTuple):
    """A topic partition."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}"


class Record(Protocol):
    """A consumed record: what the worker reads of it (kafka-python's ``ConsumerRecord`` has
    these attributes already, so it passes through without a copy)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]] | None: ...


class ConsumedRecord(NamedTuple):
    """A :class:`Record` copied out of a client whose records have no such attributes (a
    named tuple: built at C speed, once per consumed message)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] | None = None


RebalanceCallback = Callable[[set[Partition]], None]


class BatchConsumer(Protocol):
    """A consumer polled in batches by one thread, auto-commit off."""

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assigned: RebalanceCallback,
        on_revoked: RebalanceCallback,
    ) -> None:
        """Join the group. The callbacks run on the thread that calls :meth:`poll_batch`,
        before or after the client's poll, never inside it and never on a client thread."""
        ...

    def assign(self, partitions: Sequence[Partition]) -> None:
        """Read these partitions without a group."""
        ...

    def assignment(self) -> set[Partition]:
        """The partitions this consumer reads, as of the last change delivered to the poll
        thread. Safe to call from any thread (no client call: librdkafka's blocks while
        another thread is in ``consume()``)."""
        ...

    def partitions_of(self, topic: str) -> list[int]:
        """The topic's partitions as the metadata says ([] when the topic is unknown)."""
        ...

    def poll_batch(self, timeout_ms: int, max_records: int) -> list[Record]:
        """At most ``max_records`` records, waiting at most about ``timeout_ms``; in offset
        order per partition."""
        ...

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit the next offset to read per partition, synchronously."""
        ...

    def committed(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        """The group's committed offset per partition (None: none)."""
        ...

    def seek(self, partition: Partition, offset: int) -> None:
        """Read ``partition`` from ``offset`` on; records fetched beyond it are dropped."""
        ...

    def seek_to_beginning(self, partitions: Sequence[Partition]) -> None: ...

    def offsets_for_times(self, times_ms: Mapping[Partition, int]) -> dict[Partition, int | None]:
        """The first offset at or after each timestamp (None: no such record)."""
        ...

    def beginning_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]: ...

    def end_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """The log end offsets *as the broker reports them*. Some brokers (Tansu) report the
        base offset of the last record batch + 1: never read "to the end" by this alone."""
        ...

    def position(self, partition: Partition, *, timeout_ms: int | None = None) -> int | None:
        """The next offset :meth:`poll_batch` returns for ``partition`` (None: not known
        within ``timeout_ms``; None waits until it is)."""
        ...

    def high_watermark(self, partition: Partition) -> int | None:
        """The high watermark of the last fetch from ``partition``, without a request."""
        ...

    def close(self) -> None:
        """Leave the group without committing."""
        ...


class Producer(Protocol):
    """A producer that knows whether everything it sent since the last flush arrived."""

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one message. Raises :class:`~stream_ae.errors.MessageTooLargeError` for a
        message over the producer's size limit, :class:`~stream_ae.errors.BrokerError` else."""
        ...

    def flush(self, timeout_s: float) -> int:
        """Wait for every send since the last flush (or discard) and return how many there
        were; raise :class:`~stream_ae.errors.BrokerError` if any was not acknowledged."""
        ...

    def discard(self) -> None:
        """Forget the sends since the last flush: their outcome no longer matters."""
        ...

    def close(self, timeout_s: float = 10.0) -> None: ...


def lag(consumer: BatchConsumer, partitions: Iterable[Partition]) -> dict[Partition, int]:
    """Records behind the last fetch's high watermark, per partition where both are known
    (no request: for metrics after every batch)."""
    out: dict[Partition, int] = {}
    for partition in partitions:
        high = consumer.high_watermark(partition)
        position = consumer.position(partition, timeout_ms=0) if high is not None else None
        if high is not None and position is not None:
            out[partition] = max(high - position, 0)
    return out


class RebalanceRelay:
    """Partition changes noted on whatever thread the client reports them, delivered in order
    on the poll thread.

    kafka-python 3 reports them on its background IO thread, where blocking client calls are
    forbidden; librdkafka reports them inside ``consume()``. Either way the worker wants them
    between its own calls, so a revoked partition's cached states are dropped before the next
    batch is processed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[bool, set[Partition]]] = []
        self.on_assigned: RebalanceCallback | None = None
        self.on_revoked: RebalanceCallback | None = None
        self.assignment: frozenset[Partition] = frozenset()

    def note(self, assigned: bool, partitions: Iterable[Partition]) -> None:
        changed = set(partitions)
        if not changed:  # kafka-python reports an empty revocation on the first join
            return
        with self._lock:
            self._pending.append((assigned, changed))

    def deliver(self) -> None:
        """Run the callbacks of every change noted so far, on the calling thread."""
        with self._lock:
            pending, self._pending = self._pending, []
        for assigned, partitions in pending:
            if assigned:
                self.assignment = self.assignment | partitions
            else:
                self.assignment = self.assignment - partitions
            callback = self.on_assigned if assigned else self.on_revoked
            if callback is not None:
                callback(partitions)
