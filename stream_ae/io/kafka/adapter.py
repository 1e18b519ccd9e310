"""What the two client adapters (:mod:`.kafka_python`, :mod:`.confluent`) share, written once:
the options of one consumer or producer, the wrapping of client errors into
:class:`~stream_ae.errors.BrokerError`, and the rebalance relay behind ``subscribe`` and
``assignment``. Each adapter keeps only what its library does differently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from stream_ae.errors import BrokerError
from stream_ae.io.kafka.interface import Partition, RebalanceCallback, RebalanceRelay

OffsetReset = Literal["earliest", "latest", "error"]


@dataclass(frozen=True)
class ConsumerOptions:
    """One consumer, apart from its connection: the same for both clients.

    ``group_id`` None: partitions are assigned by hand and nothing is committed.
    """

    client_id: str
    group_id: str | None
    auto_offset_reset: OffsetReset
    session_timeout_ms: int
    max_poll_interval_ms: int
    fetch_max_wait_ms: int
    max_poll_records: int

    @property
    def heartbeat_interval_ms(self) -> int:
        """A third of the session timeout (both clients' advice), at least 100 ms.

        >>> ConsumerOptions("c", None, "earliest", 10_000, 300_000, 100, 500).heartbeat_interval_ms
        3333
        """
        return max(self.session_timeout_ms // 3, 100)


@dataclass(frozen=True)
class ProducerOptions:
    """One producer, apart from its connection: the same for both clients."""

    client_id: str
    max_request_bytes: int
    linger_ms: int


@contextlib.contextmanager
def client_errors(what: str, wrap: Callable[[str, BaseException], BrokerError]) -> Iterator[None]:
    """Any client error raised inside leaves as ``wrap(what, error)``; a
    :class:`~stream_ae.errors.BrokerError` passes through as it is."""
    try:
        yield
    except BrokerError:
        raise
    except Exception as exc:
        raise wrap(what, exc) from exc


class RelayedConsumer:
    """The rebalance side of a :class:`~stream_ae.io.kafka.interface.BatchConsumer`: partition
    changes reported by the client (on whatever thread) are noted in a
    :class:`~stream_ae.io.kafka.interface.RebalanceRelay` and delivered on the poll thread;
    :meth:`assignment` answers from it without a client call."""

    def __init__(self) -> None:
        self._relay = RebalanceRelay()

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assigned: RebalanceCallback,
        on_revoked: RebalanceCallback,
    ) -> None:
        """Join the group; the callbacks are set before the client can report a change."""
        self._relay.on_assigned, self._relay.on_revoked = on_assigned, on_revoked
        self._subscribe(list(topics))

    def _subscribe(self, topics: list[str]) -> None:
        """Subscribe the client, its rebalance listener calling :meth:`_note`."""
        raise NotImplementedError

    def _note(self, assigned: bool, topic_partitions: Iterable[Any]) -> None:
        """Note a change the client reported, as its ``TopicPartition`` objects (both
        libraries' have ``topic`` and ``partition``)."""
        self._relay.note(assigned, (Partition(tp.topic, tp.partition) for tp in topic_partitions))

    def assignment(self) -> set[Partition]:
        return set(self._relay.assignment)
