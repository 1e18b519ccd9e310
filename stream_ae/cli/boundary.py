"""The error boundary of every command: an error becomes one line on stderr and an exit status.

A command-line user who mistypes a setting, points at a broker that is down or passes a bad
file needs one line saying what is wrong and how to fix it, not a traceback. Exit statuses:

- ``2``: what the user gave is wrong (a setting, an argument, a missing file): fix it;
- ``1``: what the command needs is not there or not usable (a broker, Redis, a model
  artifact or registry version), or a bug;
- ``130``: interrupted (Ctrl-C).

The traceback is still printed, before the line, when debugging (``--log-level DEBUG`` or
``STREAM_AE_LOG_LEVEL=DEBUG``).

Client libraries' exceptions (kafka-python, confluent-kafka, redis) are recognised by their
module, so this shell does not import the clients (see the import contracts).

>>> from stream_ae.errors import ConfigError
>>> line, status = describe_error(ConfigError("invalid settings: stride: must be >= 1"))
>>> line.split("; ")[1], status
('fix the STREAM_AE_* variable, .env line or option named above', 2)
>>> describe_error(FileNotFoundError(2, "No such file or directory", "cpu.csv"))
('cpu.csv: no such file or directory; check the path', 2)
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import traceback
from collections.abc import Callable

from stream_ae.errors import (
    ArtifactError,
    BrokerError,
    ConfigError,
    StoreError,
    StreamAEError,
)
from stream_ae.logs import mask_urls

BAD_INPUT = 2
UNAVAILABLE = 1
INTERRUPTED = 130

BROKER_FIX = (
    "is the broker up and reachable? check STREAM_AE_BOOTSTRAP_SERVERS (or --bootstrap-servers)"
)
REDIS_FIX = "is Redis up and reachable? check STREAM_AE_REDIS_URL (or --redis-url)"
CONFIG_FIX = "fix the STREAM_AE_* variable, .env line or option named above"


def describe_error(exc: BaseException) -> tuple[str, int]:
    """The one line (problem; fix) and the exit status that ``exc`` ends a command with."""
    # One line, whatever the library put in it, ready for "; the fix".
    message = " ".join(str(exc).split()).rstrip(".")
    if isinstance(exc, ConfigError):
        fixed = bool(exc.fix) or "did you mean" in message or "write e.g." in message
        return (message if fixed else f"{message}; {CONFIG_FIX}"), BAD_INPUT
    if isinstance(exc, BrokerError):
        return f"{message}; {BROKER_FIX}", BAD_INPUT if not exc.retriable else UNAVAILABLE
    if isinstance(exc, StoreError):
        return f"{message}; {REDIS_FIX}", UNAVAILABLE
    if isinstance(exc, ArtifactError):
        # Its messages name the file or version and what is wrong with it ("no manifest.json
        # (not an artifact, or incomplete)", "no earlier champion to roll back to").
        return message, UNAVAILABLE
    if isinstance(exc, StreamAEError):  # a schema error, or one without a known fix
        return message, BAD_INPUT
    library = type(exc).__module__.split(".")[0]
    if library == "redis":
        return f"Redis: {type(exc).__name__}: {message}; {REDIS_FIX}", UNAVAILABLE
    if library in ("kafka", "confluent_kafka"):
        return f"Kafka: {type(exc).__name__}: {message}; {BROKER_FIX}", UNAVAILABLE
    if isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        what = exc.strerror.lower() if exc.strerror else type(exc).__name__
        return f"{exc.filename}: {what}; check the path", BAD_INPUT
    if isinstance(exc, PermissionError):
        return f"{exc.filename}: permission denied; check the file's permissions", BAD_INPUT
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {message}", UNAVAILABLE
    if isinstance(exc, ValueError):
        return message, UNAVAILABLE
    return (
        f"unexpected {type(exc).__name__}: {message} (a bug? rerun with --log-level DEBUG for "
        "the traceback and report it)",
        UNAVAILABLE,
    )


def debugging(argv: list[str] | None = None) -> bool:
    """Whether the user asked for debugging: ``STREAM_AE_LOG_LEVEL=DEBUG`` or
    ``--log-level DEBUG`` among the arguments."""
    if os.environ.get("STREAM_AE_LOG_LEVEL", "").upper() == "DEBUG":
        return True
    args = list(sys.argv[1:] if argv is None else argv)
    return any(
        a.upper() == "--LOG-LEVEL=DEBUG" or (a == "--log-level" and nxt.upper() == "DEBUG")
        for a, nxt in itertools.pairwise([*args, ""])
    )


def run_command(
    prog: str,
    run: Callable[[argparse.Namespace], int | None],
    args: argparse.Namespace,
    *,
    debug: bool = False,
) -> int:
    """Run ``run(args)``; an error leaves as one line ``PROG: error: ...`` on stderr and its
    exit status (the traceback first when ``debug``)."""
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        return INTERRUPTED
    except Exception as exc:
        if debug:
            traceback.print_exc()
        line, status = describe_error(exc)
        print(f"{prog}: error: {mask_urls(line)}", file=sys.stderr, flush=True)
        return status
