"""The Kafka clients the worker's integration tests run over.

Fixture (plugged in by tests/conftest.py):

``kafka_client`` (function, parametrised)
    ``"kafka-python"``, then ``"confluent"`` (librdkafka): the value of the worker's
    ``kafka_client`` setting, so each test runs once per client.

:func:`read_records` reads a topic the worker wrote, whichever client wrote it.
"""

from __future__ import annotations

from typing import Any

import pytest

from training.data import read_topic

KAFKA_CLIENTS = ("kafka-python", "confluent")


@pytest.fixture(params=KAFKA_CLIENTS)
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The worker's Kafka client library for this run of the test."""
    return str(request.param)


def read_records(bootstrap_servers: str, topic: str, timeout_s: float = 60.0) -> list[Any]:
    """Every record of ``topic`` as of now, in offset order per partition.

    Reads to the high watermark of the fetches, not to the end offset the broker reports:
    Tansu reports the base offset of the last record batch + 1 there, and librdkafka sends
    many records per batch (see :func:`training.data.read_topic`).
    """
    records: list[Any] = []
    read_topic(bootstrap_servers, topic, lambda _p, r: records.append(r), timeout_s=timeout_s)
    return records
