"""Tests of the NAB v1.1 scorer reimplementation (training.evaluation.nab_score).

The oracle is NAB itself: fed NAB's published results of its "numenta" (HTM) detector, our scorer
must give the per-file rows of NAB's ``numenta_<profile>_scores.csv``. Properties and small
hand-computed cases cover what that one detector does not exercise.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_ae.cli import app as cli
from tests.support.paths import NAB_DIR, requires_nab
from training.evaluation import cli as evaluate_cmd
from training.evaluation.nab_score import (
    CostProfile,
    DetectorOutput,
    NABScoringError,
    load_profiles,
    load_windows,
    nab_key,
    probation_length,
    read_results_csv,
    read_results_dir,
    scaled_sigmoid,
    score_corpus,
    score_file,
    sweep_thresholds,
    window_bounds,
)

PROFILE_NAMES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


STANDARD = CostProfile("standard", tp_weight=1.0, fp_weight=0.11, fn_weight=1.0)
FIVE_MINUTES = np.timedelta64(5, "m")
START = np.datetime64("2014-04-01T00:00:00", "us")


def stamps(n_rows: int) -> np.ndarray:
    """``n_rows`` timestamps five minutes apart, as NAB's artificial files have them."""
    return START + FIVE_MINUTES * np.arange(n_rows)


def window_at(first: int, last: int) -> tuple[np.datetime64, np.datetime64]:
    """The window covering rows ``first..last`` of ``stamps(...)``."""
    return (START + FIVE_MINUTES * first, START + FIVE_MINUTES * last)


# --- the official oracle ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nab_windows() -> dict:
    return load_windows(NAB_DIR / "combined_windows.json")


@pytest.fixture(scope="module")
def nab_profiles() -> dict[str, CostProfile]:
    return load_profiles(NAB_DIR / "config-profiles.json")


@pytest.fixture(scope="module")
def htm_results(nab_windows: dict) -> dict[str, DetectorOutput]:
    return read_results_dir(NAB_DIR / "results-numenta", known_files=nab_windows.keys())


def official_rows(profile: str) -> list[dict[str, str]]:
    with open(NAB_DIR / "results-numenta" / f"numenta_{profile}_scores.csv", newline="") as f:
        return list(csv.DictReader(f))


def official_threshold(profile: str) -> float:
    thresholds = json.loads((NAB_DIR / "config-thresholds.json").read_text())
    return float(thresholds["numenta"][profile]["threshold"])


@requires_nab
@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_reproduces_official_per_file_rows(
    profile: str, nab_windows: dict, nab_profiles: dict, htm_results: dict
) -> None:
    rows = official_rows(profile)
    assert len(rows) == 18
    assert {row["File"] for row in rows} == set(htm_results)

    scored = score_corpus(
        htm_results, nab_windows, nab_profiles[profile], threshold=official_threshold(profile)
    )

    mismatches = []
    for row in rows:
        got = scored.files[row["File"]]
        expected_counts = tuple(int(row[c]) for c in ("TP", "TN", "FP", "FN", "Total_Count"))
        got_counts = (got.tp, got.tn, got.fp, got.fn, got.total)
        if abs(got.score - float(row["Score"])) > 1e-6 or got_counts != expected_counts:
            mismatches.append((row["File"], row["Score"], expected_counts, got.score, got_counts))
    assert not mismatches, mismatches


@requires_nab
@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_optimised_threshold_scores_at_least_the_official_one(
    profile: str, nab_windows: dict, nab_profiles: dict, htm_results: dict
) -> None:
    official_raw = math.fsum(float(row["Score"]) for row in official_rows(profile))

    best = score_corpus(htm_results, nab_windows, nab_profiles[profile])
    curve = sweep_thresholds(htm_results, nab_windows, nab_profiles[profile])

    assert best.raw_score >= official_raw - 1e-9
    assert best.threshold == curve.best_threshold
    assert best.raw_score == pytest.approx(curve.best_score, abs=1e-9)
    assert best.raw_score == pytest.approx(max(curve.scores), abs=1e-9)
    # 18 files, 25 windows: null and perfect as NAB's normalisation defines them.
    assert best.perfect_score == 25 * nab_profiles[profile].tp_weight
    assert best.null_score == -25 * nab_profiles[profile].fn_weight
    assert 0.0 < best.normalised_score < 100.0


