"""Scoring (stream_ae.core.scoring): calibrated scores mean what they say on normal data, grow with
the distance, ignore errors smaller than usual, and never depend on the batch a window is in."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from stream_ae.core.scoring import (
    Calibration,
    fit_calibration,
    fit_gpd,
    score_windows,
    window_errors,
)

STEPS = 16
# Correlated features on different scales, like the errors of a real multi-feature model.
MIXING = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 1.0]]) * [1.0, 2.0, 0.5]


def normal_residuals(rng: np.random.Generator, n: int, features: int = 3) -> np.ndarray:
    """Reconstruction residuals of normal windows (N, T, F)."""
    mixing = MIXING[:features, :features]
    return rng.normal(size=(n, STEPS, features)) @ mixing


def normal_errors(rng: np.random.Generator, n: int, features: int = 3) -> np.ndarray:
    residuals = normal_residuals(rng, n, features)
    return window_errors(residuals, np.zeros_like(residuals))[0]


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    return fit_calibration(normal_errors(np.random.default_rng(0), 5000), level=0.99)


# --- the alert rate on normal data ------------------------------------------------------------


@pytest.mark.parametrize("method", ["quantile", "far", "pot"])
@pytest.mark.parametrize(("level", "seed"), [(0.99, 1), (0.999, 2), (0.999, 3)])
def test_calibration_gives_the_intended_alert_rate_on_fresh_normal_data(
    method: str, level: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    cal = fit_calibration(normal_errors(rng, 20_000), method=method, level=level)  # type: ignore[arg-type]
    fresh = normal_errors(rng, 50_000)
    alert_rate = float(np.mean(cal.score(cal.distance(fresh)) >= cal.threshold))
    target = 1.0 - level
    # Seeded; across seeds the ratio stays within about [0.7, 1.4] (estimation error of a tail
    # quantile from 20k windows plus binomial noise of 50-500 expected alerts).
    assert 0.5 * target <= alert_rate <= 2.0 * target, (alert_rate, target)
    assert cal.details["level"] == level and cal.method == method
    assert 0.0 < cal.threshold <= 1.0


def test_far_extrapolates_beyond_the_calibration_data() -> None:
    """A 1e-4 false-alert rate from 10k windows (one expected exceedance): only the fitted
    tail can say where that threshold lies."""
    rng = np.random.default_rng(4)
    cal = fit_calibration(normal_errors(rng, 10_000), method="far", level=0.9999)
    fresh = normal_errors(rng, 200_000)
    alert_rate = float(np.mean(cal.score(cal.distance(fresh)) >= cal.threshold))
    assert 0.2e-4 <= alert_rate <= 5e-4, alert_rate


def test_scores_of_normal_data_are_roughly_uniform(calibration: Calibration) -> None:
    fresh = normal_errors(np.random.default_rng(5), 20_000)
    scores = calibration.score(calibration.distance(fresh))
    # One-sided distances are 0 for many windows (all errors below the mean), so the body
    # has an atom at its bottom; above it the score is the normal-data CDF.
    for q in (0.5, 0.8, 0.9, 0.95, 0.99):
        assert abs(float(np.mean(scores <= q)) - q) < 0.02, q


# --- shape of the score -----------------------------------------------------------------------


@st.composite
def fitted_calibrations(draw: st.DrawFn) -> Calibration:
    """Calibrations fitted on normal, heavy-tailed, light-tailed or tied data of any size."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(20, 3000))
    features = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["normal", "student", "uniform", "rounded"]))
    rng = np.random.default_rng(seed)
    if kind == "normal":
        errors = normal_errors(rng, n, features)
    elif kind == "student":
        errors = rng.standard_t(3, size=(n, features))
    elif kind == "uniform":
        errors = rng.uniform(size=(n, features))
    else:
        errors = np.round(rng.normal(size=(n, features)), 1)
    return fit_calibration(
        errors,
        method=draw(st.sampled_from(["quantile", "far", "pot"])),
        level=draw(st.sampled_from([0.9, 0.99, 0.999])),
        tail_fraction=draw(st.sampled_from([0.02, 0.05, 0.1])),
    )


