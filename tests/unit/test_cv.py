"""Cross-validation: choices are made on the training folds and scored on the held-out one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream_ae.core.postprocess import PostParams, RangeParams, new_post_state, post_scores
from tests.unit.test_skab_score import SKAB_DIR, requires_skab
from training.evaluation.cv import (
    NabCandidate,
    NabInput,
    NabScoreCache,
    SkabCandidate,
    cross_validate_nab,
    cross_validate_skab,
    cross_validate_thresholds,
    leave_one_out_folds,
    nab_grid,
    skab_grid,
)
from training.evaluation.nab_score import CostProfile
from training.evaluation.skab_run import Detection, SkabTrace, save_trace
from training.evaluation.skab_score import TRAIN_ROWS, SkabFile, data_files, read_skab_file

PROFILES = {
    "standard": CostProfile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP_rate": CostProfile("reward_low_FP_rate", 1.0, 0.22, 1.0),
}


def _skab_file(key: str, normal: float, anomalous: float, seed: int) -> tuple[SkabFile, SkabTrace]:
    """A file whose rows 600..799 are anomalous and whose window distance is ``normal`` on
    normal rows and ``anomalous`` on anomalous ones (plus a little noise)."""
    n = 1000
    rng = np.random.default_rng(seed)
    anomaly = np.zeros(n, dtype=np.int64)
    anomaly[600:800] = 1
    distances = np.where(anomaly == 1, anomalous, normal) + rng.uniform(0, 0.5, n)
    distances[:15] = np.nan
    data = SkabFile(
        key=key,
        feature_names=("a", "b"),
        timestamps=[str(i) for i in range(n)],
        ts_ms=np.arange(n, dtype=np.int64) * 1000,
        values=np.zeros((n, 2)),
        anomaly=anomaly,
    )
    trace = SkabTrace(
        distances=distances,
        calibrated=np.clip(distances / 30, 0, 1),
        contributions=np.full((n, 2), 0.5),
        threshold=0.99,
        alerts=[],
    )
    return data, trace


def test_folds_by_first_path_part() -> None:
    assert leave_one_out_folds(["b/x", "a/y"]) == {"a": ["a/y"], "b": ["b/x"]}


def test_skab_held_out_uses_the_other_groups_choice() -> None:
    # Group g1: normal 4, anomalous 10. Group g2: normal 12, anomalous 20. A threshold between
    # 4.5 and 10 is perfect on g1 but flags every row of g2; one between 12.5 and 20 is perfect
    # on g2 and misses every anomaly of g1. In-sample, one threshold (12.5..20) gets g2 right;
    # held out, each group gets the other's threshold and fails.
    pairs = [_skab_file("g1/1", 4, 10, 0), _skab_file("g2/1", 12, 20, 1)]
    files = {d.key: d for d, _ in pairs}
    traces = {"m": {d.key: t for d, t in pairs}}
    candidates = [SkabCandidate("m", Detection(score="distance", threshold=t)) for t in (6.0, 15.0)]
    report = cross_validate_skab(files, traces, candidates)
    assert report.in_sample["f1"] > 0.6
    by_fold = {f.held_out: f for f in report.folds}
    assert "threshold=6" in by_fold["g2"].chosen and "threshold=15" in by_fold["g1"].chosen
    assert by_fold["g1"].held_out_score["mar"] == 100.0  # g1's anomalies all missed
    assert by_fold["g2"].held_out_score["far"] > 99.0  # g2's normal rows all flagged
    assert report.cross_validated["f1"] < report.in_sample["f1"]
    counted = sum(f.held_out_score["tp"] for f in report.folds)
    assert report.cross_validated["tp"] == counted


def test_skab_agreeing_groups_generalise() -> None:
    pairs = [_skab_file("g1/1", 4, 10, 0), _skab_file("g2/1", 4, 11, 1)]
    files = {d.key: d for d, _ in pairs}
    traces = {"m": {d.key: t for d, t in pairs}}
    report = cross_validate_skab(files, traces, skab_grid(["m"], smoothings=(1,)))
    assert report.cross_validated["f1"] > 0.97
    assert report.cross_validated["far"] < 1.0
    assert all(len(f.files) == 1 for f in report.folds)
    assert files["g1/1"].test_rows.start == TRAIN_ROWS


def _nab_input(key: str, spike_at: int, n: int = 2000) -> NabInput:
    rng = np.random.default_rng(len(key))
    ts = np.datetime64("2020-01-01T00:00") + np.arange(n) * np.timedelta64(5, "m")
    distances = rng.normal(1.0, 0.1, n)
    distances[spike_at : spike_at + 5] = 30.0
    values = rng.normal(size=n)
    first, last = ts[spike_at - 20], ts[spike_at + 40]
    return NabInput(
        key=key,
        timestamps=ts.astype("datetime64[us]"),
        ts_ms=ts.astype("datetime64[ms]").astype(np.int64),
        values=values,
        distances=distances,
        windows=[(first, last)],
    )


def test_nab_alike_categories_score_the_same_held_out_as_in_sample() -> None:
    inputs = {k: _nab_input(k, 1500) for k in ("c1/a.csv", "c2/b.csv")}
    candidates = [NabCandidate(PostParams(hold=h)) for h in (0, 250)]
    report = cross_validate_nab(inputs, PROFILES, candidates)
    assert report.in_sample["standard"] > 80.0
    assert report.cross_validated["standard"] == pytest.approx(report.in_sample["standard"])
    assert {f.held_out for f in report.folds} == {"c1", "c2"}


def test_nab_grid_covers_the_shipped_defaults() -> None:
    defaults = NabCandidate(PostParams())
    assert defaults in nab_grid()


def test_nab_candidates_score_rows_as_the_processor_scores_windows() -> None:
    """The cache replays the chain on the rows; the processor runs it on windows (the range
    check reading their values): a row's score is the final score of the window ending on it."""
    window = 8
    data = _nab_input("c1/a.csv", 1500)
    values = data.values.copy()
    values[1200] = values[:1200].max() + 0.05 * np.ptp(values[:1200])  # leaves the range
    distances = data.distances.copy()
    distances[: window - 1] = np.nan  # no window ends on the first rows
    data = NabInput(data.key, data.timestamps, data.ts_ms, values, distances, data.windows)
    post = PostParams(hold=100, range=RangeParams(margin=0.02, learning_windows=30))
    windows = np.lib.stride_tricks.sliding_window_view(values, window)[:, :, None]
    expected, _ = post_scores(
        post, new_post_state(post), distances[window - 1 :], data.ts_ms[window - 1 :], windows
    )
    got = NabScoreCache({data.key: data}).scores(NabCandidate(post), data.key)
    np.testing.assert_array_equal(got, np.r_[np.zeros(window - 1), expected])
    assert got[1200] == 1.0


