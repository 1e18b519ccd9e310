"""Every command ends an error with one line on stderr naming the problem and the fix, exit
status 1 or 2, and no traceback unless debugging (issue 16, item 4).

Each row runs the real command line as a subprocess (the path a user takes: the error
boundary, the native-noise filter, the logging set-up). The rows run a few at a time, and none
loads TensorFlow: each error comes before any model is needed. An unreachable broker or Redis
is a local port nothing listens on; the timeout of each run is under the Kafka clients' own
30 s, so a command that waits for them fails the row.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stream_ae.logs import NATIVE_NOISE, ConnectionChatter

STREAM_AE = (sys.executable, "-m", "stream_ae.cli.app")
TRAIN = (sys.executable, "-m", "training")
# Well under kafka-python's and librdkafka's 30 s bootstrap wait; the tools give up after 5 s.
ROW_TIMEOUT_S = 25.0
BROKER_FIX = r"is the broker up and reachable\? check STREAM_AE_BOOTSTRAP_SERVERS"
REDIS_FIX = r"is Redis up and reachable\? check STREAM_AE_REDIS_URL"


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Row:
    name: str
    argv: tuple[str, ...]
    status: int
    line: str  # a regex the one stderr line must match (re.search)
    env: Mapping[str, str] = field(default_factory=dict)


def rows(data: Path) -> list[Row]:
    down = f"127.0.0.1:{closed_port()}"
    broker_down = {"STREAM_AE_BOOTSTRAP_SERVERS": down}
    redis_down = {"STREAM_AE_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}
    no_port = {"STREAM_AE_BOOTSTRAP_SERVERS": "localhost9092"}
    not_a_number = {"STREAM_AE_MAX_POLL_RECORDS": "abc"}
    typo = {"STREAM_AE_BOOTSTRAP_SERVER": "x"}
    missing = str(data / "missing.csv")
    garbled = str(data / "garbled.csv")
    synthetic = ("produce", "--synthetic", "1", "--steps", "5")
    return [
        Row(
            "worker: a broker address without a port",
            (*STREAM_AE, "worker"),
            2,
            r"^stream-ae worker: error: invalid settings: bootstrap_servers: not a host:port "
            r"list; write e\.g\. localhost:9092.*\(got 'localhost9092'\)$",
            no_port,
        ),
        Row(
            "worker: a setting that is not a number",
            (*STREAM_AE, "worker"),
            2,
            r"^stream-ae worker: error: invalid settings: max_poll_records: .*integer.*"
            r"\(got 'abc'\); fix the STREAM_AE_\* variable",
            not_a_number,
        ),
        Row(
            "produce: a mistyped variable",
            (*STREAM_AE, *synthetic),
            2,
            r"^stream-ae produce: error: unknown setting\(s\) in the environment: "
            r"STREAM_AE_BOOTSTRAP_SERVER \(did you mean STREAM_AE_BOOTSTRAP_SERVERS\?\)$",
            typo,
        ),
        Row(
            "produce: an unreachable broker",
            (*STREAM_AE, *synthetic),
            1,
            rf"^stream-ae produce: error: .*{re.escape(down)}.*; {BROKER_FIX}",
            broker_down,
        ),
        Row(
            "produce: a missing CSV",
            (*STREAM_AE, "produce", "--csv", missing),
            2,
            rf"^stream-ae produce: error: cannot read {re.escape(missing)}: No such file",
            broker_down,
        ),
        Row(
            "produce: a CSV without a time column",
            (*STREAM_AE, "produce", "--csv", garbled),
            2,
            r"^stream-ae produce: error: .*garbled\.csv: no time column .* --time-column$",
            broker_down,
        ),
        Row(
            "alerts: an unreachable broker",
            (*STREAM_AE, "alerts", "--idle-timeout", "3"),
            1,
            rf"^stream-ae alerts: error: .*{re.escape(down)}: no broker answered; {BROKER_FIX}",
            broker_down,
        ),
        Row(
            "model status: an unreachable Redis",
            (*STREAM_AE, "model", "status"),
            1,
            rf"^stream-ae model status: error: cannot read redis://127\.0\.0\.1:\d+/0: "
            rf".*refused; {REDIS_FIX}",
            redis_down,
        ),
        Row(
            "model status: a mistyped variable",
            (*STREAM_AE, "model", "status"),
            2,
            r"^stream-ae model status: error: .*did you mean STREAM_AE_BOOTSTRAP_SERVERS\?",
            typo,
        ),
        Row(
            "model show: no artifact there",
            (*STREAM_AE, "model", "show", str(data / "nothing")),
            1,
            r"^stream-ae model show: .*nothing is neither an artifact nor a registry",
        ),
        Row(
            "evaluate score: a garbled windows file",
            (
                *STREAM_AE,
                "evaluate",
                "score",
                str(data),
                "--windows",
                garbled,
                "--profiles",
                garbled,
            ),
            2,
            r"^error: cannot read windows file .*garbled\.csv",
        ),
        Row(
            "evaluate nab: no NAB data there",
            (*STREAM_AE, "evaluate", "nab", str(data / "nothing"), "--out", str(data / "o")),
            2,
            r"^error: no combined_windows\.json in .*; pass --windows$",
        ),
        Row(
            "dev-stack status: no stack recorded",
            (*STREAM_AE, "dev-stack", "status", "--run-dir", str(data / "nothing")),
            1,
            r"^stream-ae dev-stack: error: no dev stack in .*; start one: "
            r"stream-ae dev-stack up --run-dir ",
        ),
        Row(
            "train: a missing CSV",
            (*TRAIN, "train", "--csv", missing, "--out", str(data / "o")),
            2,
            rf"^stream-ae-train train: error: cannot read {re.escape(missing)}",
        ),
        Row(
            "train: a mistyped variable, before any training",
            (*TRAIN, "train", "--csv", garbled, "--out", str(data / "o")),
            2,
            r"^stream-ae-train train: error: .*did you mean STREAM_AE_BOOTSTRAP_SERVERS\?",
            typo,
        ),
        Row(
            "publish: not an artifact",
            (*TRAIN, "publish", str(data), "--registry", str(data / "registry")),
            1,
            r"^stream-ae-train publish: error: .*no manifest\.json \(not an artifact",
        ),
        Row(
            "promote: no such version",
            (*TRAIN, "promote", "v1", "--registry", str(data / "registry"), "--name", "m"),
            1,
            r"^stream-ae-train promote: error: m: no published version 'v1'",
        ),
        Row(
            "list: a setting that is not a number",
            (*TRAIN, "list"),
            2,
            r"^stream-ae-train list: error: invalid settings: max_poll_records: .*\(got 'abc'\)",
            not_a_number,
        ),
        Row(
            "refit --once: a broker address without a port",
            (*TRAIN, "refit", "--once", "--registry", str(data / "registry"), "--name", "m"),
            2,
            r"^stream-ae-train refit: error: invalid settings: bootstrap_servers: not a host:port",
            no_port,
        ),
        Row(
            "refit --once: an unreachable broker",
            (*TRAIN, "refit", "--once", "--registry", str(data / "registry"), "--name", "m"),
            1,
            rf"^stream-ae-train refit: error: .*{re.escape(down)}: no broker answered; "
            rf"{BROKER_FIX}",
            broker_down,
        ),
    ]


@dataclass(frozen=True)
class Outcome:
    status: int | None  # None: still running at ROW_TIMEOUT_S
    lines: list[str]


def run_row(row: Row, cwd: Path) -> Outcome:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_AE_")}
    env.update(row.env)
    try:
        done = subprocess.run(
            row.argv, env=env, cwd=cwd, capture_output=True, timeout=ROW_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr or b""
        return Outcome(None, stderr.decode(errors="replace").splitlines())
    lines = [
        line.decode(errors="replace")
        for line in done.stderr.splitlines()
        if line.strip() and not NATIVE_NOISE.search(line)
    ]
    return Outcome(done.returncode, lines)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Row, Outcome]]:
    data = tmp_path_factory.mktemp("cli-errors")
    (data / "garbled.csv").write_bytes(b"\x00\x01garbage;;;\nnot,a\x00csv\n")
    table = rows(data)
    # A few at a time: each row is mostly Python start-up, and the machine is shared.
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda row: run_row(row, data), table))
    return {row.name: (row, outcome) for row, outcome in zip(table, results, strict=True)}


@pytest.mark.parametrize("name", [row.name for row in rows(Path("/unused"))])
def test_an_error_is_one_line_naming_the_problem_and_the_fix(
    name: str, outcomes: dict[str, tuple[Row, Outcome]]
) -> None:
    row, outcome = outcomes[name]
    shown = "\n".join(outcome.lines)
    assert outcome.status is not None, f"still running after {ROW_TIMEOUT_S} s:\n{shown}"
    assert not any("Traceback" in line for line in outcome.lines), shown
    assert len(outcome.lines) == 1, shown
    assert outcome.status == row.status, shown
    assert re.search(row.line, outcome.lines[0]), shown


def test_debugging_shows_the_traceback_before_the_line(tmp_path: Path) -> None:
    row = Row(
        "produce at DEBUG",
        (*STREAM_AE, "--log-level", "DEBUG", "produce", "--synthetic", "1"),
        2,
        r"^stream-ae produce: error: .*did you mean",
        {"STREAM_AE_BOOTSTRAP_SERVER": "x"},
    )
    outcome = run_row(row, tmp_path)
    assert outcome.status == 2
    assert outcome.lines[0].startswith("Traceback")
    assert re.search(row.line, outcome.lines[-1])


def test_the_kafka_clients_connection_chatter_is_rate_limited() -> None:
    def record(logger: str, message: str) -> logging.LogRecord:
        return logging.LogRecord(logger, logging.ERROR, __file__, 1, message, None, None)

    chatter = ConnectionChatter(interval_s=0.2)
    refused = record(
        "kafka.net.manager", "Connection failed: KafkaConnectionError: 111 ECONNREFUSED"
    )
    # Within the first interval: none (the caller reports the failure itself).
    assert not chatter.filter(refused)
    assert not chatter.filter(record("stream_ae.io.kafka.confluent", "kafka client: _TRANSPORT"))
    # Anything else the clients say, and our own lines, pass.
    assert chatter.filter(record("kafka.coordinator", "Heartbeat failed: rebalance in progress"))
    assert chatter.filter(record("stream_ae.worker.bootstrap", "Kafka producer unavailable"))
    # A broker lost for longer still shows, once per interval.
    time.sleep(0.25)
    assert chatter.filter(refused)
    assert not chatter.filter(refused)
