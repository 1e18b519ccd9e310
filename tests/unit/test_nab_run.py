"""Tests of the NAB harness (training.evaluation.nab_run): no look-ahead, the results layout,
the labels, the command line. Models are tiny and fits short: these test the plumbing, not the
detection quality (docs/nab.md has that)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stream_ae.cli import app as cli
from stream_ae.core.postprocess import (
    LikelihoodParams,
    PostParams,
    RangeParams,
    new_post_state,
    post_scores,
)
from stream_ae.model.artifacts import load_artifact, read_manifest
from tests.support.paths import NAB_DIR, requires_nab
from tests.support.timeline_png import timeline_description
from training.evaluation.nab_run import (
    DETECTOR_NAME,
    DetectorParams,
    FileRun,
    NabSeries,
    alert_figures,
    data_files,
    read_series,
    refit_rows,
    row_labels,
    stream_file,
)
from training.evaluation.nab_score import (
    load_profiles,
    load_windows,
    probation_length,
    read_results_dir,
    score_corpus,
    score_file,
)

TINY = DetectorParams.of(
    kind="predict",
    window=12,
    horizon=2,
    hidden=4,
    epochs=2,
    refit_epochs=1,
    patience=1,
    batch_size=64,
    batch_events=128,
    post=PostParams(
        likelihood=LikelihoodParams(long_window=200, learning_windows=20),
        range=RangeParams(margin=0.02, learning_windows=20),
    ),
)
FIVE_MIN_MS = 300_000
START_MS = 1_396_310_400_000  # 2014-04-01 00:00 UTC


def sine_series(key: str, n_rows: int, seed: int = 0) -> NabSeries:
    rng = np.random.default_rng(seed)
    values = 10 + np.sin(np.arange(n_rows) * 2 * np.pi / 48) + 0.05 * rng.standard_normal(n_rows)
    ts_ms = START_MS + FIVE_MIN_MS * np.arange(n_rows, dtype=np.int64)
    stamps = [str(t) for t in np.asarray(ts_ms, dtype="datetime64[ms]").astype("datetime64[s]")]
    return NabSeries(key, [s.replace("T", " ") for s in stamps], ts_ms, values)


def test_refits_come_every_refit_every_rows_after_the_probation_and_never_at_the_end() -> None:
    params = DetectorParams.of(refit_every=400)
    assert refit_rows(4032, 604, params) == [1004, 1404, 1804, 2204, 2604, 3004, 3404, 3804]
    assert refit_rows(1000, 604, params) == []
    assert refit_rows(4032, 604, DetectorParams.of(refit_every=0)) == []


def test_no_look_ahead_rows_are_scored_the_same_whatever_comes_later(tmp_path: Path) -> None:
    # Two runs that differ only from row 600 on: every score before row 600 must agree, since
    # the fits (at 120 rows and at the refit at 520) and the windows never see a later row.
    params = replace(TINY, refit_every=400)
    series = sine_series("cat/a.csv", 800)
    changed_values = series.values.copy()
    changed_values[600:] += 25.0
    changed = NabSeries(series.key, series.timestamps, series.ts_ms, changed_values)
    probation = probation_length(800)
    first = stream_file(series, params, probation, tmp_path / "first")
    second = stream_file(changed, params, probation, tmp_path / "second")

    assert first.fit_rows == second.fit_rows == [120, 520]
    np.testing.assert_array_equal(first.distances[:600], second.distances[:600])
    np.testing.assert_array_equal(first.calibrated[:600], second.calibrated[:600])
    np.testing.assert_array_equal(first.final_scores[:600], second.final_scores[:600])
    assert not np.allclose(first.distances[600:], second.distances[600:])
    # The final scores are the processor's, from the detector.json every fit carries: exactly
    # the post-processing of the distances in one pass, its state kept across the refit's swap.
    # Each row's window (the rows before the first window: no distance, never read).
    padded = np.r_[np.full(params.window - 1, series.values[0]), series.values]
    windows = np.lib.stride_tricks.sliding_window_view(padded, params.window)[:, :, None]
    expected, _ = post_scores(
        params.post, new_post_state(params.post), first.distances, series.ts_ms, windows
    )
    np.testing.assert_array_equal(first.final_scores, expected)
    assert np.any(second.final_scores[600:] == 1.0)  # the jump leaves the running range
    # The first window ends at row window - 1; rows from the refit on are scored by fit 1.
    assert np.all(np.isnan(first.distances[: params.window - 1]))
    assert np.all(np.isfinite(first.distances[params.window - 1 :]))
    np.testing.assert_array_equal(first.model_index[params.window - 1 : 520], 0)
    np.testing.assert_array_equal(first.model_index[520:], 1)
    # Every fit is a verified artifact that says which rows it saw.
    for k, seen in enumerate(first.fit_rows):
        directory = tmp_path / "first" / f"fit-{k}"
        assert read_manifest(directory)["version"].endswith(f"-{seen}")
        metrics = json.loads((directory / "metrics.json").read_text())
        assert metrics["seen_rows"] == seen
        assert load_artifact(directory).post == params.post


def write_fake_nab(root: Path) -> dict[str, NabSeries]:
    """Two short NAB-layout files (one with a labelled jump), windows and cost profiles."""
    with_anomaly = sine_series("artificialWithAnomaly/tiny_jump.csv", 800, seed=1)
    with_anomaly.values[600:620] += 8.0
    without = sine_series("artificialNoAnomaly/tiny_calm.csv", 800, seed=2)
    for series in (with_anomaly, without):
        path = root / "data" / series.key
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["timestamp", "value"])
            writer.writerows(zip(series.timestamps, series.values.tolist(), strict=True))
    windows = {
        with_anomaly.key: [[with_anomaly.timestamps[590], with_anomaly.timestamps[640]]],
        without.key: [],
    }
    (root / "combined_windows.json").write_text(json.dumps(windows))
    costs = {"standard": (1.0, 0.11, 1.0), "reward_low_FN_rate": (1.0, 0.11, 2.0)}
    profiles = {
        name: {"CostMatrix": {"tpWeight": tp, "fpWeight": fp, "fnWeight": fn, "tnWeight": 1.0}}
        for name, (tp, fp, fn) in costs.items()
    }
    (root / "config-profiles.json").write_text(json.dumps(profiles))
    return {s.key: s for s in (with_anomaly, without)}


def test_the_command_writes_nab_results_and_scores_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = write_fake_nab(tmp_path / "nab")
    params_path = tmp_path / "params.json"
    params_path.write_text(json.dumps(TINY.to_dict()))
    out = tmp_path / "results"

    args = ["evaluate", "nab", str(tmp_path / "nab"), "--out", str(out)]
    rc = cli.main([*args, "--params", str(params_path), "--no-progress", "--plot", "jump"])
    assert rc == 0, capsys.readouterr().err

    for key, series in written.items():
        category, name = key.split("/")
        path = out / category / f"{DETECTOR_NAME}_{name}"
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "label"]
        assert [r["timestamp"] for r in rows] == series.timestamps
        np.testing.assert_allclose([float(r["value"]) for r in rows], series.values)
        scores = np.array([float(r["anomaly_score"]) for r in rows])
        assert np.all((scores >= 0) & (scores <= 1))
        assert np.all(scores[: TINY.window - 1] == 0)
        labels = np.array([int(r["label"]) for r in rows])
        expected = np.zeros(len(rows), dtype=int)
        if "jump" in name:
            expected[590:641] = 1
        np.testing.assert_array_equal(labels, expected)

    # The results read back with the scorer's reader, and the run was scored per profile.
    windows = load_windows(tmp_path / "nab" / "combined_windows.json")
    assert set(read_results_dir(out, known_files=windows.keys())) == set(written)
    report = json.loads((out / "run.json").read_text())
    assert set(report["scores"]) == {"standard", "reward_low_FN_rate"}
    assert all(math.isfinite(v) for v in report["scores"].values())
    assert [f["key"] for f in report["files"]] == sorted(written)
    assert report["params"]["model"]["window"] == TINY.window
    assert "baseline" not in report
    # The --plot file is the shared score timeline, with the file's labelled window and the
    # alerts the processor opened after the probation.
    drawn = timeline_description(out / "plots" / "tiny_jump.png")
    jump_run = next(f for f in report["files"] if "jump" in f["key"])
    assert "800 values, 800 scores (streamae)" in drawn and "1 labelled windows" in drawn
    assert f"{len(jump_run['opened_ms'])} alerts opened" in drawn
    assert f"{len(jump_run['resolved_ms'])} resolved" in drawn
    assert f"threshold {jump_run['alert_threshold']:.6g}" in drawn
    assert not (out / "plots" / "tiny_calm.png").exists()
    printed = capsys.readouterr().out
    assert "NAB normalised scores on 2 files" in printed
    # Alert-level figures from the processor's own alerts, on the rows after the probation.
    jump, calm = (written[k] for k in sorted(written, reverse=True))
    files = {f["key"]: f for f in report["files"]}
    assert files[jump.key]["windows_ms"] == [[int(jump.ts_ms[590]), int(jump.ts_ms[640])]]
    assert files[calm.key]["windows_ms"] == []
    first_scored = {k: int(written[k].ts_ms[probation_length(800)]) for k in written}
    assert all(t >= first_scored[k] for k, f in files.items() for t in f["opened_ms"])
    pooled = report["alerts"]["pooled"]
    assert (pooled["windows"], pooled["rows"]) == (1, 2 * (800 - probation_length(800)))
    assert pooled["hits"] + pooled["misses"] == 1
    assert pooled["alerts_opened"] == sum(len(f["opened_ms"]) for f in files.values())
    assert set(report["alerts"]["files"]) == set(written)
    assert "windows hit" in printed and "pooled" in printed


def test_alert_figures_per_file_and_pooled() -> None:
    def run(key: str, opened: list[int], windows: list[tuple[int, int]]) -> FileRun:
        return FileRun(key, 1100, 100, [100], 0.0, 0.0, 0.0, opened, windows)

    runs = [
        run("a/x.csv", [50, 1_500, 1_700, 9_000], [(1_000, 2_000)]),
        run("b/y.csv", [], [(5_000, 6_000)]),
        run("c/z.csv", [7_000], []),
    ]
    per_file, pooled = alert_figures(runs)
    x = per_file["a/x.csv"]
    assert (x.windows, x.hits, x.false_alerts, x.median_delay_ms) == (1, 1, 2, 500.0)
    assert x.false_per_10k_rows == 20.0  # 2 false alerts on the 1000 scored rows
    assert (per_file["b/y.csv"].misses, per_file["b/y.csv"].median_delay_ms) == (1, None)
    assert (pooled.windows, pooled.hits, pooled.misses, pooled.false_alerts) == (2, 1, 1, 3)
    assert pooled.rows == 3000 and pooled.false_per_10k_rows == 10.0


def test_the_command_refuses_missing_arguments_and_bad_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["evaluate", "nab", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err
    write_fake_nab(tmp_path / "nab")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"no_such_parameter": 1}))
    args = ["evaluate", "nab", str(tmp_path / "nab"), "--out", str(tmp_path / "o")]
    rc = cli.main([*args, "--params", str(bad), "--no-progress"])
    assert rc == 2
    assert "no_such_parameter" in capsys.readouterr().err


@requires_nab
def test_a_real_nab_file_is_scored_beside_the_published_htm_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On NAB's shortest real file, the baseline column is NAB's published HTM detector:
    its rows are NAB's official ones at NAB's threshold, and the command scores them with the
    sweep over the files run, apart from our own detector's scores."""
    key = "realKnownCause/rogue_agent_key_hold.csv"
    params_path = tmp_path / "params.json"
    params_path.write_text(json.dumps(TINY.to_dict()))
    out = tmp_path / "results"
    htm_dir = NAB_DIR / "results-numenta"
    rc = cli.main(
        [
            *("evaluate", "nab", str(NAB_DIR), "--out", str(out), "--only", key),
            *("--params", str(params_path), "--baseline-dir", str(htm_dir), "--no-progress"),
        ]
    )
    assert rc == 0, capsys.readouterr().err

    report = json.loads((out / "run.json").read_text())
    assert [f["key"] for f in report["files"]] == [key]
    windows = load_windows(NAB_DIR / "combined_windows.json")
    profiles = load_profiles(NAB_DIR / "config-profiles.json")
    htm = read_results_dir(htm_dir, known_files=windows.keys())[key]
    official_thresholds = json.loads((NAB_DIR / "config-thresholds.json").read_text())["numenta"]
    for name, profile in profiles.items():
        # The baseline read is NAB's published output: at NAB's threshold, NAB's own file row.
        with (htm_dir / f"numenta_{name}_scores.csv").open(newline="") as handle:
            (row,) = [r for r in csv.DictReader(handle) if r["File"] == key]
        at_nab = score_file(*htm, windows[key], profile, official_thresholds[name]["threshold"])
        assert at_nab.score == pytest.approx(float(row["Score"]), abs=1e-6)
        assert (at_nab.tp, at_nab.fp, at_nab.fn) == (int(row["TP"]), int(row["FP"]), int(row["FN"]))
        # What the command reports for it: the sweep over the files run, on those rows.
        expected = score_corpus({key: htm}, windows, profile)
        assert report["baseline"]["scores"][name] == pytest.approx(expected.normalised_score)
        assert report["baseline"]["thresholds"][name] == pytest.approx(expected.threshold)
    assert report["baseline"]["scores"] != report["scores"]


