"""Errors no retry can fix end the worker's start-up at once, with one clear line, instead of
a retry loop that never ends; a Redis that is merely away is still waited for.

- a wrong Redis password (``WRONGPASS``) and an ACL user without the right to load scripts
  (``NOPERM`` from the fenced-write script's ``SCRIPT LOAD``) are non-retriable
  :class:`StoreError` s, raised by ``build_worker``;
- the same call against a closed port keeps retrying (retriable) until stopped;
- a registry folder that does not exist stops ``stream-ae worker`` at once (exit 2, one line
  naming ``STREAM_AE_MODEL_PATH`` and how to create the registry); an existing registry with no
  champion yet is waited for, alive (``/healthz`` 200) and not ready (``/readyz`` says why),
  up to ``STREAM_AE_MODEL_WAIT_S`` (then exit 1, one line), or until a champion is published.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from stream_ae.errors import ConfigError, StoreError
from stream_ae.io.window_store import RedisWindowStore
from stream_ae.settings import Settings
from stream_ae.worker.bootstrap import build_worker, retry_until_up
from stream_ae_dev.devstack import BrokerProcess, RedisProcess, find_free_port
from tests.support.hotswap_models import NAME, publish
from tests.support.tiny_model import TinyModel
from tests.support.waiting import wait_until
from tests.support.worker_process import WorkerProcess, env_of, settings_of, worker_config
from training.registry import Registry

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


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error" in line.lower()]


@pytest.mark.parametrize("what", ["missing", "a file"])
def test_a_registry_folder_that_does_not_exist_stops_the_worker_at_once(
    tmp_path: Path, what: str
) -> None:
    registry = tmp_path / "registry"
    if what == "a file":
        registry.write_text("not a folder\n")
    config = {"model_path": str(registry), "metrics_port": 0, "log_format": "text"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "stream_ae", "worker"],
        env=env_of(config),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    took_s = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 2, output  # as an invalid setting is
    assert output.strip().count("\n") == 0, output  # one line, nothing else
    line = output.strip()
    assert line.startswith("stream-ae worker: error: STREAM_AE_MODEL_PATH"), line
    assert str(registry) in line and "Traceback" not in output
    assert f"stream-ae-train train --csv FILE --registry {registry}" in line
    assert ("is not a folder" if what == "a file" else "does not exist") in line
    # At once: no TensorFlow import, no wait (the bound is generous, for a loaded machine).
    assert took_s < 60, took_s


def test_an_empty_registry_is_waited_for_up_to_model_wait_s_then_the_worker_exits_1(
    tmp_path: Path,
) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    wait_s = 8
    config = {
        "model_path": str(registry),
        "model_name": "cpu",
        "model_wait_s": wait_s,
        "model_poll_interval_s": 1.0,
        "metrics_host": "127.0.0.1",
        "log_format": "text",
    }
    worker = WorkerProcess(config, tmp_path / "worker.log")
    started = time.monotonic()
    worker.start()
    try:
        wait_until(
            lambda: "waiting for a usable model" in worker.get("/readyz")[1],
            60,
            "/readyz to say that the worker waits for a model",
            on_timeout=worker.tail,
        )
        status, body = worker.get("/readyz")
        assert status == 503 and "cpu/CHAMPION" in body, body
        assert worker.get("/healthz")[0] == 200  # alive while it waits
        assert worker.returncode is None
        returncode = worker.wait(120)
    finally:
        worker.stop()
    took_s = time.monotonic() - started
    output = worker.tail(20_000)
    assert returncode == 1, output
    assert took_s >= wait_s, took_s  # not before the bound
    final = [line for line in output.splitlines() if "cannot start" in line]
    assert len(final) == 1, output
    assert f"no usable model after {wait_s} s (STREAM_AE_MODEL_WAIT_S" in final[0]
    assert "cpu/CHAMPION" in final[0] and "Traceback" not in output


def test_a_worker_waiting_on_an_empty_registry_starts_when_a_champion_is_published(
    tmp_path: Path,
    broker: BrokerProcess,
    redis_server: RedisProcess,
    topic_factory: Callable[..., str],
    tiny_model: TinyModel,
) -> None:
    registry = Registry(tmp_path / "registry")
    (tmp_path / "registry").mkdir()
    config = worker_config(
        bootstrap_servers=broker.bootstrap_servers,
        redis_url=redis_server.url,
        model=tiny_model,
        input_topic=topic_factory(1, prefix="in"),
        alerts_topic=topic_factory(1, prefix="alerts"),
        dlq_topic=topic_factory(1, prefix="dlq"),
        model_path=str(registry.root),
        model_name=NAME,
        model_wait_s=0,  # forever
        model_poll_interval_s=1.0,
        resolve_after_windows=7,  # the operator's; the rest of the policy is built in
        log_format="json",
    )
    worker = WorkerProcess(config, tmp_path / "worker.log").start()
    try:
        wait_until(
            lambda: f"{NAME}/CHAMPION" in worker.get("/readyz")[1],
            60,
            "/readyz to name the missing champion",
            on_timeout=worker.tail,
        )
        assert worker.get("/healthz")[0] == 200
        publish(registry)
        worker.wait_ready()
        assert worker.get("/readyz") == (200, "ready\n")
    finally:
        worker.stop()
    assert worker.returncode == 0, worker.tail()
    # Its start names the rules its alerts follow: the operator's over the detector's (this
    # artifact sets none), the built-in ones for the rest.
    running = [
        entry
        for line in worker.tail(200_000).splitlines()
        if line.startswith("{") and (entry := json.loads(line)).get("msg") == "running"
    ]
    assert len(running) == 1, worker.tail()
    assert running[0]["alert_policy"] == {
        "resolve_ratio": 0.9,
        "open_after": 1,
        "resolve_after": 7,
        "cooldown": 0,
    }
