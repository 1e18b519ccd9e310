"""The Kafka clients the worker's integration tests run over.

Fixture (import it into a test module: ``from tests.kafka_clients import kafka_client``):

``kafka_client`` (function, parametrised)
    ``"kafka-python"``, then ``"confluent"`` (librdkafka): the value of the worker's
    ``kafka_client`` setting, so each test runs once per client.
"""

from __future__ import annotations

import pytest

KAFKA_CLIENTS = ("kafka-python", "confluent")


@pytest.fixture(params=KAFKA_CLIENTS)
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The worker's Kafka client library for this run of the test."""
    return str(request.param)
