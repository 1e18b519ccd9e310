"""The interface of :mod:`stream_ae.io.kafka.interface` on confluent-kafka (librdkafka): the
fast client, ``STREAM_AE_KAFKA_CLIENT=confluent`` (``pip install 'stream-ae[fast]'``).

The security settings arrive in kafka-python's names (:func:`.connection.security_config`) and
are mapped to librdkafka's here. Every client error leaves as a
:class:`~stream_ae.errors.BrokerError` carrying librdkafka's ``retriable`` flag.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream_ae.errors import BrokerError, MessageTooLargeError
from stream_ae.io.kafka.adapter import (
    ConsumerOptions,
    ProducerOptions,
    RelayedConsumer,
    client_errors,
)
from stream_ae.io.kafka.connection import KafkaConnection
from stream_ae.io.kafka.interface import ConsumedRecord, Partition, Record

log = logging.getLogger(__name__)
# librdkafka's own log lines, served on the polling thread instead of written to stderr.
client_log = logging.getLogger("stream_ae.io.kafka.librdkafka")

# kafka-python option name -> librdkafka property.
_SECURITY_NAMES = {
    "security_protocol": "security.protocol",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
}

# Timeouts and unreachable brokers that librdkafka reports without its retriable flag.
_TRANSIENT = {
    getattr(KafkaError, name)
    for name in (
        "_TRANSPORT",
        "_ALL_BROKERS_DOWN",
        "_TIMED_OUT",
        "_MSG_TIMED_OUT",
        "_RESOLVE",
        "_WAIT_COORD",
        "REQUEST_TIMED_OUT",
        "NETWORK_EXCEPTION",
        "LEADER_NOT_AVAILABLE",
        "NOT_LEADER_FOR_PARTITION",
        "NOT_ENOUGH_REPLICAS",
        "COORDINATOR_NOT_AVAILABLE",
        "NOT_COORDINATOR",
        "COORDINATOR_LOAD_IN_PROGRESS",
    )
    if hasattr(KafkaError, name)
}
# A failed commit after a rebalance loses nothing (the replay is skipped by the fenced state).
_COMMIT_TRANSIENT = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError._ASSIGNMENT_LOST,
    KafkaError._STATE,
}
_TOO_LARGE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE}


def librdkafka_security(security: Mapping[str, Any]) -> dict[str, Any]:
    """kafka-python security options as librdkafka properties.

    >>> librdkafka_security({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"})
    {'security.protocol': 'SASL_SSL', 'sasl.mechanism': 'PLAIN'}
    """
    unknown = set(security) - set(_SECURITY_NAMES)
    if unknown:
        raise ValueError(f"security options without a librdkafka equivalent: {sorted(unknown)}")
    return {_SECURITY_NAMES[k]: v for k, v in security.items() if v is not None}


def wrap_error(
    what: str, exc: BaseException, transient: frozenset[int] = frozenset()
) -> BrokerError:
    """``exc`` as the project's error, retriable as librdkafka says (or when its code is one
    of the transient ones)."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    if isinstance(error, KafkaError):
        code = error.code()
        if code in _TOO_LARGE:
            return MessageTooLargeError(f"{what}: {error.str()}")
        retriable = bool(error.retriable()) or code in _TRANSIENT or code in transient
        if error.fatal():
            retriable = False
        return BrokerError(f"{what}: {error.name()}: {error.str()}", retriable=retriable)
    retriable = isinstance(exc, (OSError, TimeoutError, BufferError))
    return BrokerError(f"{what}: {type(exc).__name__}: {exc}", retriable=retriable)


def _wrapped(what: str, transient: frozenset[int] = frozenset()) -> AbstractContextManager[None]:
    return client_errors(what, lambda what, exc: wrap_error(what, exc, transient))


def _client_config(connection: KafkaConnection, client_id: str) -> dict[str, Any]:
    """The properties every librdkafka client of ``connection`` takes."""
    return {
        "bootstrap.servers": connection.bootstrap_servers,
        "client.id": client_id,
        "error_cb": _log_client_error,
        "logger": client_log,
        **librdkafka_security(connection.security),
    }


def _reach(client: Any, connection: KafkaConnection) -> None:
    """Fail within ``bootstrap_timeout_ms`` when no broker answers, as kafka-python does:
    librdkafka itself would retry in the background for ever, and a producer's first flush
    then waits minutes."""
    timeout_s = connection.bootstrap_timeout_ms / 1000
    try:
        client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise BrokerError(
            f"no broker at {connection.bootstrap_servers} answered within {timeout_s:g} s "
            f"({wrap_error('metadata', exc)})",
            retriable=True,
        ) from exc


def _log_client_error(error: KafkaError) -> None:
    """librdkafka's background errors (a broker down...): it retries by itself, we say so."""
    log.warning("kafka client: %s: %s", error.name(), error.str())


_new_record = tuple.__new__


def _partition(tp: TopicPartition) -> Partition:
    return Partition(tp.topic, tp.partition)


def _known(offset: int) -> int | None:
    return offset if offset >= 0 else None  # librdkafka's logical offsets are negative


class ConfluentBatchConsumer(RelayedConsumer):
    """:class:`~stream_ae.io.kafka.interface.BatchConsumer` on ``confluent_kafka.Consumer``.

    ``options.max_poll_records`` is not a client property here: each ``poll_batch`` call
    bounds its own batch."""

    def __init__(self, connection: KafkaConnection, options: ConsumerOptions) -> None:
        super().__init__()
        client_id = options.client_id
        config = _client_config(connection, client_id) | {
            # librdkafka wants a group even for assign-only reading; nothing is committed then.
            "group.id": options.group_id or f"{client_id}-no-group",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "auto.offset.reset": options.auto_offset_reset,  # 'error' is librdkafka's too
            "session.timeout.ms": options.session_timeout_ms,
            "heartbeat.interval.ms": options.heartbeat_interval_ms,
            "max.poll.interval.ms": options.max_poll_interval_ms,
            "fetch.wait.max.ms": options.fetch_max_wait_ms,
        }
        with _wrapped(f"cannot create a consumer for {connection.bootstrap_servers}"):
            self._consumer = confluent_kafka.Consumer(config)
        _reach(self._consumer, connection)
        # Manual assignment starts on the first poll, with the offsets of any seek before it:
        # librdkafka refuses to seek a partition that is not fetching yet.
        self._to_assign: dict[Partition, int] | None = None

    def _subscribe(self, topics: list[str]) -> None:
        # Called inside consume(), on the poll thread; still relayed, so the worker sees the
        # change between client calls, as with kafka-python. librdkafka assigns by itself
        # after on_assign returns.
        def assigned(_consumer: Any, partitions: list[TopicPartition]) -> None:
            self._note(True, partitions)

        def revoked(_consumer: Any, partitions: list[TopicPartition]) -> None:
            self._note(False, partitions)

        with _wrapped(f"subscribe to {topics}"):
            self._consumer.subscribe(topics, on_assign=assigned, on_revoke=revoked, on_lost=revoked)

    def assign(self, partitions: Sequence[Partition]) -> None:
        self._to_assign = {p: confluent_kafka.OFFSET_STORED for p in partitions}
        self._relay.assignment = frozenset(partitions)

    def partitions_of(self, topic: str) -> list[int]:
        with _wrapped(f"metadata of {topic}"):
            metadata = self._consumer.list_topics(topic, timeout=10)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return []
        return sorted(found.partitions)

    def poll_batch(self, timeout_ms: int, max_records: int) -> list[Record]:
        self._start_assignment()
        self._relay.deliver()
        with _wrapped("poll"):
            messages = self._consumer.consume(num_messages=max_records, timeout=timeout_ms / 1000)
        self._relay.deliver()
        records: list[Record] = []
        final: KafkaError | None = None
        for m in messages:
            error = m.error()
            if error is None:
                # tuple.__new__: a third of the named tuple's own constructor's cost.
                records.append(
                    _new_record(
                        ConsumedRecord,
                        (m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers()),
                    )
                )
            elif error.code() == KafkaError._PARTITION_EOF:
                continue
            elif error.retriable() or error.code() in _TRANSIENT:
                log.warning("kafka consume: %s: %s", error.name(), error.str())
            else:
                final = final or error
        if final is not None:
            # After the records: they were consumed, but the worker stops without committing.
            raise wrap_error(f"consume from {final.str()}", KafkaException(final))
        return records

    def _start_assignment(self) -> None:
        if self._to_assign is not None:
            assignment = [
                TopicPartition(p.topic, p.partition, offset)
                for p, offset in self._to_assign.items()
            ]
            self._to_assign = None
            with _wrapped("assign"):
                self._consumer.assign(assignment)

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        tps = [TopicPartition(p.topic, p.partition, o) for p, o in offsets.items()]
        with _wrapped("offset commit failed", frozenset(_COMMIT_TRANSIENT)):
            result = self._consumer.commit(offsets=tps, asynchronous=False)
        for tp in result or ():
            if tp.error is not None:
                raise wrap_error(
                    f"offset commit of {_partition(tp)} failed",
                    KafkaException(tp.error),
                    frozenset(_COMMIT_TRANSIENT),
                )

    def committed(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        with _wrapped("committed offsets"):
            found = self._consumer.committed(
                [TopicPartition(p.topic, p.partition) for p in partitions], timeout=10
            )
        return {_partition(tp): _known(tp.offset) for tp in found}

    def seek(self, partition: Partition, offset: int) -> None:
        if self._to_assign is not None and partition in self._to_assign:
            self._to_assign[partition] = offset
            return
        with _wrapped(f"seek {partition} to {offset}"):
            self._consumer.seek(TopicPartition(partition.topic, partition.partition, offset))

    def seek_to_beginning(self, partitions: Sequence[Partition]) -> None:
        for partition in partitions:
            self.seek(partition, confluent_kafka.OFFSET_BEGINNING)

    def offsets_for_times(self, times_ms: Mapping[Partition, int]) -> dict[Partition, int | None]:
        with _wrapped("offsets for times"):
            found = self._consumer.offsets_for_times(
                [TopicPartition(p.topic, p.partition, t) for p, t in times_ms.items()], timeout=10
            )
        return {_partition(tp): _known(tp.offset) for tp in found}

    def _watermarks(self, partition: Partition, cached: bool) -> tuple[int, int]:
        tp = TopicPartition(partition.topic, partition.partition)
        with _wrapped(f"watermarks of {partition}"):
            low, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=cached)
        return int(low), int(high)

    def beginning_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        return {p: self._watermarks(p, cached=False)[0] for p in partitions}

    def end_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        return {p: self._watermarks(p, cached=False)[1] for p in partitions}

    def position(self, partition: Partition, *, timeout_ms: int | None = None) -> int | None:
        del timeout_ms  # librdkafka knows the position locally
        with _wrapped(f"position of {partition}"):
            (tp,) = self._consumer.position([TopicPartition(partition.topic, partition.partition)])
        return _known(tp.offset)

    def high_watermark(self, partition: Partition) -> int | None:
        try:
            return _known(self._watermarks(partition, cached=True)[1])
        except BrokerError:
            return None

    def close(self) -> None:
        with _wrapped("consumer close"):
            self._consumer.close()


class ConfluentProducer:
    """:class:`~stream_ae.io.kafka.interface.Producer` on ``confluent_kafka.Producer``."""

    def __init__(self, connection: KafkaConnection, options: ProducerOptions) -> None:
        config = _client_config(connection, options.client_id) | {
            "acks": "all",
            "linger.ms": options.linger_ms,
            "message.max.bytes": options.max_request_bytes,
            # No idempotence: it needs producer ids, which not every Kafka-protocol broker has;
            # duplicates after a retry are allowed (alert ids and dead-letter ids are stable).
            "enable.idempotence": False,
        }
        with _wrapped(f"cannot create a producer for {connection.bootstrap_servers}"):
            self._producer = confluent_kafka.Producer(config)
        _reach(self._producer, connection)
        self._generation = 0
        self._sent = 0
        self._failures: list[KafkaError] = []
        self._on_delivery = self._delivery_callback(self._generation)

    def _delivery_callback(self, generation: int) -> Callable[[KafkaError | None, Any], None]:
        # Delivery reports run inside poll()/flush() on this thread; the generation keeps the
        # report of a discarded send out of the next flush.
        def delivered(error: KafkaError | None, _message: Any) -> None:
            if error is not None and generation == self._generation:
                self._failures.append(error)

        return delivered

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=list(headers) if headers else None,
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:  # the local queue is full: serve delivery reports, try again
                self._producer.poll(0.1)
            except Exception as exc:
                raise wrap_error(f"send to {topic}", exc) from exc
        self._sent += 1
        if self._sent % 1000 == 0:
            self._producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        sent = self._sent
        if not sent:
            return 0
        with _wrapped("producer flush failed"):
            remaining = self._producer.flush(timeout_s)
        failures = self._failures
        self.discard()
        if remaining:
            raise BrokerError(
                f"{remaining} of {sent} messages not acknowledged within {timeout_s:.0f} s",
                retriable=True,
            )
        if failures:
            raise wrap_error(
                f"{len(failures)} of {sent} messages not acknowledged", KafkaException(failures[0])
            )
        return sent

    def discard(self) -> None:
        self._generation += 1
        self._sent = 0
        self._failures = []
        self._on_delivery = self._delivery_callback(self._generation)

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            remaining = self._producer.flush(timeout_s)
            self._producer.close()
        except Exception as exc:  # closing must not mask the reason we are stopping
            log.warning("producer close failed: %s", exc)
            return
        if remaining:
            log.warning("producer closed with %d messages unsent", remaining)
