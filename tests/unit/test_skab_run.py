"""``evaluate skab``: one SKAB file through the processor, whose alerts are the predictions, and
the cross-validation's replay of the same detector from a trace."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from stream_ae.core.alerting import AlertPolicy
from stream_ae.model.artifacts import load_artifact
from stream_ae.score_timeline import flag_runs
from tests.support.timeline_png import timeline_description
from tests.unit.test_skab_score import SKAB_DIR, requires_skab
from training.evaluation.skab_run import (
    Detection,
    SkabParams,
    SkabTrace,
    alert_predictions,
    detection_scores,
    policy_predictions,
    predict_rows,
    stream_file,
)
from training.evaluation.skab_score import (
    TRAIN_ROWS,
    data_files,
    read_predictions,
    read_skab_file,
)

# Small and quick: the suite runs on a shared 2-core machine. The detection is the shipped
# kind (smoothed distance with episodes, running-range check) at the shipped level.
TINY = SkabParams(
    epochs=2,
    hidden=8,
    window=16,
    batch_events=128,
    detection=Detection(
        "distance",
        threshold=20.0,
        smoothing=5,
        range_margin=0.05,
        resolve_after=10,
        drop=0.8,
        drop_after=10,
    ),
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
    # The artifact carries the detector: the worker loading it runs the same post-processing
    # and alert policy (the processor here takes it from the artifact, as a worker does).
    loaded = load_artifact(tmp_path / "artifact")
    assert (loaded.post, loaded.policy) == (TINY.post(), TINY.policy())
    assert loaded.policy.resolve_after == 10
    assert TINY.post() is not None and TINY.post().range is not None  # type: ignore[union-attr]
    # Every row from the first full window on has a window, scored once.
    assert np.isnan(trace.distances[: TINY.window - 1]).all()
    assert not np.isnan(trace.distances[TINY.window - 1 :]).any()
    assert not np.isnan(trace.contributions[TINY.window - 1 :]).any()
    # The predictions are the processor's alerts; the cross-validation's replay from the
    # trace gives exactly them, and exactly the processor's final scores.
    predictions, opened = alert_predictions(trace.alerts, n)
    assert opened and predictions[TRAIN_ROWS:].any() and not predictions[TRAIN_ROWS:].all()
    assert trace.final is not None
    np.testing.assert_array_equal(detection_scores(trace, data.values, TINY.detection), trace.final)
    replayed, replay_opened = predict_rows(trace, data.values, TINY.detection)
    assert np.array_equal(replayed, predictions) and replay_opened == opened
    # No look-ahead: rows changed from row r on leave every earlier output as it was.
    r = TRAIN_ROWS + 100
    changed = dataclasses.replace(data, values=np.r_[data.values[:r], data.values[r:] * 3.0])
    trace2 = stream_file(changed, TINY, tmp_path / "artifact2")
    assert np.array_equal(trace.distances[:r], trace2.distances[:r], equal_nan=True)
    assert np.array_equal(trace.final[:r], trace2.final[:r], equal_nan=True)  # type: ignore[index]
    predictions2, _ = alert_predictions(trace2.alerts, n)
    assert np.array_equal(predictions[:r], predictions2[:r])


def test_the_calibrated_detection_is_the_worker_without_post_processing() -> None:
    assert Detection().post(100) is None
    with pytest.raises(ValueError, match="calibrated score has no post-processing"):
        Detection(smoothing=5)
    with pytest.raises(ValueError, match="needs a threshold"):
        Detection("distance")
    post = Detection("distance", threshold=15.0, smoothing=5, range_margin=0.2).post(369)
    assert post is not None and post.distance is not None and post.range is not None
    assert (post.distance.level, post.threshold, post.range.learning_windows) == (15.0, 0.5, 369)


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


def test_a_burst_opens_a_detection_under_either_score() -> None:
    n = 600
    distances = np.ones(n)
    distances[:15] = np.nan
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
    assert opened == [450]
    assert short.sum() == 7  # 5 rows above, 2 below, resolved at the 3rd below
    # Smoothed over 5 windows the mean stays above 10 two windows longer.
    smoothed, _ = predict_rows(trace, values, Detection("distance", threshold=10.0, smoothing=5))
    assert smoothed.sum() > short.sum()
    # The likelihood of the same distances fires at the burst too.
    _, like_opened = predict_rows(trace, values, Detection("likelihood", threshold=0.3))
    assert like_opened and like_opened[0] == 450
