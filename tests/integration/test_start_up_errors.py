"""Errors no retry can fix end the worker's start-up at once, with one clear line, instead of
a retry loop that never ends; a Redis that is merely away is still waited for.

- a wrong Redis password (``WRONGPASS``) and an ACL user without the right to load scripts
  (``NOPERM`` from the fenced-write script's ``SCRIPT LOAD``) are non-retriable
  :class:`StoreError` s, raised by ``build_worker``;
- the same call against a closed port keeps retrying (retriable) until stopped.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from stream_ae.errors import ConfigError, StoreError
from stream_ae.io.window_store import RedisWindowStore
from stream_ae.settings import Settings
from stream_ae.worker.bootstrap import build_worker, retry_until_up
from stream_ae_dev.devstack import BrokerProcess, RedisProcess, find_free_port
from tests.support.tiny_model import TinyModel
from tests.support.worker_process import settings_of, worker_config

pytestmark = pytest.mark.integration


@pytest.fixture
def acl_user(redis_client: redis.Redis) -> Iterator[tuple[str, str]]:
    """A Redis ACL user that may read and write any key but not load scripts."""
    name, password = f"noscript-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    redis_client.execute_command(
        "ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all", "-script"
    )
    try:
        yield name, password
    finally:
        redis_client.execute_command("ACL", "DELUSER", name)


def _settings(
    broker: BrokerProcess,
    redis_url: str,
    topic_factory: Callable[..., str],
    model: TinyModel,
    **overrides: object,
) -> Settings:
    return settings_of(
        worker_config(
            bootstrap_servers=broker.bootstrap_servers,
            redis_url=redis_url,
            model=model,
            input_topic=topic_factory(1, prefix="in"),
            alerts_topic=topic_factory(1, prefix="alerts"),
            dlq_topic=topic_factory(1, prefix="dlq"),
            **overrides,
        )
    )


def test_a_wrong_redis_password_fails_start_up_at_once(
    broker: BrokerProcess,
    redis_server: RedisProcess,
    topic_factory: Callable[..., str],
    tiny_model: TinyModel,
) -> None:
    settings = _settings(
        broker,
        redis_server.url,
        topic_factory,
        tiny_model,
        redis_username="nobody",
        redis_password="wrong",
    )
    with pytest.raises(ConfigError, match="refused the login of user 'nobody'") as failure:
        build_worker(settings)
    assert not failure.value.retriable
    assert "\n" not in str(failure.value) and "wrong" not in str(failure.value)


def test_a_redis_user_without_the_script_right_fails_start_up_at_once(
    broker: BrokerProcess,
    redis_server: RedisProcess,
    acl_user: tuple[str, str],
    topic_factory: Callable[..., str],
    tiny_model: TinyModel,
) -> None:
    name, password = acl_user
    settings = _settings(
        broker,
        redis_server.url,
        topic_factory,
        tiny_model,
        redis_username=name,
        redis_password=password,
    )
    with pytest.raises(StoreError, match="NoPermissionError") as failure:
        build_worker(settings)
    assert not failure.value.retriable


def test_a_redis_that_is_away_is_waited_for(
    broker: BrokerProcess,
    topic_factory: Callable[..., str],
    tiny_model: TinyModel,
) -> None:
    settings = _settings(
        broker,
        f"redis://127.0.0.1:{find_free_port()}/0",
        topic_factory,
        tiny_model,
        retry_backoff_max_s=0.2,
    )
    stop = threading.Event()
    tries: list[int] = []

    def connect() -> RedisWindowStore:
        tries.append(1)
        if len(tries) == 3:
            stop.set()
        return RedisWindowStore.from_settings(settings, tiny_model.window, tiny_model.features)

    with pytest.raises(KeyboardInterrupt):  # what retry_until_up raises when stopped
        retry_until_up("Redis", connect, settings, stop)
    assert len(tries) == 3