@settings(max_examples=60, deadline=None)
@given(cal=fitted_calibrations(), extra=st.lists(st.floats(0, 1e6), max_size=50))
def test_scores_are_in_0_1_and_monotone_in_distance(cal: Calibration, extra: list[float]) -> None:
    u = cal.tail_start
    probes = np.concatenate(
        [
            cal.ref_distances,
            [0.0, u, np.nextafter(u, 0.0), np.nextafter(u, np.inf), u + 1e-9, u * 1.5 + 1],
            np.linspace(0, 3 * cal.ref_distances[-1] + 1, 500),
            np.geomspace(1e-6, 1e9, 100),
            extra,
            [np.inf],
        ]
    )
    distances = np.sort(probes)
    scores = cal.score(distances)
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert np.all(np.diff(scores) >= 0.0), distances[np.argmin(np.diff(scores))]
    assert cal.score(np.array([np.inf]))[0] == 1.0


@settings(max_examples=60, deadline=None)
@given(cal=fitted_calibrations(), score=st.floats(0.5, 0.99999))
def test_inverse_score_inverts_score(cal: Calibration, score: float) -> None:
    distance = cal.inverse_score(score)
    recovered = cal.score(np.array([distance]))[0]
    # Windows at the threshold distance or beyond always reach the threshold score.
    assert recovered >= score - 1e-9
    # Exactly inverse except on a plateau of the body (tied normal distances: a step CDF).
    tied = np.count_nonzero(cal.ref_distances == distance) > 1
    if not tied and (
        cal.ref_distances[0] < distance < cal.ref_distances[-1] or distance > cal.tail_start
    ):
        assert recovered == pytest.approx(score, abs=1e-6)


def test_threshold_distance_separates_alerting_windows(calibration: Calibration) -> None:
    d_thr = calibration.threshold_distance()
    below, above = calibration.score(np.array([d_thr * 0.999, d_thr * 1.001]))
    assert below < calibration.threshold <= above


def test_one_sided_distance_ignores_smaller_than_usual_errors(calibration: Calibration) -> None:
    mean = calibration.error_mean
    assert calibration.distance(mean[None, :])[0] == 0.0
    much_better = mean - 5.0  # reconstructed unusually well: not an anomaly
    assert calibration.distance(much_better[None, :])[0] == 0.0
    assert calibration.score(calibration.distance(much_better[None, :]))[0] == pytest.approx(
        calibration.score(np.array([0.0]))[0]
    )
    one_up = mean + np.array([2.0, 0.0, 0.0])
    mixed = mean + np.array([2.0, -3.0, -1.0])  # smaller errors elsewhere do not cancel it
    assert calibration.distance(mixed[None, :])[0] == calibration.distance(one_up[None, :])[0] > 0
    # Larger-than-usual errors do count, the more the larger.
    steps = mean + np.outer([0.1, 0.5, 1.0, 2.0], [1.0, 1.0, 1.0])
    assert np.all(np.diff(calibration.distance(steps)) > 0)


def test_a_two_sided_distance_would_differ(calibration: Calibration) -> None:
    """The one-sidedness is real: the full Mahalanobis distance of a below-mean error is not 0."""
    delta = np.array([-2.0, -2.0, -2.0])
    two_sided = float(np.sqrt(delta @ calibration.precision @ delta))
    assert two_sided > 1.0
    assert calibration.distance((calibration.error_mean + delta)[None, :])[0] == 0.0


# --- the generalised Pareto tail --------------------------------------------------------------


@pytest.mark.parametrize(("shape", "scale"), [(-0.3, 1.0), (0.0, 2.0), (0.2, 0.5), (0.4, 3.0)])
def test_gpd_fit_recovers_known_shape_and_scale(shape: float, scale: float) -> None:
    sample = stats.genpareto.rvs(shape, scale=scale, size=5000, random_state=11)
    fitted_shape, fitted_scale = fit_gpd(sample)
    assert fitted_shape == pytest.approx(shape, abs=0.08)
    assert fitted_scale == pytest.approx(scale, rel=0.1)


