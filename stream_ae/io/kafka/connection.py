"""How to reach Kafka, built once from :class:`~stream_ae.settings.Settings`: the brokers, the
security options and the client library; and the consumers and producers made from it.

The security options are kept in kafka-python's names (:func:`security_config`); the confluent
client maps them to librdkafka's, so the same settings secure both clients.

>>> from stream_ae.settings import Settings
>>> connection = KafkaConnection.from_settings(Settings(bootstrap_servers="k1:9092,k2:9092"))
>>> connection.client, connection.security
('kafka-python', {'security_protocol': 'PLAINTEXT'})
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from stream_ae.errors import ConfigError
from stream_ae.io.kafka.adapter import ConsumerOptions, OffsetReset, ProducerOptions
from stream_ae.io.kafka.interface import BatchConsumer, Producer
from stream_ae.settings import Settings

KafkaClient = Literal["kafka-python", "confluent"]

# The producer's own limit on one request. Kafka's default broker limit (message.max.bytes) is
# 1,048,588 B, so a request this size is one the default broker accepts.
DEFAULT_MAX_REQUEST_BYTES = 1_048_576
# How long a new client waits for its first broker before giving up. A reachable broker
# answers in milliseconds; the clients' 30 s default made a mistyped address or a stopped
# broker a half-minute hang for the tools. The worker retries a failed start anyway (with its
# own backoff and one log line per attempt), so it loses nothing by failing fast either.
BOOTSTRAP_TIMEOUT_MS = 5_000


def security_config(settings: Settings) -> dict[str, Any]:
    """The security options in kafka-python's names; secrets are unwrapped here and nowhere
    else. Unset options are left out."""
    config: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(settings, name):
                config[name] = str(getattr(settings, name))
        if settings.ssl_password:
            config["ssl_password"] = settings.ssl_password.get_secret_value()
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_password is not None  # checked by the settings validator
        config.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password.get_secret_value(),
        )
    return config


def confluent_installed() -> bool:
    return importlib.util.find_spec("confluent_kafka") is not None


@dataclass(frozen=True)
class KafkaConnection:
    """Brokers, client id, security options and client library: everything a Kafka client
    needs that is not about one consumer or producer."""

    bootstrap_servers: str
    client_id: str = "stream-ae"
    security: Mapping[str, Any] = field(default_factory=dict)
    client: KafkaClient = "kafka-python"
    bootstrap_timeout_ms: int = BOOTSTRAP_TIMEOUT_MS

    @classmethod
    def from_settings(
        cls, settings: Settings, client: KafkaClient | None = None
    ) -> KafkaConnection:
        return cls(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=settings.client_id,
            security=security_config(settings),
            client=client or settings.kafka_client,
        )

    def consumer(
        self,
        *,
        group_id: str | None = None,
        auto_offset_reset: OffsetReset = "earliest",
        session_timeout_ms: int = 10_000,
        max_poll_interval_ms: int = 300_000,
        fetch_max_wait_ms: int = 100,
        max_poll_records: int = 5_000,
        client_id_suffix: str = "consumer",
    ) -> BatchConsumer:
        """A batch consumer with auto-commit off; in ``group_id``'s group when subscribed
        (None: partitions are assigned by hand and nothing is committed)."""
        options = ConsumerOptions(
            client_id=f"{self.client_id}-{client_id_suffix}",
            group_id=group_id,
            auto_offset_reset=auto_offset_reset,
            session_timeout_ms=session_timeout_ms,
            max_poll_interval_ms=max_poll_interval_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_poll_records=max_poll_records,
        )
        if self._library() == "confluent":
            from stream_ae.io.kafka.confluent import ConfluentBatchConsumer

            return ConfluentBatchConsumer(self, options)
        from stream_ae.io.kafka.kafka_python import KafkaPythonBatchConsumer

        return KafkaPythonBatchConsumer(self, options)

    def producer(
        self, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, linger_ms: int = 5
    ) -> Producer:
        """A producer with acks from all replicas and retries on."""
        options = ProducerOptions(
            client_id=f"{self.client_id}-producer",
            max_request_bytes=max_request_bytes,
            linger_ms=linger_ms,
        )
        if self._library() == "confluent":
            from stream_ae.io.kafka.confluent import ConfluentProducer

            return ConfluentProducer(self, options)
        from stream_ae.io.kafka.kafka_python import KafkaPythonProducer

        return KafkaPythonProducer(self, options)

    def _library(self) -> KafkaClient:
        if self.client == "confluent" and not confluent_installed():
            raise ConfigError(
                "kafka_client 'confluent' needs the confluent-kafka package "
                "(pip install 'stream-ae[fast]')"
            )
        return self.client


def worker_consumer(settings: Settings, connection: KafkaConnection | None = None) -> BatchConsumer:
    """The consumer of the worker group, not yet subscribed."""
    connection = connection or KafkaConnection.from_settings(settings)
    return connection.consumer(
        group_id=settings.group_id,
        auto_offset_reset=settings.auto_offset_reset,
        session_timeout_ms=settings.session_timeout_ms,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        max_poll_records=settings.max_poll_records,
    )


def worker_producer(settings: Settings, connection: KafkaConnection | None = None) -> Producer:
    """The producer of alerts and dead letters."""
    connection = connection or KafkaConnection.from_settings(settings)
    return connection.producer(
        max_request_bytes=max(DEFAULT_MAX_REQUEST_BYTES, settings.max_message_bytes * 2)
    )
