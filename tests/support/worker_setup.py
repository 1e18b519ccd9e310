"""The setup every worker integration test starts with, as one fixture (plugged in by
tests/conftest.py):

``new_worker_config`` (function; parametrised through ``kafka_client``)
    ``make(partitions=1, redis_url=None, **overrides) -> dict``: the settings of one test's
    worker(s) (:func:`~tests.support.worker_process.worker_config_on_new_topics`): on the
    session's broker, an input topic of ``partitions`` partitions and an alerts and a
    dead-letter topic of the test's own, the session's tiny model, this run's Kafka client and
    the session's Redis (another one's URL as ``redis_url``); ``overrides`` are other settings.
    :func:`~tests.support.worker_process.settings_of` makes an in-process worker's settings of
    it, :class:`~tests.support.worker_process.WorkerProcess` a worker subprocess.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from stream_ae_dev.devstack import BrokerProcess, RedisProcess
from tests.support.tiny_model import TinyModel
from tests.support.worker_process import worker_config_on_new_topics

WorkerConfigFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def new_worker_config(
    broker: BrokerProcess,
    redis_server: RedisProcess,
    topic_factory: Callable[..., str],
    tiny_model: TinyModel,
    kafka_client: str,
) -> WorkerConfigFactory:
    """See the module docstring."""

    def make(
        *, partitions: int = 1, redis_url: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        return worker_config_on_new_topics(
            broker.bootstrap_servers,
            redis_url or redis_server.url,
            topic_factory,
            tiny_model,
            partitions=partitions,
            kafka_client=kafka_client,
            **overrides,
        )

    return make