@requires_nab
def test_sweep_agrees_with_per_file_scoring_on_htm(
    nab_windows: dict, nab_profiles: dict, htm_results: dict
) -> None:
    profile = nab_profiles["standard"]
    curve = sweep_thresholds(htm_results, nab_windows, profile)
    assert np.all(np.diff(curve.thresholds) < 0)
    picks = np.unique(np.linspace(0, len(curve.thresholds) - 1, 15).astype(int))
    for i in [*picks, curve.best_index]:
        scored = score_corpus(htm_results, nab_windows, profile, threshold=curve.thresholds[i])
        # Relative tolerance: the sweep sums ~10^5 false-positive weights one after another.
        assert scored.raw_score == pytest.approx(curve.scores[i], rel=1e-12, abs=1e-9)
        assert sum(f.tp for f in scored.files.values()) == curve.tp[i]
        assert sum(f.fp for f in scored.files.values()) == curve.fp[i]
        assert sum(f.tn for f in scored.files.values()) == curve.tn[i]
        assert sum(f.fn for f in scored.files.values()) == curve.fn[i]
    # The official threshold lies between two candidates: the curve there is NAB's total.
    at = int(np.flatnonzero(curve.thresholds >= official_threshold("standard"))[-1])
    official_raw = math.fsum(float(row["Score"]) for row in official_rows("standard"))
    assert curve.scores[at] == pytest.approx(official_raw, abs=1e-6)


# --- hand-computed cases ------------------------------------------------------------------------


def test_scaled_sigmoid_matches_nab_values() -> None:
    values = scaled_sigmoid([-1.0, -0.5, 0.0, 1.0, 2.999, 3.0, 50.0])
    assert values[0] == pytest.approx(0.98661, abs=1e-5)
    assert values[1] == pytest.approx(0.84828, abs=1e-5)
    assert values[2] == 0.0
    assert values[3] == pytest.approx(-0.98661, abs=1e-5)
    assert -1.0 < values[4] < -0.99999
    assert values[5] == -1.0 and values[6] == -1.0


def test_probation_length_is_15_percent_capped_at_750_rows() -> None:
    assert probation_length(4032) == 604
    assert probation_length(1882) == 282
    assert probation_length(5000) == 750
    assert probation_length(18050) == 750
    assert probation_length(10) == 1
    assert probation_length(100, probation_percent=0.0) == 0


def test_hand_computed_file_score() -> None:
    n = 100
    window = window_at(40, 49)  # width 10
    scores = np.zeros(n)
    scores[[20, 45, 47, 59]] = 1.0  # FP before any window, two TPs, FP 10 rows past the window
    got = score_file(stamps(n), scores, [window], STANDARD, 0.5, probation_percent=0.0)

    max_tp = scaled_sigmoid(-1.0)
    tp = scaled_sigmoid(-(49 - 45 + 1) / 10) / max_tp  # only the earliest detection counts
    fp_after = 0.11 * scaled_sigmoid(10 / 9)  # distance in (width - 1) units, as NAB has it
    assert got.score == pytest.approx(tp - 0.11 + fp_after, abs=1e-12)
    assert (got.tp, got.fp, got.fn, got.tn, got.total) == (2, 2, 8, 88, 100)


def test_earliest_detection_is_worth_the_full_tp_weight_and_a_miss_the_fn_weight() -> None:
    profile = CostProfile("p", tp_weight=2.0, fp_weight=0.3, fn_weight=1.5)
    windows = [window_at(30, 39), window_at(60, 69)]
    scores = np.zeros(100)
    scores[30] = 0.9  # first row of the first window; the second window is missed
    got = score_file(stamps(100), scores, windows, profile, 0.5, probation_percent=0.0)
    assert got.score == pytest.approx(2.0 - 1.5, abs=1e-12)


