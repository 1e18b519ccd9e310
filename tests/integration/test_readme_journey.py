"""The README's "your own metrics in five minutes": its commands, exactly as written, against
the test broker and Redis, from a CSV of one metric to the first alert."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from stream_ae_dev.devstack import BrokerProcess, RedisProcess
from tests.support.timeline_png import timeline_description

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Your own metrics in five minutes"
# How long the alerts command may take to print the first alert once the events are sent.
ALERT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Step:
    """One README line: its environment assignments, its argv, and whether it runs in the
    background (``&``)."""

    line: str
    env: dict[str, str]
    argv: list[str]
    background: bool


def readme_steps(text: str) -> list[Step]:
    """The commands of the README section's bash block, comments dropped."""
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    steps = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        background = words[-1] == "&"
        words = words[:-1] if background else words
        env = {}
        while "=" in words[0] and not words[0].startswith("-"):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        steps.append(Step(line.split("#", 1)[0].strip(), env, words, background))
    return steps


def write_metric_csv(path: Path) -> None:
    """Two days of a noisy daily-like cycle every 5 minutes, with one burst (the anomaly)."""
    rng = np.random.default_rng(7)
    steps = 576
    t = np.arange(steps)
    values = 50 + 10 * np.sin(2 * np.pi * t / 96) + rng.normal(0, 0.5, steps)
    values[430:436] += 40.0
    times = np.datetime64("2026-01-05T00:00:00") + t * np.timedelta64(5, "m")
    rows = "".join(f"{ts}Z,{v:.3f}\n" for ts, v in zip(times, values, strict=True))
    path.write_text("timestamp,value\n" + rows)


def _lines(stream: object) -> queue.Queue[str]:
    """The lines of a pipe, read by a thread, so the test can wait with a deadline."""
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
            out.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return out


@pytest.fixture
def journey_env(
    broker: BrokerProcess,
    redis_server: RedisProcess,
    topic_factory: Callable[..., str],
) -> Iterator[dict[str, str]]:
    """What ``stream-ae dev-stack up`` tells a user to export, for the test servers (own topics,
    group and key prefix), with the commands of this tree first on the PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_AE_")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "STREAM_AE_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "STREAM_AE_REDIS_URL": redis_server.url,
        "STREAM_AE_INPUT_TOPICS": topic_factory(prefix="journey-events"),
        "STREAM_AE_ALERTS_TOPIC": topic_factory(prefix="journey-alerts"),
        "STREAM_AE_DLQ_TOPIC": topic_factory(prefix="journey-dlq"),
        "STREAM_AE_GROUP_ID": f"journey-{uuid.uuid4().hex[:8]}",
        "STREAM_AE_REDIS_KEY_PREFIX": f"journey-{uuid.uuid4().hex[:8]}",
        "STREAM_AE_METRICS_PORT": "0",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    yield env


@pytest.mark.integration
@pytest.mark.slow
def test_the_readme_journey_from_a_csv_to_the_first_alert(
    journey_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = readme_steps(README.read_text())
    commands = [" ".join(s.argv[:2]) for s in steps]
    assert commands == [
        "stream-ae-train train",
        "stream-ae-train report",
        "stream-ae-train publish",
        "stream-ae worker",
        "stream-ae produce",
        "stream-ae alerts",
    ]
    write_metric_csv(tmp_path / "cpu.csv")
    background: list[subprocess.Popen[str]] = []
    timings: list[tuple[str, float]] = []
    started = time.monotonic()
    try:
        for step in steps[:-1]:
            begun = time.monotonic()
            env = journey_env | step.env
            if step.background:
                log = (tmp_path / f"{step.argv[1]}.log").open("w")
                background.append(
                    subprocess.Popen(
                        step.argv, cwd=tmp_path, env=env, stdout=log, stderr=log, text=True
                    )
                )
                continue
            done = subprocess.run(
                step.argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, f"{step.line}\n{done.stdout}\n{done.stderr}"
            timings.append((step.line, time.monotonic() - begun))
        summary = (tmp_path / "reports" / "cpu" / "report.md").read_text()
        assert "## Alerts a worker would open" in summary
        # The score timeline the README names, drawn by the shared function.
        assert "score timeline" in timeline_description(
            tmp_path / "reports" / "cpu" / "timeline_cpu.png"
        )

        follow = steps[-1]
        begun = time.monotonic()
        alerts = subprocess.Popen(
            follow.argv,
            cwd=tmp_path,
            env=journey_env | follow.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        background.append(alerts)
        lines, seen = _lines(alerts.stdout), []
        deadline = time.monotonic() + ALERT_TIMEOUT_S
        while not any("cpu" in line and "OPEN" in line.upper() for line in seen):
            assert time.monotonic() < deadline, (
                "no alert within the timeout; alerts printed:\n"
                + "".join(seen)
                + "\nworker log:\n"
                + (tmp_path / "worker.log").read_text()[-3000:]
            )
            try:
                seen.append(lines.get(timeout=1.0))
            except queue.Empty:
                assert all(p.poll() is None for p in background), "a command exited early"
        timings.append((follow.line + " (first alert)", time.monotonic() - begun))
    finally:
        for process in reversed(background):
            if process.poll() is None:
                process.send_signal(signal.SIGINT if process is background[-1] else signal.SIGTERM)
        for process in background:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    with capsys.disabled():  # the journey's timings, shown with -s
        print(f"\nREADME journey, {time.monotonic() - started:.1f}s to the first alert:")
        for line, seconds in timings:
            print(f"  {seconds:6.1f}s  {line}")
