"""``stream-ae explain`` on a real alert: a worker scores the test fleet on the real broker and
Redis; the command finds one of its alerts by id on the alerts topic, reads its window back from
the input topic, re-scores it with the version the alert names from a registry, and shows (and
draws) the values the alert carries."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from stream_ae.cli.app import main
from stream_ae.model.artifacts import load_artifact
from stream_ae_dev.devstack import BrokerProcess, RedisProcess
from tests.support.kafka_clients import read_records
from tests.support.kafka_topics import produce
from tests.support.outcomes import alerts_of
from tests.support.timeline_png import timeline_description
from tests.support.tiny_model import TinyModel, fleet, live_messages
from tests.support.waiting import wait_until
from tests.support.worker_process import running_worker, settings_of, worker_config

pytestmark = pytest.mark.integration


def test_explain_a_real_alert(
    broker: BrokerProcess,
    redis_server: RedisProcess,
    topic_factory: Callable[..., str],
    tiny_model: TinyModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topics = {
        "input_topic": topic_factory(2, prefix="in"),
        "alerts_topic": topic_factory(1, prefix="alerts"),
        "dlq_topic": topic_factory(1, prefix="dlq"),
    }
    config = worker_config(
        bootstrap_servers=broker.bootstrap_servers,
        redis_url=redis_server.url,
        model=tiny_model,
        **topics,
    )
    sent = produce(broker.bootstrap_servers, topics["input_topic"], live_messages(fleet()))
    with running_worker(settings_of(config)) as worker:
        wait_until(lambda: worker.totals.applied >= len(sent), 120, "every event applied")
    alerts = alerts_of(read_records(broker.bootstrap_servers, topics["alerts_topic"]))
    opened = [a for a in alerts if a["status"] == "open"]
    assert opened, "the worker raised no alert on the fleet's anomalies"
    alert = max(opened, key=lambda a: a["score"])
    (feature,) = alert["features"]

    # The model version the alert names, in a registry (not the worker's artifact path).
    artifact = load_artifact(tiny_model.path)
    registry = tmp_path / "registry"
    shutil.copytree(tiny_model.path, registry / artifact.name / artifact.version)
    for name in ("bootstrap_servers", "alerts_topic"):
        monkeypatch.setenv(f"STREAM_AE_{name.upper()}", str(config[name]))
    monkeypatch.setenv("STREAM_AE_MODEL_PATH", str(registry))

    png = tmp_path / "explain.png"
    assert main(["explain", alert["alert_id"][:10], "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n[explain]\n{text}")
    assert f"alert {alert['alert_id']}  open  stream {alert['stream']}" in text
    assert f"threshold {alert['threshold']:.6f}" in text
    assert f"fired by stage {alert['stage']}: score {alert['score']:.6f}" in text
    # The feature row: re-scored, the window's largest deviation is where the worker saw it,
    # with the same observed value and (the same model) the same expected value.
    row = next(line for line in text.splitlines() if line.startswith("value "))
    cells = row.split()
    assert int(cells[3]) == feature["step"]
    assert float(cells[4]) == pytest.approx(feature["observed"], rel=1e-5)
    assert float(cells[5]) == pytest.approx(feature["expected"], rel=1e-3, abs=1e-4)
    # Every step of the window is listed, the largest deviation marked once.
    shown, plotted = text.split("\nplot: ")
    assert plotted.strip() == str(png)
    values = shown.split("largest deviation):", 1)[1].strip().splitlines()[1:]
    assert len(values) == tiny_model.window
    assert sum(line.endswith("*") for line in values) == 1
    assert values[feature["step"]].endswith("*")
    assert values[-1].split()[1] == str(alert["source"]["offset"])
    assert "1 alerts opened, 0 resolved" in timeline_description(png)

    # The alert JSON on stdin gives the same explanation, without the topic search.
    monkeypatch.setattr("sys.stdin", _Stdin(orjson.dumps(alert).decode()))
    assert main(["explain", "-"]) == 0
    assert capsys.readouterr().out.strip() == shown.strip()

    # A version the registry does not hold: one clear error naming it.
    monkeypatch.setattr(
        "sys.stdin",
        _Stdin(orjson.dumps({**alert, "model": {"name": "tiny", "version": "v0"}}).decode()),
    )
    assert main(["explain", "-"]) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "not in the registry" in error and "'v0'" in error
    shutil.copy(png, tmp_path.parent / "explain-last.png")  # for a look by hand


class _Stdin:
    def __init__(self, text: str) -> None:
        self.text = text

    def read(self) -> str:
        return self.text