def test_probationary_rows_are_neither_scored_nor_counted() -> None:
    n = 200  # 30 probationary rows
    scores = np.ones(n) * 0.0
    scores[:30] = 1.0  # detections inside the probationary period: ignored
    got = score_file(stamps(n), scores, [window_at(5, 15)], STANDARD, 0.5)
    # The window lies wholly in the probationary period: no reward, no miss.
    assert (got.score, got.tp, got.fp, got.tn, got.fn, got.total) == (0.0, 0, 0, 170, 0, 200)


def test_window_partly_in_probation_is_still_missed() -> None:
    got = score_file(stamps(200), np.zeros(200), [window_at(20, 40)], STANDARD, 0.5)
    assert got.score == -1.0
    assert got.fn == 11  # rows 30..40


def test_a_window_reaching_into_the_probation_keeps_its_whole_width() -> None:
    """NAB's probationary-window rule, on constructed windows: rows in the probationary period
    are not scored, but a window's rows there still count in its width and in the position of
    a later detection, and a window wholly in the probation still softens the cost of the
    false positives after it."""
    n = 200
    assert probation_length(n) == 30

    straddling = window_at(20, 39)  # width 20, its first 10 rows in the probation
    scores = np.zeros(n)
    scores[[25, 32]] = 1.0  # 25: in the probation, ignored; 32: the earliest scored detection
    got = score_file(stamps(n), scores, [straddling], STANDARD, 0.5)
    # Position from the whole window (width 20), not from its 10 scored rows.
    tp = scaled_sigmoid(-(39 - 32 + 1) / 20) / scaled_sigmoid(-1.0)
    assert got.score == pytest.approx(tp, abs=1e-12)
    assert (got.tp, got.fn, got.fp, got.tn) == (1, 9, 0, 160)

    before = window_at(0, 27)  # width 28, wholly in the probation: neither reward nor miss
    scores = np.zeros(n)
    scores[31] = 1.0  # a false positive 4 rows after that window's end
    got = score_file(stamps(n), scores, [before], STANDARD, 0.5)
    fp = 0.11 * scaled_sigmoid((31 - 27) / 27)  # not the full -0.11: the window precedes it
    assert got.score == pytest.approx(fp, abs=1e-12) and got.score > -0.05
    assert (got.tp, got.fn, got.fp) == (0, 0, 1)


def test_nan_scores_are_never_detections() -> None:
    scores = np.full(100, np.nan)
    got = score_file(stamps(100), scores, [window_at(50, 59)], STANDARD, 0.0)
    assert (got.score, got.tp, got.fp) == (-1.0, 0, 0)
    curve = sweep_thresholds({"a/x.csv": (stamps(100), scores)}, {"a/x.csv": []}, STANDARD)
    assert len(curve.thresholds) == 1 and curve.scores[0] == 0.0


def test_sweep_breaks_ties_towards_the_highest_threshold() -> None:
    scores = np.zeros(100)
    scores[40], scores[45] = 0.9, 0.8  # the later detection adds nothing to the window
    results = {"a/x.csv": (stamps(100), scores)}
    curve = sweep_thresholds(results, {"a/x.csv": [window_at(40, 49)]}, STANDARD, 0.0)
    assert curve.best_threshold == 0.9
    assert curve.best_score == pytest.approx(1.0)


def test_windows_follow_row_order_not_time_order() -> None:
    # One NAB file steps back in time once; NAB indexes windows by row, first exact match.
    times = stamps(10)
    times[6] = times[2] - FIVE_MINUTES * 100
    bounds = window_bounds(times, [(times[3], times[8])])
    assert bounds.tolist() == [[3, 8]]


