"""Redis over TLS with an ACL user limited to the key prefix (issue 14).

The server (tests/redis_servers.py ``redis_tls``) listens on TLS only, requires client
certificates from a CA the fixture made, and has a ``sae-worker`` user allowed only ``sae*``
keys, the model channel and no dangerous commands. The worker connects with it and runs; a
wrong password stops ``stream-ae worker`` with one clear line, no traceback, no password.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from stream_ae.errors import ConfigError, StoreError
from stream_ae.io.state_guard import StateGuard, check_server
from stream_ae.io.window_store import RedisWindowStore, connect_redis
from stream_ae.settings import Settings
from stream_ae_dev.devstack import BrokerProcess
from tests.contract.test_window_store import state_at
from tests.support.kafka_topics import produce
from tests.support.outcomes import expected_outcome, stored_blobs
from tests.support.redis_servers import WORKER_USER, TlsRedis
from tests.support.tiny_model import TinyModel, fleet, live_messages, load_tiny_scorer
from tests.support.waiting import wait_until
from tests.support.worker_process import env_of, running_worker, settings_of, worker_config

pytestmark = pytest.mark.integration


def tls_settings(tls: TlsRedis, password: str | None = None) -> dict[str, Any]:
    """The worker's Redis settings for the TLS server, as its ACL user."""
    return {
        "redis_url": tls.url,
        "redis_username": WORKER_USER,
        "redis_password": password if password is not None else tls.worker_password,
        "redis_ssl_ca_file": str(tls.ca),
        "redis_ssl_cert_file": str(tls.client_cert),
        "redis_ssl_key_file": str(tls.client_key),
    }


def test_the_store_works_over_tls_within_the_acl(redis_tls: TlsRedis) -> None:
    client = connect_redis(Settings(**tls_settings(redis_tls)))
    try:
        store = RedisWindowStore(client, 4, 2, prefix="sae")
        assert store.save({"a": state_at(10)}) == {"a": True}  # the Lua fence is allowed
        assert store.save({"a": state_at(9)}) == {"a": False}
        loaded = store.load(["a"])["a"]
        assert loaded is not None and loaded.offset == 10
        guard = StateGuard.of_store(store, "w")
        guard.record({("metrics", 0): 11}, {"a": state_at(10)})
        assert guard.check({("metrics", 0): 11}) == []
        assert check_server(client) == []  # INFO is granted; AOF is on
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("another-app:key", b"x")  # outside the prefix
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushall()  # dangerous
    finally:
        client.close()


def test_a_plaintext_connection_or_no_client_certificate_is_refused(redis_tls: TlsRedis) -> None:
    plain = redis.Redis(host="127.0.0.1", port=redis_tls.server.port, socket_timeout=3)
    with pytest.raises(redis.exceptions.ConnectionError):
        plain.ping()
    no_cert = {**tls_settings(redis_tls), "redis_ssl_cert_file": None, "redis_ssl_key_file": None}
    with pytest.raises(StoreError, match="Redis unavailable"):
        connect_redis(Settings(**no_cert))


def test_tls_files_without_a_rediss_url_are_a_config_error(redis_tls: TlsRedis) -> None:
    plain_url = {**tls_settings(redis_tls), "redis_url": "redis://127.0.0.1:1/0"}
    with pytest.raises(ConfigError, match="not a rediss:// URL"):
        connect_redis(Settings(**plain_url))


def test_a_wrong_password_is_one_line_without_the_password(redis_tls: TlsRedis) -> None:
    with pytest.raises(ConfigError) as caught:
        connect_redis(Settings(**tls_settings(redis_tls, password="Wr0ng-Pass-42")))
    message = str(caught.value)
    assert message == (
        "Redis refused the login of user 'sae-worker': "
        "invalid username-password pair or user is disabled."
    )
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_the_worker_runs_over_tls_as_the_acl_user(
    redis_tls: TlsRedis,
    broker: BrokerProcess,
    topic_factory: Callable[..., str],
    tiny_model: TinyModel,
) -> None:
    topics = {
        "input_topic": topic_factory(1, prefix="in"),
        "alerts_topic": topic_factory(1, prefix="alerts"),
        "dlq_topic": topic_factory(1, prefix="dlq"),
    }
    config = worker_config(
        bootstrap_servers=broker.bootstrap_servers,
        model=tiny_model,
        **topics,
        **tls_settings(redis_tls),
    )
    config["redis_key_prefix"] = "sae-" + config["redis_key_prefix"]  # inside the ACL
    settings = settings_of(config)
    messages = list(live_messages(fleet()))[:600]
    sent = produce(broker.bootstrap_servers, topics["input_topic"], messages)
    with running_worker(settings) as worker:
        wait_until(lambda: worker.totals.applied >= len(sent), 120, "every event applied")
    expected = expected_outcome(sent, settings, load_tiny_scorer(tiny_model))
    assert stored_blobs(redis_tls.admin(), settings.redis_key_prefix) == expected.blobs


@pytest.mark.slow
def test_stream_ae_worker_with_a_wrong_password_stops_with_one_line(
    redis_tls: TlsRedis, tiny_model: TinyModel, tmp_path: Path
) -> None:
    password = "Wr0ng-Pass-42"
    config = {
        **tls_settings(redis_tls, password=password),
        "model_path": str(tiny_model.path),
        "metrics_port": 0,
        "log_format": "text",
        "batch_buckets": [16],
    }
    result = subprocess.run(
        [sys.executable, "-m", "stream_ae", "worker"],
        env=env_of(config),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    errors = [line for line in output.splitlines() if "refused the login" in line]
    assert len(errors) == 1, output
    assert "sae-worker" in errors[0] and "invalid username-password pair" in errors[0]
    assert "Traceback" not in output and password not in output
    assert redis_tls.worker_password not in output and redis_tls.admin_password not in output


def test_a_refused_login_is_not_retried(redis_tls: TlsRedis) -> None:
    """retry_until_up (start-up) re-raises it at once instead of waiting forever."""
    from stream_ae.worker.bootstrap import retry_until_up

    settings = Settings(**tls_settings(redis_tls, password="nope"))
    calls = []

    def connect() -> Any:
        calls.append(1)
        return connect_redis(settings)

    with pytest.raises(ConfigError):
        retry_until_up("Redis", connect, settings)
    assert len(calls) == 1
