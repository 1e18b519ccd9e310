"""Real ``redis-server`` processes for the Redis fault, cluster and TLS tests.

Fixtures (import them into a test module, e.g.
``from tests.support.redis_servers import redis_factory``):

``redis_factory`` (function)
    ``make(**config) -> RedisServer``: a ``redis-server`` on a free port in its own temporary
    directory, with AOF on unless ``config`` says otherwise (config keys are redis.conf
    directives, underscores for dashes). Every server made is stopped at the end of the test.
``redis_cluster`` (session)
    A :class:`RedisClusterServers`: three masters (``cluster-enabled yes``) joined with
    ``redis-cli --cluster create``, slots 0-16383 covered; ``url`` is one node's address.
``redis_tls`` (session)
    A :class:`TlsRedis`: a TLS-only ``redis-server`` (client certificates required) with a test
    CA made by ``openssl``, an ``admin`` user and a ``sae-worker`` user limited to the
    ``sae*`` keys and the model channel.

Servers use ``redis-server`` from PATH (Debian's supports TLS and cluster); the machine's own
Redis on 6379 is never touched.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from stream_ae_dev.devstack import find_free_port

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0


def redis_binary(name: str = "redis-server") -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH (apt-get install redis-server)", pytrace=False)
    return path


class RedisServer:
    """One ``redis-server`` child process with a redis.conf in ``run_dir``.

    It can be killed (``kill -9``), restarted on the same port and data directory, and paused
    (SIGSTOP/SIGCONT). ``client_options`` are what a client needs to connect (TLS, user).
    """

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        *,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.port = int(config.get("port") or find_free_port())
        self.config = {
            "port": self.port,
            "bind": HOST,
            "dir": str(run_dir),
            "daemonize": "no",
            "protected-mode": "no",
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": '""',
            "logfile": str(run_dir / "redis.log"),
            **{key.replace("_", "-"): value for key, value in config.items()},
        }
        self.client_options = client_options or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.client_options.get("ssl") else "redis"
        return f"{scheme}://{HOST}:{self.port}/0"

    def start(self) -> RedisServer:
        conf = self.run_dir / "redis.conf"
        conf.write_text(
            "".join(
                f"{key} {value}\n"
                for key, value in self.config.items()
                if not isinstance(value, list)
            )
            + "".join(
                f"{key} {line}\n"
                for key, value in self.config.items()
                if isinstance(value, list)
                for line in value
            )
        )
        self.process = subprocess.Popen(
            [redis_binary(), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited early:\n{self.log_tail()}")
            with contextlib.suppress(redis.exceptions.ConnectionError, OSError):
                client = self.client()
                try:
                    if client.ping():
                        return self
                except redis.exceptions.BusyLoadingError:
                    pass
                finally:
                    client.close()
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not answer:\n{self.log_tail()}")
            time.sleep(0.05)

    def client(self, **options: Any) -> redis.Redis:
        """A client as the server's admin (replies are bytes)."""
        return redis.Redis(
            host=HOST, port=self.port, socket_timeout=5, **{**self.client_options, **options}
        )

    def kill(self) -> None:
        """``kill -9``: no shutdown save, no AOF rewrite."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """Make sure the server is gone (resumed first if paused)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.run_dir / "redis.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``make(**config)``: start a redis-server (AOF on by default) for this test."""
    servers: list[RedisServer] = []

    def make(**config: Any) -> RedisServer:
        run_dir = tmp_path / f"redis-{len(servers)}"
        run_dir.mkdir()
        server = RedisServer(run_dir, config)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


# --------------------------------------------------------------------------------------------
# Redis Cluster
# --------------------------------------------------------------------------------------------