def test_thresholds_only_cross_validation_of_fixed_scores() -> None:
    inputs = {k: _nab_input(k, 1500) for k in ("c1/a.csv", "c2/b.csv")}
    scores = {}
    for key, data in inputs.items():
        row_scores = np.zeros(len(data.ts_ms))
        row_scores[1500] = 0.9  # a detection at the start of the window
        scores[key] = (data.timestamps, row_scores)
    windows = {k: d.windows for k, d in inputs.items()}
    cv = cross_validate_thresholds(scores, windows, PROFILES)
    assert cv["standard"] > 90.0
    # c2's detection now scores below its own false positives: the best threshold on c2 alone
    # detects nothing, which misses c1's window, and c1's threshold (0.9) misses c2's.
    scores["c2/b.csv"][1][1500] = 0.5
    scores["c2/b.csv"][1][100:200] = 0.6  # false positives above c2's own level
    held_out = cross_validate_thresholds(scores, windows, PROFILES)
    assert held_out["standard"] < cv["standard"]


@requires_skab
def test_cv_skab_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command end to end over traces that separate the labels perfectly: distance 1 on
    normal rows, 50 on anomalous ones."""
    from stream_ae.cli.app import main

    assert SKAB_DIR is not None
    traces = tmp_path / "traces"
    for key, path in data_files(SKAB_DIR).items():
        data = read_skab_file(key, path)
        n, features = data.values.shape
        distances = np.where(data.anomaly == 1, 50.0, 1.0)
        distances[:15] = np.nan
        trace = SkabTrace(distances, distances / 50, np.zeros((n, features)), 0.99, [])
        save_trace(traces, key, trace)
    out = tmp_path / "cv.json"
    argv = ["evaluate", "cv", "skab", str(SKAB_DIR), "--traces", f"m={traces}", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "cross-val" in printed and "held out valve2" in printed
    report = json.loads(out.read_text())
    # other/2's anomaly starts inside the training rows but ends after them: still found.
    assert report["cross_validated"]["f1"] > 0.99
    assert {fold["held_out"] for fold in report["folds"]} == {"other", "valve2"}