def test_bad_windows_raise() -> None:
    with pytest.raises(NABScoringError, match="no row"):
        window_bounds(stamps(10), [window_at(20, 30)])
    with pytest.raises(NABScoringError, match="overlaps"):
        window_bounds(stamps(50), [window_at(10, 20), window_at(15, 30)])
    with pytest.raises(NABScoringError, match="anomaly scores"):
        score_file(stamps(10), np.zeros(9), [], STANDARD, 0.5)


def test_window_ends_missing_from_the_file_snap_to_rows_inside() -> None:
    start, end = window_at(10, 20)
    bounds = window_bounds(stamps(50), [(start - np.timedelta64(1, "m"), end + FIVE_MINUTES / 2)])
    assert bounds.tolist() == [[10, 20]]


def test_nab_key_maps_both_file_namings() -> None:
    known = {"realKnownCause/nyc_taxi.csv", "realKnownCause/taxi.csv", "a/b.csv"}
    assert nab_key("realKnownCause", "numenta_nyc_taxi.csv", known) == "realKnownCause/nyc_taxi.csv"
    assert nab_key("realKnownCause", "nyc_taxi.csv", known) == "realKnownCause/nyc_taxi.csv"
    assert nab_key("realKnownCause", "lstm_ae_taxi.csv", known) == "realKnownCause/taxi.csv"
    assert nab_key("a", "my_det_b.csv", detector="my_det") == "a/b.csv"
    assert nab_key("a", "b.csv") == "a/b.csv"