@requires_nab
def test_labels_are_nab_labels_on_every_file() -> None:
    # NAB's own results files carry the label column: 1 on the rows of a window.
    windows = load_windows(NAB_DIR / "combined_windows.json")
    files = data_files(NAB_DIR)
    assert len(files) == 18
    for key, path in files.items():
        series = read_series(key, path)
        category, name = key.split("/")
        with (NAB_DIR / "results-numenta" / category / f"numenta_{name}").open() as handle:
            official = [int(row["label"]) for row in csv.DictReader(handle)]
        np.testing.assert_array_equal(row_labels(series.timestamps, windows[key]), official)


def test_fleet_mode_serves_every_file_with_one_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = write_fake_nab(tmp_path / "nab")
    params_path = tmp_path / "params.json"
    params_path.write_text(json.dumps(TINY.to_dict()))
    out = tmp_path / "results"
    args = ["evaluate", "nab", str(tmp_path / "nab"), "--out", str(out), "--fleet"]
    rc = cli.main([*args, "--params", str(params_path), "--no-progress", "--keep-artifacts"])
    assert rc == 0, capsys.readouterr().err

    # One artifact, fitted on the probationary rows of both files, per-stream scaling.
    assert [p.name for p in (out / "artifacts").iterdir()] == ["fleet"]
    fleet = load_artifact(out / "artifacts" / "fleet")
    assert fleet.scaling.mode == "stream" and fleet.post == TINY.post
    assert fleet.metrics["streams"] == 2
    report = json.loads((out / "run.json").read_text())
    assert report["mode"] == "fleet"
    assert all(math.isfinite(v) for v in report["scores"].values())
    results = read_results_dir(out, known_files=written.keys())
    for key in written:
        scores = results[key].anomaly_scores
        assert np.all((scores >= 0) & (scores <= 1))
        assert scores.max() > 0  # every stream was post-processed on its own
    assert report["alerts"]["pooled"]["windows"] == 1
