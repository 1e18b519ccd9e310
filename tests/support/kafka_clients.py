"""The Kafka clients the worker's integration tests run over.

Fixture (plugged in by tests/conftest.py):

``kafka_client`` (function, parametrised)
    ``"kafka-python"``, then ``"confluent"`` (librdkafka): the value of the worker's
    ``kafka_client`` setting, so each test runs once per client.

:func:`read_records` reads a topic the worker wrote, whichever client wrote it.
"""

from __future__ import annotations

import pytest

from tests.support.kafka_topics import read_topic

KAFKA_CLIENTS = ("kafka-python", "confluent")


@pytest.fixture(params=KAFKA_CLIENTS)
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The worker's Kafka client library for this run of the test."""
    return str(request.param)


# One reader of topics for every test, whichever client wrote them.
read_records = read_topic
