"""Refits: warm start from the champion, alerted windows left out, the periodic loop, and
``refit --once`` against the test broker."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from kafka import KafkaProducer

from stream_ae.core.alerting import AlertPolicy
from stream_ae.core.records import encode_event, ms_to_iso
from stream_ae_dev.devstack import BrokerProcess
from tests.support.training_data import START_MS, STEP_MS, TINY_FIT, sine_series, tiny_spec
from training.cli import main
from training.refit import RefitPlan, refit_once, run_every
from training.registry import Registry


def _alert(stream: str, status: str, start_ms: int, end_ms: int, model: str = "m") -> dict:
    return {
        "stream": stream,
        "status": status,
        "window": {"start_ts": ms_to_iso(start_ms), "end_ts": ms_to_iso(end_ms), "size": 12},
        "model": {"name": model, "version": "x"},
    }


def test_refit_warm_starts_and_leaves_out_windows_that_raised_alerts(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    series = [sine_series("a", 400, seed=1), sine_series("b", 400, seed=2)]
    # A first fit writes the plan's detector policy; the refit keeps the champion's.
    detector_policy = AlertPolicy(resolve_after=10)
    plan = RefitPlan(
        name="m", spec=tiny_spec(), fit=TINY_FIT, exclude="alerts", detector_policy=detector_policy
    )

    def policy_of(version: str) -> object:
        return json.loads((registry.path("m", version) / "detector.json").read_text())["policy"]

    first = refit_once(registry, plan, lambda: series)
    assert first.promoted and first.reason == "first champion"
    assert not first.warm_start and first.excluded_windows == 0
    assert policy_of(first.version) == {"resolve_after": 10}

    def at(step: int) -> int:
        return START_MS + STEP_MS * step

    # Stream a alerted from the window over steps 89..100 until the one over 119..130.
    alerts = [_alert("a", "open", at(89), at(100)), _alert("a", "resolved", at(119), at(130))]
    refit = replace(plan, spec=None, detector_policy=AlertPolicy(resolve_after=3))  # not used
    second = refit_once(registry, refit, lambda: series, lambda: alerts)
    assert second.warm_start
    assert policy_of(second.version) == {"resolve_after": 10}
    # Windows of a (12 steps, one ending at every odd step) touching steps 89..130 end at
    # 89, 91, ..., 141: 27 windows.
    assert second.excluded_windows == 27
    metrics = json.loads((registry.path("m", second.version) / "metrics.json").read_text())
    assert metrics["refit"]["warm_start_from"] == first.version
    assert metrics["excluded_windows"] == 27
    # Warm: the first epoch starts about where the champion's training ended, below the first
    # epoch of the champion's own (cold, same seed) fit.
    first_metrics = json.loads((registry.path("m", first.version) / "metrics.json").read_text())
    assert first_metrics["train_span_ms"] == [START_MS, START_MS + STEP_MS * 399]
    # The refit replayed its data through both models before deciding, and recorded it.
    shadow = registry.decision("m", second.version)["gate"]["shadow"]
    assert {"champion_alerts", "challenger_alerts_in_training"} <= set(shadow)
    cold = first_metrics["history"]
    warm = metrics["history"]
    assert warm["loss"][0] < cold["loss"][0]
    assert warm["loss"][0] < 1.25 * cold["loss"][-1]
    # The registry did what the refit reports: the champion moved iff it was promoted, and
    # the decision record carries the same reason.
    expected_champion = second.version if second.promoted else first.version
    assert registry.champion("m") == expected_champion
    assert registry.decision("m", second.version)["reason"] == second.reason


def test_run_every_repeats_until_stopped_and_survives_failures() -> None:
    calls: list[float] = []
    stop = threading.Event()

    def job() -> None:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("broker down")
        if len(calls) == 3:
            stop.set()

    failures = run_every(0.05, job, stop)
    assert len(calls) == 3 and failures == 1
    assert all(b - a >= 0.04 for a, b in itertools.pairwise(calls))
    assert run_every(10.0, lambda: None, threading.Event(), max_runs=1) == 0


@pytest.mark.integration
@pytest.mark.slow
def test_refit_once_from_the_command_line(
    broker: BrokerProcess,
    topic_factory: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic, alerts_topic = topic_factory(partitions=2), topic_factory(partitions=1)
    # Back-fill: events of 2014. The range is event time before the newest event, so a topic
    # of old data trains exactly as a live one (a wall-clock --since would drop every event).
    start = 1_396_310_400_000
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
    for stream, seed in (("a", 1), ("b", 2)):
        values = sine_series(stream, 300, seed=seed).values[:, 0]
        for k, value in enumerate(values):
            producer.send(
                topic,
                key=stream.encode(),
                value=encode_event(stream, start + STEP_MS * k, float(value)),
            )
    alert = _alert("a", "open", start + STEP_MS * 200, start + STEP_MS * 211)
    producer.send(alerts_topic, value=json.dumps(alert).encode())
    producer.flush()
    producer.close()

    common = [
        "refit",
        "--once",
        "--topic",
        topic,
        "--bootstrap-servers",
        broker.bootstrap_servers,
        "--since",
        "1d",
        "--alerts-topic",
        alerts_topic,
        "--exclude",
        "alerts",
        "--registry",
        str(tmp_path),
        "--name",
        "m",
        "--epochs",
        "1",
        "--stride",
        "2",
        "--quiet",
    ]
    assert main([*common, "--window", "12", "--hidden", "8"]) == 0
    out = capsys.readouterr().out
    assert "promoted (first champion)" in out and "warm start: False" in out
    # The open alert covers stream a from step 200 on: those training windows are left out.
    excluded = int(out.split("excluded windows: ")[1].split(",")[0])
    assert excluded == 50  # the windows of a ending at 201, 203, ..., 299
    assert len(Registry(tmp_path).versions("m")) == 1
    # A refit given no model option keeps the champion's definition, and says so.
    assert main(common) == 0
    out = capsys.readouterr().out
    assert "changes from the champion: none" in out and "warm start: True" in out
    # One given option changes that field only, announced. (Not the window: a challenger of
    # another window that passes the gate is refused by the registry, running workers could
    # not take it.)
    assert main([*common, "--hidden", "16"]) == 0
    out = capsys.readouterr().out
    assert "changes from the champion: hidden 8 -> 16;" in out and "warm start: False" in out
    # Weights learnt on other scaling are no start: a scaling change fits cold, and says so.
    assert main([*common, "--scaling", "stream"]) == 0
    out = capsys.readouterr().out
    assert "scaling global -> stream" in out and "warm start: False" in out
    # Nothing in range: one line with the replay's counts, no traceback.
    assert main([*common, "--from", "2030-01-01T00:00:00Z"]) == 2  # what was asked for is empty
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stream-ae-train refit: error: no events to train on")
    assert "messages" in err[-1]
    # train --topic --from 4h: the 4 hours before the newest event (of 2014), not before now:
    # 241 events of each stream, 115 windows at stride 2, 92 of them for training.
    out_dir = tmp_path / "from-topic"
    argv = ["train", "--topic", topic, "--bootstrap-servers", broker.bootstrap_servers]
    argv += ["--from", "4h", "--window", "12", "--hidden", "8", "--epochs", "1", "--stride", "2"]
    assert main([*argv, "--quiet", "--out", str(out_dir)]) == 0
    assert "184 training windows" in capsys.readouterr().out
    # shadow: the newest version against the champion over the last 2 hours before the newest
    # event (of 2014: a wall-clock range would hold nothing), nothing promoted.
    champion = Registry(tmp_path).champion("m")
    argv = ["shadow", "--version", "latest", "--registry", str(tmp_path), "--name", "m"]
    argv += ["--topic", topic, "--bootstrap-servers", broker.bootstrap_servers, "--since", "2h"]
    code = main([*argv, "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert code == (0 if shown["passed"] else 3)
    stream_days = 2 * 120 / 1440  # two streams, 120 minutes each
    assert shown["champion_alerts_per_stream_day"] == round(
        shown["champion_alerts"] / stream_days, 3
    )
    assert Registry(tmp_path).champion("m") == champion


def _write_csvs(folder: Path, steps: int, start_step: int, spikes: bool) -> list[Path]:
    """One CSV per stream (ISO times, a minute apart): noisy sines, and with ``spikes`` two
    short bursts per stream, the anomalies every model should alert on."""
    folder.mkdir()
    paths = []
    for i, stream in enumerate(("a", "b", "c")):
        values = sine_series(stream, start_step + steps, seed=i).values[start_step:, 0].copy()
        if spikes:
            values[steps // 3 : steps // 3 + 4] += 6.0
            values[2 * steps // 3 : 2 * steps // 3 + 4] -= 6.0
        times = [ms_to_iso(START_MS + STEP_MS * (start_step + k)) for k in range(steps)]
        path = folder / f"{stream}.csv"
        path.write_text(
            "timestamp,value\n"
            + "".join(f"{t},{v:.5f}\n" for t, v in zip(times, values, strict=True))
        )
        paths.append(path)
    return paths


@pytest.mark.slow
def test_shadow_gate_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``shadow`` compares without promoting; ``publish`` with recent traffic refuses the
    challenger that would flood the pager, with the reason and figures in the registry."""
    history = _write_csvs(tmp_path / "history", 800, 0, spikes=False)
    traffic = _write_csvs(tmp_path / "traffic", 1440, 800, spikes=True)  # the next day
    registry = tmp_path / "registry"
    fit = ["--name", "m", "--window", "12", "--hidden", "8", "--epochs", "3", "--stride", "2"]
    # The calibration alone decides the alerts here (the challenger is calibrated noisier): no
    # post-processing, whose likelihood would take the calibration level out of play.
    fit += ["--no-post-processing", "--quiet"]

    def train(out: str, *extra: str) -> Path:
        assert main(["train", "--csv", *map(str, history), *fit, *extra, "--out", str(out)]) == 0
        return tmp_path / out

    champion = train(str(tmp_path / "champion"))
    metrics = json.loads((champion / "metrics.json").read_text())
    assert metrics["train_span_ms"] == [START_MS, START_MS + STEP_MS * 799]
    assert main(["publish", str(champion), "--registry", str(registry), "--name", "m"]) == 0
    # Calibrated to alert on one normal window in ten instead of one in a thousand.
    noisy = train(str(tmp_path / "noisy"), "--threshold-level", "0.9")
    retrained = train(str(tmp_path / "retrained"), "--seed", "1")
    capsys.readouterr()

    where = ["--registry", str(registry), "--name", "m", "--csv", *map(str, traffic)]
    assert main(["shadow", "--artifact", str(noisy), *where, "--json"]) == 3
    rejected = json.loads(capsys.readouterr().out)
    assert not rejected["passed"]
    assert rejected["challenger_alerts"] > 3 * max(rejected["champion_alerts"], 1)
    labels = tmp_path / "incidents.csv"
    labels.write_text(
        "stream,start,end\n"
        + "".join(
            f"{s},{ms_to_iso(START_MS + STEP_MS * (800 + a))},{ms_to_iso(START_MS + STEP_MS * b)}\n"
            for s in "abc"
            for a, b in ((475, 800 + 500), (955, 800 + 980))
        )
    )
    argv = ["shadow", "--artifact", str(retrained), *where, "--labels", str(labels), "--json"]
    assert main(argv) == 0
    passed = json.loads(capsys.readouterr().out)
    assert passed["passed"] and passed["champion_alerts"] >= 6  # the bursts, on 3 streams
    assert passed["quality"]["champion"]["hits"] == passed["quality"]["challenger"]["hits"] == 6
    with capsys.disabled():  # the figures, shown with -s
        print("\nshadow rejected:", rejected, "\nshadow passed:", passed)
    assert Registry(registry).versions("m") == [Registry(registry).champion("m")]  # no promotion

    assert main(["publish", str(noisy), *where]) == 3
    out = capsys.readouterr().out
    assert "REJECT" in out and "rejected (shadow replay: would open" in out
    reg = Registry(registry)
    version = json.loads((noisy / "manifest.json").read_text())["version"]
    decision = reg.decision("m", version)
    assert decision["status"] == "rejected" and decision["reason"].startswith("shadow replay")
    assert decision["gate"]["shadow"]["challenger_alerts"] == rejected["challenger_alerts"]
    assert reg.champion("m") == json.loads((champion / "manifest.json").read_text())["version"]
    assert main(["publish", str(retrained), *where]) == 0
    assert "promoted (" in capsys.readouterr().out
