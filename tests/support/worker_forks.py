"""Worker subprocesses forked from a warm parent: restarts that do not import TensorFlow again.

A ``python -m stream_ae worker`` spends most of its start importing TensorFlow (about 4 of the
5 CPU seconds it takes to get ready on the tiny model, here). A test that restarts a worker
twenty times would spend most of its time there. :class:`WorkerForks` starts one helper process
(``python -m tests.support.worker_forks``) that imports the worker's modules, Keras and
TensorFlow once and runs nothing of them (no model, no tensor: TensorFlow's runtime and its
threads start in the children only), then forks a worker on request. The child sets the
worker's environment, sends its output to its log file and runs ``stream-ae worker`` as
``python -m stream_ae worker`` does (:func:`stream_ae.cli.app.main` with ``sys.argv``), so it
loads and warms its model, connects and joins the group like any worker.

:class:`ForkedWorker` is a :class:`~tests.support.worker_process.WorkerProcess` started that way:
``kill()`` is a real ``kill -9`` of the worker's process, ``wait_ready``, ``get``, ``terminate``
and the return codes are the same.

The helper reaps its children, so their pids are not reused while a test holds them, and kills
the ones still running when the test closes it (or dies: the helper exits at the end of its
input).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from stream_ae_dev.worker_probe import wait_ready
from tests.support.paths import REPO_ROOT
from tests.support.worker_process import WORKER_START_TIMEOUT_S, WorkerProcess, env_of

READY = "ready"


class WorkerForks:
    """The helper that forks workers; a context manager (closing it kills what still runs)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._helper: subprocess.Popen[str] | None = None
        self._ready = False

    def __enter__(self) -> WorkerForks:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> WorkerForks:
        env = env_of({})
        with self.log_path.open("ab") as log:
            self._helper = subprocess.Popen(
                [sys.executable, "-m", "tests.support.worker_forks"],
                env=env,
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
            )
        self._ready = False  # its imports go on while the caller does other things
        return self

    def spawn(self, config: Mapping[str, Any], log_path: Path) -> ForkedChild:
        """Fork a worker with the settings ``config`` (as :func:`env_of` gives them)."""
        reply = self._ask({"op": "spawn", "env": env_of(config), "log": str(log_path)})
        return ForkedChild(self, int(reply["pid"]))

    def status(self, pid: int, timeout_s: float = 0.0) -> int | None:
        """The child's return code (Popen's convention), waiting up to ``timeout_s``; None
        while it runs."""
        reply = self._ask({"op": "wait", "pid": pid, "timeout": timeout_s})
        return None if reply["status"] is None else int(reply["status"])

    def close(self) -> None:
        helper, self._helper = self._helper, None
        if helper is None:
            return
        assert helper.stdin is not None
        helper.stdin.close()  # the helper kills and reaps its children, then exits
        try:
            helper.wait(timeout=30)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait()
        if helper.stdout is not None:
            helper.stdout.close()

    def tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        helper = self._helper
        assert helper is not None and helper.stdin is not None, "the fork helper is not running"
        if not self._ready:
            line = self._read()
            if line != READY:
                raise AssertionError(f"the fork helper did not start: {line!r}\n{self.tail()}")
            self._ready = True
        helper.stdin.write(json.dumps(request) + "\n")
        helper.stdin.flush()
        reply: dict[str, Any] = json.loads(self._read())
        return reply

    def _read(self) -> str:
        helper = self._helper
        assert helper is not None and helper.stdout is not None
        line = helper.stdout.readline()
        if not line:
            raise AssertionError(f"the fork helper exited ({helper.poll()})\n{self.tail()}")
        return line.strip()


class ForkedChild:
    """The part of :class:`subprocess.Popen` a :class:`WorkerProcess` uses, for a forked
    worker (the helper is its parent and reaps it)."""

    def __init__(self, forks: WorkerForks, pid: int) -> None:
        self.forks = forks
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.forks.status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = 60.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            self.returncode = self.forks.status(self.pid, min(left, 1.0))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped yet: the pid is still this worker's
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkedWorker(WorkerProcess):
    """A :class:`WorkerProcess` forked by ``forks`` instead of started from scratch."""

    def __init__(self, forks: WorkerForks, config: Mapping[str, Any], log_path: Path) -> None:
        super().__init__(config, log_path)
        self.forks = forks

    def start(self) -> ForkedWorker:
        self.process = self.forks.spawn(self.config, self.log_path)  # type: ignore[assignment]
        return self

    def wait_ready(
        self, timeout_s: float = WORKER_START_TIMEOUT_S, *, interval_s: float = 0.2
    ) -> None:
        """Until ``/readyz`` says 200, looking every ``interval_s``."""
        assert self.process is not None
        wait_ready(
            self.port,
            self.process,  # type: ignore[arg-type]
            timeout_s=timeout_s,
            log_path=self.log_path,
            interval_s=interval_s,
        )


# --- the helper process -------------------------------------------------------------------


def _run_child(env: Mapping[str, str], log_path: str) -> None:
    """In the forked child: become ``stream-ae worker`` with ``env``; never returns."""
    rc = 1
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = ["stream-ae", "worker"]
        from stream_ae.cli.app import main

        rc = main()
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(rc)


def _helper(stdin: IO[str], stdout: IO[str]) -> None:
    # What a worker imports before it loads its model: the slow part of its start.
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import stream_ae.cli.app
    import stream_ae.cli.worker
    import stream_ae.worker.bootstrap

    del stream_ae
    children: dict[int, int | None] = {}

    def reap(pid: int, block_s: float) -> int | None:
        deadline = time.monotonic() + block_s
        while children.get(pid) is None:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children[pid] = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        return children.get(pid)

    stdout.write(READY + "\n")
    stdout.flush()
    for line in stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            stdout.flush()
            pid = os.fork()
            if pid == 0:
                _run_child(request["env"], request["log"])
            children[pid] = None
            reply: dict[str, Any] = {"pid": pid}
        else:  # "wait"
            reply = {"status": reap(int(request["pid"]), float(request["timeout"]))}
        stdout.write(json.dumps(reply) + "\n")
        stdout.flush()
    # The test closed our input (or died): no worker outlives it.
    for pid, status in children.items():
        if status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            reap(pid, 10.0)


if __name__ == "__main__":
    _helper(sys.stdin, sys.stdout)
