"""Kafka at the edge: client construction from settings and a producer that knows whether
everything it sent arrived.

Works against Apache Kafka and any Kafka-protocol broker (the tests use Tansu). Auto-commit is
off: the worker commits explicitly, after the state is written (see :mod:`stream_ae.worker.loop`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from stream_ae.errors import BrokerError
from stream_ae.settings import Settings

log = logging.getLogger(__name__)


def security_config(settings: Settings) -> dict[str, Any]:
    """The kafka-python security options; secrets are unwrapped here and nowhere else."""
    config: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        config.update(
            ssl_cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
            ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
            ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
            ssl_password=settings.ssl_password.get_secret_value()
            if settings.ssl_password
            else None,
        )
    if settings.security_protocol.startswith("SASL"):
        assert settings.sasl_password is not None  # checked by the settings validator
        config.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password.get_secret_value(),
        )
    return config


def make_consumer(settings: Settings, **overrides: Any) -> Any:
    """A consumer of the worker group, not yet subscribed, with auto-commit off."""
    from kafka import KafkaConsumer

    config: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap_servers.split(","),
        client_id=f"{settings.client_id}-consumer",
        group_id=settings.group_id,
        enable_auto_commit=False,
        # 'error' maps to kafka-python's "raise on reset" (any value but earliest/latest).
        auto_offset_reset="none"
        if settings.auto_offset_reset == "error"
        else settings.auto_offset_reset,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(settings.session_timeout_ms // 3, 100),
        max_poll_interval_ms=settings.max_poll_interval_ms,
        max_poll_records=settings.max_poll_records,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        **security_config(settings),
    )
    config.update(overrides)
    try:
        return KafkaConsumer(**config)
    except Exception as exc:
        raise BrokerError(
            f"cannot create a consumer for {settings.bootstrap_servers}: {exc}"
        ) from exc


def make_producer(settings: Settings, **overrides: Any) -> Any:
    """A producer for alerts and dead letters: acks from all replicas, retries on."""
    from kafka import KafkaProducer

    config: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap_servers.split(","),
        client_id=f"{settings.client_id}-producer",
        acks="all",
        retries=5,
        linger_ms=5,
        max_request_size=max(1_048_576, settings.max_message_bytes * 2),
        **security_config(settings),
    )
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except Exception as exc:
        raise BrokerError(
            f"cannot create a producer for {settings.bootstrap_servers}: {exc}"
        ) from exc


class TrackedProducer:
    """Sends and remembers the futures, so :meth:`flush` can say whether all arrived."""

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self._pending: list[Any] = []

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        try:
            future = self.producer.send(topic, value=value, key=key, headers=list(headers or []))
        except Exception as exc:
            raise BrokerError(f"send to {topic} failed: {exc}") from exc
        self._pending.append(future)

    def flush(self, timeout_s: float) -> int:
        """Wait for every send since the last flush; raise :class:`BrokerError` if any failed."""
        pending, self._pending = self._pending, []
        if not pending:
            return 0
        try:
            self.producer.flush(timeout=timeout_s)
        except Exception as exc:
            raise BrokerError(f"producer flush failed: {exc}") from exc
        failed = [f for f in pending if not f.is_done or f.failed()]
        if failed:
            first = failed[0]
            reason = first.exception if first.is_done else "timed out"
            raise BrokerError(
                f"{len(failed)} of {len(pending)} messages not acknowledged: {reason}"
            )
        return len(pending)

    def discard(self) -> None:
        self._pending.clear()

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            self.producer.close(timeout=timeout_s)
        except Exception as exc:  # closing must not mask the reason we are stopping
            log.warning("producer close failed: %s", exc)
