"""The Kafka edge without a broker: security options mapped to both clients, client errors
wrapped with the right ``retriable`` flag, and dead letters built to fit."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import confluent_kafka
import kafka.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from stream_ae.core.records import Reason
from stream_ae.errors import BrokerError, ConfigError, MessageTooLargeError
from stream_ae.io.kafka import ConsumedRecord, KafkaConnection, Partition, security_config
from stream_ae.io.kafka import confluent as confluent_client
from stream_ae.io.kafka import kafka_python as kafka_python_client
from stream_ae.io.kafka.adapter import ConsumerOptions
from stream_ae.settings import Settings, load_settings
from stream_ae.worker.dead_letters import (
    ID_HEADER,
    TRUNCATED_HEADER,
    build_dead_letter,
    dead_letter_id,
    offset_spans,
)


def _sasl_ssl(cafile: str | None = "/etc/ca.pem") -> Settings:
    return Settings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="worker",
        sasl_password=SecretStr("s3cret"),
        ssl_cafile=cafile,
        ssl_password=SecretStr("keypass"),
    )


def test_one_security_config_secures_both_clients() -> None:
    options = security_config(_sasl_ssl())
    assert options == {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": "/etc/ca.pem",
        "ssl_password": "keypass",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "worker",
        "sasl_plain_password": "s3cret",
    }
    assert confluent_client.librdkafka_security(options) == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": "/etc/ca.pem",
        "ssl.key.password": "keypass",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "worker",
        "sasl.password": "s3cret",
    }
    # Every option is one kafka-python accepts, under its own name.
    assert set(options) <= set(kafka.KafkaConsumer.DEFAULT_CONFIG)
    assert set(options) <= set(kafka.KafkaProducer.DEFAULT_CONFIG)


def test_librdkafka_accepts_the_mapped_options() -> None:
    # librdkafka validates property names and values at construction (no connection made);
    # it also reads the CA file, so none here: the system's CAs.
    config = confluent_client.librdkafka_security(security_config(_sasl_ssl(cafile=None)))
    confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:1", **config})
    with pytest.raises(confluent_kafka.KafkaException):
        confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:1", "ssl.ca.lokation": "x"})


def test_the_client_setting_picks_the_library() -> None:
    assert Settings().kafka_client == "kafka-python"
    connection = KafkaConnection.from_settings(Settings(kafka_client="confluent"))
    assert connection.client == "confluent"
    with pytest.raises(ConfigError, match="kafka_client"):
        load_settings({"kafka_client": "librdkafka"}, environ={})


@pytest.mark.parametrize(
    ("error", "retriable", "kind"),
    [
        (kafka.errors.KafkaTimeoutError("no broker"), True, BrokerError),
        (kafka.errors.KafkaConnectionError("reset"), True, BrokerError),
        (kafka.errors.NoOffsetForPartitionError("p0"), False, BrokerError),
        (kafka.errors.KafkaConfigurationError("bad"), False, BrokerError),
        (kafka.errors.MessageSizeTooLargeError("1 MiB"), False, MessageTooLargeError),
        (ConnectionRefusedError("refused"), True, BrokerError),
        (ValueError("a bug"), False, BrokerError),
    ],
)
def test_kafka_python_errors_keep_their_retriable_flag(
    error: Exception, retriable: bool, kind: type
) -> None:
    wrapped = kafka_python_client.wrap_error("poll", error)
    assert type(wrapped) is kind and wrapped.retriable is retriable
    assert str(wrapped).startswith("poll: ")


@pytest.mark.parametrize(
    ("code", "retriable", "kind"),
    [
        (confluent_kafka.KafkaError._TRANSPORT, True, BrokerError),
        (confluent_kafka.KafkaError._ALL_BROKERS_DOWN, True, BrokerError),
        (confluent_kafka.KafkaError._AUTO_OFFSET_RESET, False, BrokerError),
        (confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED, False, BrokerError),
        (confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE, False, MessageTooLargeError),
    ],
)
def test_confluent_errors_keep_their_retriable_flag(code: int, retriable: bool, kind: type) -> None:
    wrapped = confluent_client.wrap_error(
        "poll", confluent_kafka.KafkaException(confluent_kafka.KafkaError(code))
    )
    assert type(wrapped) is kind and wrapped.retriable is retriable


def test_a_commit_lost_to_a_rebalance_is_retriable_for_both_clients() -> None:
    # A failed commit loses nothing: the replay is skipped by the fenced state.
    error = confluent_kafka.KafkaException(
        confluent_kafka.KafkaError(confluent_kafka.KafkaError.ILLEGAL_GENERATION)
    )
    assert confluent_client.wrap_error("commit", error).retriable is False
    assert confluent_client.wrap_error(
        "commit", error, frozenset(confluent_client._COMMIT_TRANSIENT)
    ).retriable
    assert issubclass(kafka.errors.CommitFailedError, kafka_python_client._COMMIT_RETRIABLE)


@pytest.mark.parametrize(
    "client", [kafka_python_client, confluent_client], ids=lambda c: c.__name__
)
def test_both_clients_wrap_errors_through_the_shared_adapter(client: Any) -> None:
    # A client's own error leaves as a BrokerError naming what failed; ours pass through as
    # they are (not wrapped twice).
    with (
        pytest.raises(BrokerError, match=r"^poll: ConnectionResetError: gone") as wrapped,
        client._wrapped("poll"),
    ):
        raise ConnectionResetError("gone")
    assert wrapped.value.retriable and isinstance(wrapped.value.__cause__, ConnectionResetError)
    ours = BrokerError("already ours", retriable=False)
    with pytest.raises(BrokerError) as passed, client._wrapped("poll"):
        raise ours
    assert passed.value is ours


def test_consumer_options_are_one_object_for_both_clients() -> None:
    options = ConsumerOptions("c", None, "earliest", 200, 1000, 100, 10)
    assert options.heartbeat_interval_ms == 100  # never below 100 ms
    assert replace(options, session_timeout_ms=30_000).heartbeat_interval_ms == 10_000


def _record(value: bytes, offset: int = 7) -> ConsumedRecord:
    return ConsumedRecord("metrics", 2, offset, b"host-1", value)


def test_a_dead_letter_that_fits_is_the_original_with_its_id() -> None:
    letter = build_dead_letter(_record(b"not json"), Reason.NOT_JSON, "no JSON")
    headers = dict(letter.headers)
    assert letter.value == b"not json" and letter.key == b"host-1"
    assert headers[ID_HEADER] == dead_letter_id("metrics", 2, 7).encode()
    assert TRUNCATED_HEADER not in headers


def test_a_dead_letter_too_large_is_cut_to_fit_with_a_marker() -> None:
    value = b"x" * 5000
    letter = build_dead_letter(_record(value), Reason.OVERSIZE, "too big", max_bytes=2000)
    headers = dict(letter.headers)
    assert headers[TRUNCATED_HEADER] == b"5000"
    assert letter.value is not None and value.startswith(letter.value) and letter.value
    size = len(letter.key or b"") + len(letter.value)
    assert size + sum(len(n) + len(v) for n, v in letter.headers) <= 2000


def test_dead_letter_ids_differ_by_source_and_repeat_for_the_same_one() -> None:
    ids = {dead_letter_id(t, p, o) for t in ("a", "b") for p in (0, 1) for o in (0, 1, 10)}
    assert len(ids) == 12
    assert dead_letter_id("a", 0, 1) == dead_letter_id("a", 0, 1)


def test_kafka_python_checks_crcs_in_c() -> None:
    """kafka-python verifies each fetched batch's CRC-32C with the ``crc32c`` package when it is
    installed (a dependency for that reason), else with a pure-Python loop."""
    from kafka.record import util

    assert util._crc32c is not util.crc32c_py
    assert util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283 == util.crc32c_py(b"123456789")


def test_offset_spans_per_partition() -> None:
    records = [_record(b"", 5), _record(b"", 3), ConsumedRecord("other", 0, 9, None, None)]
    assert offset_spans(records) == {("metrics", 2): (3, 5), ("other", 0): (9, 9)}


def _reference_spans(messages: list[ConsumedRecord]) -> dict[Partition, tuple[int, int]]:
    """offset_spans as a plain loop over the messages."""
    spans: dict[Partition, tuple[int, int]] = {}
    for m in messages:
        partition = Partition(m.topic, m.partition)
        first, last = spans.get(partition, (m.offset, m.offset))
        spans[partition] = (min(first, m.offset), max(last, m.offset))
    return spans


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["metrics", "other", "b", "ü"]),
            st.sampled_from([0, 1, 2, 7, 2**31 - 1]),
            st.integers(0, 2**63 - 1),
        ),
        max_size=60,
    )
)
def test_offset_spans_equal_a_plain_loop(rows: list[tuple[str, int, int]]) -> None:
    messages = [
        ConsumedRecord(topic, partition, offset, None, None) for topic, partition, offset in rows
    ]
    spans = offset_spans(messages)
    expected = _reference_spans(messages)
    assert list(spans.items()) == list(expected.items())  # the same partitions in the same order
    assert all(type(v) is int for span in spans.values() for v in span)
    assert all(type(p.partition) is int and isinstance(p, Partition) for p in spans)