def test_read_results_dir_reads_both_namings_and_skips_summaries(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    body = "timestamp,value,anomaly_score,label\n2014-04-01 00:00:00,1.0,0.25,0\n"
    (tmp_path / "cat" / "det_one_file.csv").write_text(body)
    (tmp_path / "cat" / "two.csv").write_text(body.replace("0.25", ""))
    (tmp_path / "cat" / "det_standard_scores.csv").write_text("Detector,Score\n")
    (tmp_path / "det_standard_scores.csv").write_text("Detector,Score\n")

    results = read_results_dir(tmp_path, known_files={"cat/one_file.csv", "cat/two.csv"})

    assert sorted(results) == ["cat/one_file.csv", "cat/two.csv"]
    assert results["cat/one_file.csv"].anomaly_scores.tolist() == [0.25]
    assert math.isnan(results["cat/two.csv"].anomaly_scores[0])
    assert results["cat/two.csv"].timestamps[0] == np.datetime64("2014-04-01T00:00")


def test_read_results_csv_needs_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("timestamp,value\n2014-04-01 00:00:00,1\n")
    with pytest.raises(NABScoringError, match="anomaly_score"):
        read_results_csv(path)


def test_unknown_result_file_raises() -> None:
    with pytest.raises(NABScoringError, match="no labelled windows"):
        score_corpus({"x/y.csv": (stamps(10), np.zeros(10))}, {}, STANDARD)


# --- properties ---------------------------------------------------------------------------------

profiles = st.builds(
    CostProfile,
    name=st.just("random"),
    tp_weight=st.floats(0.5, 2.0),
    fp_weight=st.floats(0.01, 1.0),
    fn_weight=st.floats(0.5, 3.0),
)


@st.composite
def labelled_files(draw: st.DrawFn, min_windows: int = 0) -> tuple[int, list[tuple[int, int]]]:
    """A file length and non-overlapping windows (>= 2 rows) after its probationary period."""
    n = draw(st.integers(40, 300))
    k = draw(st.integers(min_windows, 3))
    edges = draw(
        st.lists(
            st.integers(probation_length(n), n - 1), min_size=2 * k, max_size=2 * k, unique=True
        )
    )
    edges.sort()
    return n, [(edges[2 * i], edges[2 * i + 1]) for i in range(k)]


def corpus_of(files: list[tuple[int, list[tuple[int, int]]]], seed: int) -> tuple[dict, dict]:
    """Results with coarse random scores (many ties) and the windows, for ``files``."""
    rng = np.random.default_rng(seed)
    results, windows = {}, {}
    for i, (n, spans) in enumerate(files):
        key = f"cat/file{i}.csv"
        results[key] = (stamps(n), np.round(rng.random(n), 1))
        windows[key] = [window_at(a, b) for a, b in spans]
    return results, windows


@settings(max_examples=60, deadline=None)
@given(st.lists(labelled_files(), min_size=1, max_size=3), profiles, st.integers(0, 2**32 - 1))
def test_sweep_curve_equals_per_file_scores_at_every_threshold(
    files: list, profile: CostProfile, seed: int
) -> None:
    results, windows = corpus_of(files, seed)
    curve = sweep_thresholds(results, windows, profile)
    for i, threshold in enumerate(curve.thresholds):
        rows = [
            score_file(t, s, windows[key], profile, float(threshold))
            for key, (t, s) in results.items()
        ]
        assert curve.scores[i] == pytest.approx(sum(r.score for r in rows), abs=1e-9)
        assert (curve.tp[i], curve.tn[i], curve.fp[i], curve.fn[i]) == (
            sum(r.tp for r in rows),
            sum(r.tn for r in rows),
            sum(r.fp for r in rows),
            sum(r.fn for r in rows),
        )
    best = score_corpus(results, windows, profile)
    assert best.raw_score >= max(curve.scores) - 1e-9
    # Detecting nothing is always a candidate: the optimum is never below the null detector.
    assert best.raw_score >= best.null_score - 1e-9


@settings(max_examples=60, deadline=None)
@given(st.lists(labelled_files(min_windows=1), min_size=1, max_size=3), profiles)
def test_perfect_detector_scores_100_and_null_detector_0(files: list, profile: CostProfile) -> None:
    perfect, null, windows = {}, {}, {}
    for i, (n, spans) in enumerate(files):
        key = f"cat/file{i}.csv"
        scores = np.zeros(n)
        scores[[a for a, _ in spans]] = 1.0  # one detection, on the first row of each window
        perfect[key] = (stamps(n), scores)
        null[key] = (stamps(n), np.zeros(n))
        windows[key] = [window_at(a, b) for a, b in spans]

    assert score_corpus(perfect, windows, profile).normalised_score == pytest.approx(100.0)
    assert score_corpus(perfect, windows, profile, threshold=0.5).normalised_score == (
        pytest.approx(100.0)
    )
    assert score_corpus(null, windows, profile, threshold=0.5).normalised_score == (
        pytest.approx(0.0, abs=1e-9)
    )


@settings(max_examples=80, deadline=None)
@given(labelled_files(min_windows=1), profiles, st.data())
def test_false_positive_lowers_and_earlier_detection_raises_the_score(
    file: tuple[int, list[tuple[int, int]]], profile: CostProfile, data: st.DataObject
) -> None:
    n, spans = file
    windows = [window_at(a, b) for a, b in spans]
    inside = {i for a, b in spans for i in range(a, b + 1)}
    first_scored = probation_length(n)
    base = np.zeros(n)

    # A detection outside every window, after the probationary period, strictly costs.
    outside = [i for i in range(first_scored, n) if i not in inside]
    if outside:
        row = data.draw(st.sampled_from(outside))
        with_fp = base.copy()
        with_fp[row] = 1.0
        before = score_file(stamps(n), base, windows, profile, 0.5).score
        after = score_file(stamps(n), with_fp, windows, profile, 0.5).score
        assert after < before

    # Within a window, an earlier first detection is worth strictly more.
    a, b = data.draw(st.sampled_from(spans))
    late = data.draw(st.integers(a + 1, b))
    early = data.draw(st.integers(a, late - 1))
    late_scores, early_scores = base.copy(), base.copy()
    late_scores[late], early_scores[early] = 1.0, 1.0
    late_score = score_file(stamps(n), late_scores, windows, profile, 0.5).score
    early_score = score_file(stamps(n), early_scores, windows, profile, 0.5).score
    assert early_score > late_score


@settings(max_examples=40, deadline=None)
@given(labelled_files(), profiles, st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_score_never_rises_with_the_fp_weight(
    file: tuple[int, list[tuple[int, int]]], profile: CostProfile, threshold: float, seed: int
) -> None:
    n, spans = file
    scores = np.random.default_rng(seed).random(n)
    windows = [window_at(a, b) for a, b in spans]
    heavier = CostProfile("heavier", profile.tp_weight, profile.fp_weight * 2, profile.fn_weight)
    light = score_file(stamps(n), scores, windows, profile, threshold)
    heavy = score_file(stamps(n), scores, windows, heavier, threshold)
    assert heavy.score <= light.score + 1e-12
    assert (heavy.tp, heavy.fp, heavy.tn, heavy.fn) == (light.tp, light.fp, light.tn, light.fn)


# --- the CLI ------------------------------------------------------------------------------------


@requires_nab
def test_cli_evaluate_score_writes_scores_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nab_windows: dict, nab_profiles: dict
) -> None:
    results_dir = tmp_path / "results-numenta"
    shutil.copytree(NAB_DIR / "results-numenta", results_dir)
    # The baseline: the null detector (HTM's files with every anomaly score 0), which NAB's
    # normalisation puts at exactly 0.
    null_dir = tmp_path / "null"
    for path in (NAB_DIR / "results-numenta").glob("*/numenta_*.csv"):
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        target = null_dir / path.parent.name / path.name.replace("numenta_", "null_", 1)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=["timestamp", "value", "anomaly_score"], extrasaction="ignore"
            )
            writer.writeheader()
            for row in rows:
                writer.writerow({**row, "anomaly_score": 0.0})

    rc = cli.main(
        [
            "evaluate",
            "score",
            str(results_dir),
            "--windows",
            str(NAB_DIR / "combined_windows.json"),
            "--profiles",
            str(NAB_DIR / "config-profiles.json"),
            "--baseline-dir",
            str(null_dir),
        ]
    )

    assert rc == 0
    out = capsys.readouterr().out
    report = json.loads((results_dir / "scores.json").read_text())
    assert set(report["scores"]) == set(PROFILE_NAMES)
    htm = read_results_dir(NAB_DIR / "results-numenta", known_files=nab_windows.keys())
    for name in PROFILE_NAMES:
        expected = score_corpus(htm, nab_windows, nab_profiles[name])
        written = report["scores"][name]
        assert written["threshold"] == expected.threshold
        assert written["normalised_score"] == pytest.approx(expected.normalised_score)
        assert len(written["files"]) == 18
        baseline = report["baseline"]["scores"][name]
        assert baseline["normalised_score"] == 0.0
        assert baseline["raw_score"] == pytest.approx(expected.null_score)
        assert name in out and f"{expected.normalised_score:.2f}" in out
    assert "realKnownCause/nyc_taxi.csv" in out


def test_cli_evaluate_score_requires_windows_and_profiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "score", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--windows" in capsys.readouterr().err


def test_cli_evaluate_score_reports_a_missing_results_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    windows = tmp_path / "windows.json"
    windows.write_text("{}")
    profiles = tmp_path / "profiles.json"
    costs = {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 1.0, "tnWeight": 1.0}
    profiles.write_text(json.dumps({"standard": {"CostMatrix": costs}}))
    rc = cli.main(
        [
            "evaluate",
            "score",
            str(tmp_path / "nowhere"),
            "--windows",
            str(windows),
            "--profiles",
            str(profiles),
        ]
    )
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_has_a_nab_subcommand_handled_by_nab_run() -> None:
    parser = cli.build_parser(only="evaluate")
    args = parser.parse_args(["evaluate", "nab"])
    assert args.evaluate_handler is evaluate_cmd._run_nab
    if importlib.util.find_spec("training.evaluation.nab_run") is None:
        assert evaluate_cmd.run(args) == 2
