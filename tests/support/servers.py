"""The real servers of the integration tests, one of each per test session.

``broker`` (session)
    A started :class:`stream_ae_dev.devstack.BrokerProcess` (Tansu, in memory). Connect with
    ``broker.bootstrap_servers``. Topics and consumer groups live for the whole session:
    take topics from ``topic_factory`` and give each consumer a unique ``group_id``.
    Consumers joining a group: ``session_timeout_ms=6000`` (the join takes about half of it)
    and ``fetch_max_wait_ms=20`` (an empty fetch waits about half of it).
``redis_server`` (session)
    A started :class:`stream_ae_dev.devstack.RedisProcess` without persistence. Connect with
    ``redis_server.url``.
``redis_client`` (function)
    A ``redis.Redis`` on ``redis_server`` (replies are bytes), with the database flushed
    before the test.
``topic_factory`` (function)
    ``topic_factory(partitions=1, prefix=None) -> str`` creates a topic with a unique name
    (the prefix defaults to the test's name) and returns the name once metadata shows it.

The servers start only when a test asks for them and stop at the end of the session, also on
Ctrl-C or SIGTERM. A missing server binary fails the test with the pip package to install:
nothing is skipped. Server logs are under pytest's temporary directory (``--basetemp``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from stream_ae_dev.devstack import (
    BinaryNotFoundError,
    BrokerProcess,
    RedisProcess,
    ServerProcess,
    create_topics,
    interrupt_on_termination,
)

# Kafka topic names: at most 249 of these characters.
_TOPIC_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_TOPIC_PREFIX_MAX = 200


def _start(server: ServerProcess) -> None:
    try:
        server.start()
    except BinaryNotFoundError as exc:
        pytest.fail(f"cannot start the test {server.name}: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A Tansu broker for the session; ``broker.bootstrap_servers`` is its address."""
    server = BrokerProcess(run_dir=tmp_path_factory.mktemp("broker"))
    # SIGTERM would otherwise kill pytest without teardown and orphan the server.
    with interrupt_on_termination():
        _start(server)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A redis-server for the session; ``redis_server.url`` is its URL."""
    server = RedisProcess(run_dir=tmp_path_factory.mktemp("redis"))
    with interrupt_on_termination():
        _start(server)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    """A client of the session's Redis, on a database flushed before the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def topic_factory(broker: BrokerProcess, request: pytest.FixtureRequest) -> Callable[..., str]:
    """``make(partitions=1, prefix=None) -> name``: create a uniquely named topic."""

    def make(partitions: int = 1, prefix: str | None = None) -> str:
        base = _TOPIC_NAME_CHARS.sub("-", prefix or request.node.name).strip("-.")
        name = f"{base[:_TOPIC_PREFIX_MAX] or 'topic'}-{uuid.uuid4().hex[:12]}"
        create_topics(broker.bootstrap_servers, {name: partitions})
        return name

    return make