@dataclass
class RedisClusterServers:
    """Three cluster masters; ``url`` reaches the cluster through the first."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def client(self) -> Any:
        from redis.cluster import RedisCluster

        return RedisCluster(host=HOST, port=self.nodes[0].port, socket_timeout=5)


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so at most 55535)."""
    for _ in range(200):
        port = random.randint(20_000, 50_000)
        if all(_bindable(p) for p in (port, port + 10_000)):
            return port
    raise AssertionError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def start_cluster(base_dir: Path, masters: int = 3) -> RedisClusterServers:
    nodes = []
    for i in range(masters):
        run_dir = base_dir / f"node-{i}"
        run_dir.mkdir(parents=True)
        nodes.append(
            RedisServer(
                run_dir,
                {
                    "port": _cluster_port(),
                    "cluster-enabled": "yes",
                    "cluster-config-file": "nodes.conf",
                    "cluster-node-timeout": 2000,
                    "appendonly": "yes",
                },
            )
        )
    try:
        for node in nodes:
            node.start()
        subprocess.run(
            [
                redis_binary("redis-cli"),
                "--cluster",
                "create",
                *(f"{HOST}:{node.port}" for node in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while not all(_cluster_ok(node) for node in nodes):
            if time.monotonic() > deadline:
                raise AssertionError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.2)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return RedisClusterServers(nodes)


def _cluster_ok(node: RedisServer) -> bool:
    client = node.client()
    try:
        info = client.execute_command("CLUSTER INFO")
    finally:
        client.close()
    if isinstance(info, dict):
        return str(info.get("cluster_state")) == "ok"
    return b"cluster_state:ok" in info


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A real 3-master Redis Cluster for the session."""
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        for node in cluster.nodes:
            node.stop()


# --------------------------------------------------------------------------------------------
# TLS and ACL
# --------------------------------------------------------------------------------------------

WORKER_USER = "sae-worker"
ADMIN_USER = "admin"


@dataclass
class TlsRedis:
    """A TLS-only Redis with ACL users; certificate paths for the client side."""

    server: RedisServer
    ca: Path
    client_cert: Path
    client_key: Path
    worker_password: str
    admin_password: str

    @property
    def url(self) -> str:
        return self.server.url

    def admin(self) -> redis.Redis:
        return self.server.client()


def make_certificates(directory: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1/localhost and a client certificate,
    made with the ``openssl`` command line."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not on PATH", pytrace=False)

    def run(command: str) -> None:
        # The arguments hold no spaces: split on whitespace.
        subprocess.run([openssl, *command.split()], cwd=directory, check=True, capture_output=True)

    run(
        "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=sae-test-ca -keyout ca.key -out ca.crt"
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run(
            f"req -newkey rsa:2048 -nodes -subj /CN=sae-test-{name} "
            f"-keyout {name}.key -out {name}.csr"
        )
        run(
            f"x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
            f"-extfile san.ext -out {name}.crt"
        )
    return {
        name: directory / name
        for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    }


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A TLS-only redis-server (mutual TLS) whose worker user may touch only ``sae*`` keys."""
    run_dir = tmp_path_factory.mktemp("redis-tls")
    certs = make_certificates(run_dir)
    worker_password, admin_password = "w0rker-Secret-91", "adm1n-Secret-17"
    port = find_free_port()
    server = RedisServer(
        run_dir,
        {
            "port": 0,
            "tls-port": port,
            "tls-ca-cert-file": certs["ca.crt"],
            "tls-cert-file": certs["server.crt"],
            "tls-key-file": certs["server.key"],
            "tls-auth-clients": "yes",
            "user": [
                "default off",
                f"{ADMIN_USER} on >{admin_password} ~* &* +@all",
                # The worker: its prefix only, the model channel, no dangerous commands
                # (INFO allowed: the start-up check reads the eviction policy with it).
                f"{WORKER_USER} on >{worker_password} resetchannels ~sae* &stream-ae.models "
                "+@all -@dangerous +info",
            ],
        },
        client_options={
            "ssl": True,
            "ssl_ca_certs": str(certs["ca.crt"]),
            "ssl_certfile": str(certs["client.crt"]),
            "ssl_keyfile": str(certs["client.key"]),
            "username": ADMIN_USER,
            "password": admin_password,
        },
    )
    server.port = port
    server.start()
    try:
        yield TlsRedis(
            server,
            certs["ca.crt"],
            certs["client.crt"],
            certs["client.key"],
            worker_password,
            admin_password,
        )
    finally:
        server.stop()
