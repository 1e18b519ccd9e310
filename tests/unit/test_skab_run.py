"""``evaluate skab``: the detection chain (pure) and one SKAB file through the processor."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from stream_ae.core.alerting import AlertPolicy
from stream_ae.score_timeline import flag_runs
from tests.support.timeline_png import timeline_description
from tests.unit.test_skab_score import SKAB_DIR, requires_skab
from training.evaluation.skab_run import (
    Detection,
    SkabParams,
    SkabTrace,
    alert_predictions,
    policy_predictions,
    predict_rows,
    running_range_flags,
    stream_file,
    trailing_mean,
)
from training.evaluation.skab_score import (
    TRAIN_ROWS,
    data_files,
    read_predictions,
    read_skab_file,
)

# Small and quick: the suite runs on a shared 2-core machine.
TINY = SkabParams(epochs=2, hidden=8, window=16, batch_events=128, detection=Detection())


def test_running_range_never_looks_ahead() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(300, 3))
    flags = running_range_flags(values, 0.1, start=50)
    changed = values.copy()
    changed[200:] += 100.0  # far outside: flagged from row 200 on, nothing before changes
    changed_flags = running_range_flags(changed, 0.1, start=50)
    assert np.array_equal(flags[:200], changed_flags[:200])
    assert changed_flags[200] and not flags[:50].any()


def test_trailing_mean_is_causal() -> None:
    scores = np.r_[np.nan, np.arange(10.0)]
    smoothed = trailing_mean(scores, 3)
    assert np.isnan(smoothed[0])
    assert smoothed[-1] == pytest.approx(8.0)
    assert np.array_equal(
        trailing_mean(np.r_[scores[:5], 99.0], 3)[:5], smoothed[:5], equal_nan=True
    )


def test_policy_predictions_cover_open_to_resolve() -> None:
    scores = np.array([np.nan, 0.1, 0.95, 0.97, 0.2, 0.2, 0.2, 0.1, 0.99])
    predictions, opened = policy_predictions(scores, AlertPolicy(threshold=0.9, resolve_after=2))
    assert opened == [2, 8]
    assert predictions.tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 1]


@requires_skab
def test_one_file_through_the_processor(tmp_path: Path) -> None:
    assert SKAB_DIR is not None
    key, path = next(iter(data_files(SKAB_DIR).items()))
    data = read_skab_file(key, path)
    trace = stream_file(data, TINY, tmp_path / "artifact")
    n = len(data.timestamps)
    # Every row from the first full window on has a window, scored once.
    assert np.isnan(trace.distances[: TINY.window - 1]).all()
    assert not np.isnan(trace.distances[TINY.window - 1 :]).any()
    assert not np.isnan(trace.contributions[TINY.window - 1 :]).any()
    # With the default detection the predictions are the processor's own alerts.
    predictions, opened = predict_rows(trace, data.values, TINY.detection)
    assert np.array_equal(predictions, alert_predictions(trace.alerts, n))
    assert len(opened) == sum(a["status"] == "open" for a in trace.alerts)
    # No look-ahead: rows changed from row r on leave every earlier output as it was.
    r = TRAIN_ROWS + 100
    changed = dataclasses.replace(data, values=np.r_[data.values[:r], data.values[r:] * 3.0])
    trace2 = stream_file(changed, TINY, tmp_path / "artifact2")
    assert np.array_equal(trace.distances[:r], trace2.distances[:r], equal_nan=True)
    predictions2, _ = predict_rows(trace2, changed.values, Detection(range_margin=0.1))
    predictions1, _ = predict_rows(trace, data.values, Detection(range_margin=0.1))
    assert np.array_equal(predictions1[:r], predictions2[:r])


@requires_skab
def test_command_writes_skab_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stream_ae.cli.app import main

    assert SKAB_DIR is not None
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"epochs": 1, "hidden": 8}))
    out = tmp_path / "out"
    status = main(
        [
            "evaluate",
            "skab",
            str(SKAB_DIR),
            "--out",
            str(out),
            "--only",
            "valve2/1",
            "--params",
            str(params),
            "--plot",
            "valve2",
        ]
    )
    assert status == 0
    stamps, predictions = read_predictions(out / "valve2" / "1.csv")
    data = read_skab_file("valve2/1", data_files(SKAB_DIR)["valve2/1"])
    assert stamps == data.timestamps[TRAIN_ROWS:]
    assert set(predictions.tolist()) <= {0, 1}
    report = json.loads((out / "run.json").read_text())
    assert report["params"]["epochs"] == 1 and 0.0 <= report["score"]["f1"] <= 1.0
    assert (out / "attribution.png").stat().st_size > 0
    # --plot: the file's score timeline, drawn by the shared function, with its labelled
    # anomalies and the detections the run counted.
    drawn = timeline_description(out / "plots" / "valve2__1.png")
    rows = len(data.timestamps)
    assert f"{rows} values, {rows} scores (distance score, model score (calibrated))" in drawn
    assert f"{len(flag_runs(data.anomaly))} labelled windows" in drawn
    assert f"{report['files'][0]['alerts_opened']} alerts opened" in drawn
    assert "SKAB pooled: F1" in capsys.readouterr().out


def test_min_open_keeps_a_detection_open() -> None:
    n = 600
    distances = np.ones(n)
    distances[450:455] = 50.0  # a short burst of high distances
    trace = SkabTrace(
        distances=distances,
        calibrated=np.clip(distances / 50, 0, 1),
        contributions=np.zeros((n, 1)),
        threshold=0.9,
        alerts=[],
    )
    values = np.zeros((n, 1))
    short, opened = predict_rows(trace, values, Detection("distance", threshold=10.0))
    held, _ = predict_rows(trace, values, Detection("distance", threshold=10.0, min_open=100))
    assert opened == [450]
    assert short.sum() == 7  # 5 rows above, 2 below, resolved at the 3rd below
    assert held[450:550].all() and held.sum() == 100
    # The likelihood of the same distances fires at the burst too.
    _, like_opened = predict_rows(trace, values, Detection("likelihood", threshold=0.3))
    assert like_opened and like_opened[0] == 450