def test_gpd_fit_degenerate_inputs() -> None:
    assert fit_gpd(np.array([1.0, 2.0])) == (0.0, 1.5)  # too few points: exponential
    assert fit_gpd(np.zeros(50))[1] > 0  # no spread: a positive scale all the same
    shape, _ = fit_gpd(stats.genpareto.rvs(2.0, size=2000, random_state=1))
    assert shape == 0.5  # capped: heavier tails are not credible from a sample


# --- serialisation, contributions, batch independence -----------------------------------------


def test_to_dict_from_dict_round_trip_through_json(calibration: Calibration) -> None:
    data = json.loads(json.dumps(calibration.to_dict()))
    restored = Calibration.from_dict(data)
    for name in ("error_mean", "precision", "ref_distances"):
        assert np.array_equal(getattr(restored, name), getattr(calibration, name)), name
    for name in ("tail_start", "tail_prob", "tail_shape", "tail_scale", "threshold", "method"):
        assert getattr(restored, name) == getattr(calibration, name), name
    assert restored.details == calibration.details
    errors = normal_errors(np.random.default_rng(8), 1000)
    assert np.array_equal(
        restored.score(restored.distance(errors)), calibration.score(calibration.distance(errors))
    )


@settings(max_examples=100, deadline=None)
@given(
    errors=st.lists(st.lists(st.floats(-20, 20), min_size=3, max_size=3), min_size=1, max_size=30)
)
def test_contributions_are_shares_that_sum_to_one(
    calibration: Calibration, errors: list[list[float]]
) -> None:
    shares = calibration.contributions(np.array(errors))
    assert shares.shape == (len(errors), 3)
    assert np.all((shares >= 0) & (shares <= 1))
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-12)


def test_contributions_point_at_the_feature_in_excess(calibration: Calibration) -> None:
    mean = calibration.error_mean
    rows = np.array([mean + np.array([0.0, 3.0, -1.0]), mean - 1.0])
    shares = calibration.contributions(rows)
    assert shares[0].tolist() == [0.0, 1.0, 0.0]
    assert shares[1].tolist() == pytest.approx([1 / 3] * 3)  # nothing in excess: uniform


def test_directions_follow_the_largest_deviation() -> None:
    targets = np.zeros((2, 4, 2))
    outputs = np.zeros((2, 4, 2))
    targets[0, 2, 0] = 5.0  # spike above the reconstruction in feature 0
    outputs[0, :, 0] = 0.5  # the model lifted its whole reconstruction towards it
    targets[1, 1, 1] = -4.0  # dip below in feature 1
    cal = fit_calibration(normal_errors(np.random.default_rng(2), 200, features=2), level=0.99)
    scored = score_windows(cal, targets, outputs)
    assert scored.directions[0, 0] == 1 and scored.directions[1, 1] == -1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 200), data=st.data())
def test_scores_of_a_window_do_not_depend_on_its_batch(
    calibration: Calibration, seed: int, n: int, data: st.DataObject
) -> None:
    rng = np.random.default_rng(seed)
    targets = normal_residuals(rng, n) * rng.uniform(0.5, 3.0, size=(n, 1, 1))
    outputs = rng.normal(scale=0.1, size=targets.shape)
    whole = score_windows(calibration, targets, outputs)
    order = np.array(data.draw(st.permutations(range(n)), label="order"))
    cut = data.draw(st.integers(0, n), label="cut")
    parts = [order[:cut], order[cut:]]
    for rows in parts:
        if not len(rows):
            continue
        part = score_windows(calibration, targets[rows], outputs[rows])
        for name in ("distances", "scores", "contributions", "directions"):
            assert np.array_equal(getattr(part, name), getattr(whole, name)[rows]), name


def test_fit_calibration_refuses_too_little_data_or_a_bad_level() -> None:
    with pytest.raises(ValueError, match="at least 20"):
        fit_calibration(np.zeros((19, 2)))
    with pytest.raises(ValueError, match="at least 20"):
        fit_calibration(np.zeros(100))
    with pytest.raises(ValueError, match="level"):
        fit_calibration(np.random.default_rng(0).normal(size=(100, 1)), level=1.0)
