"""The interface of :mod:`stream_ae.io.kafka.interface` on kafka-python (the default client).

Every kafka-python error leaves as a :class:`~stream_ae.errors.BrokerError` carrying the
client's own ``retriable`` flag.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import kafka
import kafka.errors

from stream_ae.errors import BrokerError, MessageTooLargeError
from stream_ae.io.kafka.adapter import (
    ConsumerOptions,
    ProducerOptions,
    RelayedConsumer,
    client_errors,
)
from stream_ae.io.kafka.connection import KafkaConnection
from stream_ae.io.kafka.interface import Partition, Record

log = logging.getLogger(__name__)

# A failed commit after a rebalance loses nothing (the replay is skipped by the fenced state),
# so for the worker these are worth a retry even though kafka-python calls them final.
_COMMIT_RETRIABLE = (
    kafka.errors.CommitFailedError,
    kafka.errors.RebalanceInProgressError,
    kafka.errors.IllegalGenerationError,
    kafka.errors.UnknownMemberIdError,
)


def wrap_error(what: str, exc: BaseException) -> BrokerError:
    """``exc`` as the project's error: retriable as kafka-python says (a socket error is;
    anything else unknown is not)."""
    if isinstance(exc, kafka.errors.KafkaTimeoutError) and "Unable to bootstrap" in str(exc):
        return BrokerError(f"{what}: no broker answered", retriable=True)
    if isinstance(exc, kafka.errors.MessageSizeTooLargeError):
        return MessageTooLargeError(f"{what}: {exc}")
    if isinstance(exc, kafka.errors.KafkaError):
        retriable = bool(exc.retriable)
    else:
        retriable = isinstance(exc, (OSError, TimeoutError))
    return BrokerError(f"{what}: {type(exc).__name__}: {exc}", retriable=retriable)


def _wrapped(what: str) -> AbstractContextManager[None]:
    return client_errors(what, wrap_error)


def _client_config(connection: KafkaConnection, client_id: str) -> dict[str, Any]:
    """The options every kafka-python client of ``connection`` takes."""
    return dict(
        bootstrap_servers=connection.bootstrap_servers.split(","),
        client_id=client_id,
        bootstrap_timeout_ms=connection.bootstrap_timeout_ms,
        **connection.security,
    )


def _tp(partition: Partition) -> kafka.TopicPartition:
    return kafka.TopicPartition(partition.topic, partition.partition)


class KafkaPythonBatchConsumer(RelayedConsumer):
    """:class:`~stream_ae.io.kafka.interface.BatchConsumer` on ``kafka.KafkaConsumer``."""

    def __init__(self, connection: KafkaConnection, options: ConsumerOptions) -> None:
        super().__init__()
        reset = options.auto_offset_reset
        config = _client_config(connection, options.client_id) | dict(
            group_id=options.group_id,
            enable_auto_commit=False,
            # 'error' maps to kafka-python's "raise on reset" (any value but earliest/latest).
            auto_offset_reset="none" if reset == "error" else reset,
            session_timeout_ms=options.session_timeout_ms,
            heartbeat_interval_ms=options.heartbeat_interval_ms,
            max_poll_interval_ms=options.max_poll_interval_ms,
            max_poll_records=options.max_poll_records,
            fetch_max_wait_ms=options.fetch_max_wait_ms,
        )
        with _wrapped(f"cannot create a consumer for {connection.bootstrap_servers}"):
            self._consumer = kafka.KafkaConsumer(**config)

    def _subscribe(self, topics: list[str]) -> None:
        note = self._note

        class Listener(kafka.ConsumerRebalanceListener):
            # Called on kafka-python's IO thread, where blocking client calls are forbidden:
            # only noted here, delivered by poll_batch on the poll thread.
            def on_partitions_revoked(self, revoked: Any) -> None:
                note(False, revoked)

            def on_partitions_assigned(self, assigned: Any) -> None:
                note(True, assigned)

        with _wrapped(f"subscribe to {topics}"):
            self._consumer.subscribe(topics, listener=Listener())

    def assign(self, partitions: Sequence[Partition]) -> None:
        with _wrapped("assign"):
            self._consumer.assign([_tp(p) for p in partitions])
        self._relay.assignment = frozenset(partitions)

    def partitions_of(self, topic: str) -> list[int]:
        with _wrapped(f"metadata of {topic}"):
            return sorted(self._consumer.partitions_for_topic(topic) or ())

    def poll_batch(self, timeout_ms: int, max_records: int) -> list[Record]:
        self._relay.deliver()
        with _wrapped("poll"):
            polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        self._relay.deliver()
        return [record for records in polled.values() for record in records]

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        try:
            self._consumer.commit(
                offsets={
                    _tp(p): kafka.OffsetAndMetadata(offset, "", -1) for p, offset in offsets.items()
                }
            )
        except _COMMIT_RETRIABLE as exc:
            raise BrokerError(f"offset commit failed: {exc}", retriable=True) from exc
        except Exception as exc:
            raise wrap_error("offset commit failed", exc) from exc

    def committed(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        with _wrapped("committed offsets"):
            return {p: self._consumer.committed(_tp(p)) for p in partitions}

    def seek(self, partition: Partition, offset: int) -> None:
        with _wrapped(f"seek {partition} to {offset}"):
            self._consumer.seek(_tp(partition), offset)

    def seek_to_beginning(self, partitions: Sequence[Partition]) -> None:
        with _wrapped("seek to beginning"):
            self._consumer.seek_to_beginning(*(_tp(p) for p in partitions))

    def offsets_for_times(self, times_ms: Mapping[Partition, int]) -> dict[Partition, int | None]:
        with _wrapped("offsets for times"):
            found = self._consumer.offsets_for_times({_tp(p): t for p, t in times_ms.items()})
        out: dict[Partition, int | None] = {}
        for p in times_ms:
            hit = found.get(_tp(p))
            out[p] = hit.offset if hit is not None else None
        return out

    def beginning_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        with _wrapped("beginning offsets"):
            found = self._consumer.beginning_offsets([_tp(p) for p in partitions])
        return {p: int(found[_tp(p)]) for p in partitions}

    def end_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        with _wrapped("end offsets"):
            found = self._consumer.end_offsets([_tp(p) for p in partitions])
        return {p: int(found[_tp(p)]) for p in partitions}

    def position(self, partition: Partition, *, timeout_ms: int | None = None) -> int | None:
        try:
            return self._consumer.position(_tp(partition), timeout_ms=timeout_ms)
        except kafka.errors.KafkaTimeoutError:
            return None
        except Exception as exc:
            raise wrap_error(f"position of {partition}", exc) from exc

    def high_watermark(self, partition: Partition) -> int | None:
        return self._consumer.highwater(_tp(partition))

    def close(self) -> None:
        with _wrapped("consumer close"):
            self._consumer.close(autocommit=False)


class KafkaPythonProducer:
    """:class:`~stream_ae.io.kafka.interface.Producer` on ``kafka.KafkaProducer``."""

    def __init__(self, connection: KafkaConnection, options: ProducerOptions) -> None:
        config = _client_config(connection, options.client_id) | dict(
            acks="all",
            retries=5,
            linger_ms=options.linger_ms,
            max_request_size=options.max_request_bytes,
        )
        with _wrapped(f"cannot create a producer for {connection.bootstrap_servers}"):
            self._producer = kafka.KafkaProducer(**config)
        self._pending: list[Any] = []

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        with _wrapped(f"send to {topic}"):
            future = self._producer.send(topic, value=value, key=key, headers=list(headers or []))
        self._pending.append(future)

    def flush(self, timeout_s: float) -> int:
        pending, self._pending = self._pending, []
        if not pending:
            return 0
        deadline = time.monotonic() + timeout_s
        with _wrapped("producer flush failed"):
            self._producer.flush(timeout=timeout_s)
        for future in pending:
            # A record's future completes just after its batch's: wait for the stragglers.
            if not future.is_done:
                with contextlib.suppress(Exception):
                    future.get(timeout=max(deadline - time.monotonic(), 0.01))
        failed = [f for f in pending if not f.is_done or f.failed()]
        if failed:
            first = failed[0]
            cause = first.exception if first.is_done else kafka.errors.KafkaTimeoutError()
            raise wrap_error(f"{len(failed)} of {len(pending)} messages not acknowledged", cause)
        return len(pending)

    def discard(self) -> None:
        self._pending.clear()

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            self._producer.close(timeout=timeout_s)
        except Exception as exc:  # closing must not mask the reason we are stopping
            log.warning("producer close failed: %s", exc)
