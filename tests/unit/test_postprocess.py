"""Tests of the streaming anomaly likelihood (stream_ae.core.postprocess)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_ae.core.postprocess import (
    DAY_MS,
    DEFAULT_RANGE,
    LIKELIHOOD,
    RANGE,
    SEASONAL,
    DistanceParams,
    LikelihoodParams,
    PostParams,
    RangeParams,
    SeasonalParams,
    hold_peaks,
    likelihood_scores,
    new_hold_state,
    new_post_state,
    new_state,
    post_batch,
    post_scores,
    seasonal_scores,
    tail_score,
)

SMALL = LikelihoodParams(short_window=4, long_window=30, learning_windows=10, min_std=0.01)


def run_all(params: LikelihoodParams, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return likelihood_scores(params, new_state(params), raw)


def noise(n: int, seed: int = 0, level: float = 1.0) -> np.ndarray:
    return level + 0.1 * np.random.default_rng(seed).standard_normal(n)


@settings(max_examples=60, deadline=None)
@given(
    raw=st.lists(st.one_of(st.floats(0.0, 50.0), st.just(math.nan)), min_size=1, max_size=120),
    cuts=st.lists(st.integers(0, 120), max_size=6),
)
def test_any_split_into_batches_gives_the_same_scores_and_state(
    raw: list[float], cuts: list[int]
) -> None:
    values = np.asarray(raw)
    whole, whole_state = run_all(SMALL, values)
    state = new_state(SMALL)
    parts = []
    bounds = sorted({0, len(values), *(c for c in cuts if c <= len(values))})
    for lo, hi in itertools.pairwise(bounds):
        scores, state = likelihood_scores(SMALL, state, values[lo:hi])
        parts.append(scores)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    np.testing.assert_array_equal(state, whole_state)


def test_state_is_a_small_fixed_size_array_and_input_state_is_not_modified() -> None:
    state = new_state(SMALL)
    before = state.copy()
    _, after = likelihood_scores(SMALL, state, noise(500))
    assert after.shape == state.shape == (SMALL.state_size,) == (5 + SMALL.short_window,)
    np.testing.assert_array_equal(state, before)
    assert after[0] == 500  # windows seen


def test_nothing_is_reported_during_the_learning_period() -> None:
    scores, _ = run_all(SMALL, np.r_[noise(5), 100.0, noise(20)])
    assert np.all(scores[: SMALL.learning_windows] == 0.0)
    assert scores[SMALL.learning_windows] > 0.0


def test_nan_scores_nan_and_leaves_the_state_alone() -> None:
    _, state = run_all(SMALL, noise(40))
    scores, same = likelihood_scores(SMALL, state, np.array([math.nan, math.nan]))
    assert np.all(np.isnan(scores))
    np.testing.assert_array_equal(same, state)


def test_history_matches_the_mean_and_variance_of_the_smoothed_scores() -> None:
    # Within long_window windows the weights are equal: the state holds the plain mean and
    # (population) variance of the moving averages seen so far.
    params = LikelihoodParams(short_window=3, long_window=1000, learning_windows=0)
    raw = noise(200, seed=3)
    _, state = run_all(params, raw)
    smoothed = np.array([raw[max(0, i - 2) : i + 1].mean() for i in range(len(raw))])
    assert state[1] == pytest.approx(smoothed.mean(), rel=1e-12)
    assert state[2] == pytest.approx(smoothed.var(), rel=1e-9)


def test_a_jump_scores_high_at_once_and_fades_as_the_history_absorbs_it() -> None:
    params = LikelihoodParams(short_window=5, long_window=200, learning_windows=50, decades=10)
    raw = np.r_[noise(400, seed=1), noise(600, seed=2, level=3.0)]
    scores, _ = run_all(params, raw)
    before, onset, late = scores[300:400], scores[400:410], scores[-100:]
    assert before.max() < 0.3
    assert onset.max() == 1.0  # far beyond 10 decades of tail probability
    assert late.max() < 0.3  # the new level is the new normal


def test_clipping_keeps_one_anomaly_from_masking_the_next() -> None:
    raw = noise(600, seed=4)
    raw[300:310] = 30.0  # a first burst
    raw[400:403] = 3.0  # a second, smaller one
    common = {"short_window": 3, "long_window": 500, "learning_windows": 50, "decades": 10.0}
    plain, _ = run_all(LikelihoodParams(**common), raw)  # type: ignore[arg-type]
    clipped, _ = run_all(LikelihoodParams(**common, clip_z=4.0), raw)  # type: ignore[arg-type]
    assert clipped[400:405].max() > plain[400:405].max() + 0.2


def test_scores_are_monotone_in_the_raw_score_for_the_same_history() -> None:
    # With the default 20 decades a z of 9.3 scores 1; 5 raw units above a history of std
    # 0.1 is z = 40.
    _, state = run_all(SMALL, noise(100))
    candidates = np.linspace(0.0, 5.0, 21)
    outs = [likelihood_scores(SMALL, state, np.array([c]))[0][0] for c in candidates]
    assert np.all(np.diff(outs) >= 0)
    assert outs[0] == 0.0 or outs[0] < 0.05
    assert outs[-1] == 1.0


def test_tail_score_known_values_and_bounds() -> None:
    z = np.array([-40.0, 0.0, 1.2815516, 4.2648908, 6.3613409, 1e3])
    got = tail_score(z)
    # Q(0) = 0.5, Q(1.28) = 0.1, Q(4.26) = 1e-5, Q(6.36) = 1e-10.
    np.testing.assert_allclose(got, [0.0, math.log10(2) / 10, 0.1, 0.5, 1.0, 1.0], atol=1e-7)
    assert tail_score(np.array([8.0]), decades=20)[0] == pytest.approx(
        -math.log10(0.5 * math.erfc(8 / math.sqrt(2))) / 20
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"short_window": 0},
        {"long_window": 0},
        {"learning_windows": -1},
        {"min_std": 0.0},
        {"decades": 0.0},
        {"clip_z": 0.0},
    ],
)
def test_bad_parameters_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LikelihoodParams(**kwargs)  # type: ignore[arg-type]


def test_a_state_of_the_wrong_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        likelihood_scores(SMALL, np.zeros(3), np.ones(2))


# --- time-of-day profile -------------------------------------------------------------------

HOUR_MS = 3_600_000
DAILY = SeasonalParams(slots=24, memory=10, learning_windows=3, min_std=0.05)


def hourly(days: int) -> np.ndarray:
    """End times of hourly windows over ``days`` days, from midnight UTC."""
    return 1_396_310_400_000 + HOUR_MS * np.arange(24 * days, dtype=np.int64)


def daily_errors(days: int, seed: int = 0) -> np.ndarray:
    """Distances that are high every day at 18:00 and low otherwise."""
    rng = np.random.default_rng(seed)
    hours = np.arange(24 * days) % 24
    return np.where(hours == 18, 5.0, 0.5) + 0.05 * rng.standard_normal(24 * days)


def test_the_daily_peak_is_normal_for_its_slot_but_the_same_error_elsewhere_is_not() -> None:
    ts, d = hourly(12), daily_errors(12)
    d[24 * 10 + 9] = 5.0  # the evening's error, at nine in the morning of day 10
    scores, _ = seasonal_scores(DAILY, np.zeros(DAILY.state_size), d, ts)
    evening = scores[24 * 5 + 18 :: 24]
    assert evening.max() < 0.2
    assert scores[24 * 10 + 9] == 1.0


def test_a_missing_daily_peak_is_anomalous_too() -> None:
    ts, d = hourly(12), daily_errors(12)
    d[24 * 10 + 18] = 0.5  # the evening peak does not come
    scores, _ = seasonal_scores(DAILY, np.zeros(DAILY.state_size), d, ts)
    assert scores[24 * 10 + 18] > 0.5
    others = np.delete(scores[24 * 5 :], 24 * 5 + 18)
    assert others.max() < 0.3


def test_slots_follow_the_utc_time_of_day() -> None:
    params = SeasonalParams(slots=4, memory=5, learning_windows=0)
    ts = np.array([0, 6 * HOUR_MS - 1, 6 * HOUR_MS, DAY_MS + 23 * HOUR_MS])
    _, state = seasonal_scores(params, np.zeros(params.state_size), np.ones(4), ts)
    counts = state[: params.slots]
    np.testing.assert_array_equal(counts, [2, 1, 0, 1])


def test_nothing_is_scored_before_a_slot_has_learned() -> None:
    ts, d = hourly(2), daily_errors(2)
    scores, _ = seasonal_scores(DAILY, np.zeros(DAILY.state_size), d, ts)
    assert np.all(scores[: 24 * DAILY.learning_windows] == 0.0)


# --- peak hold -------------------------------------------------------------------------------


def test_peak_hold_keeps_one_score_per_run_of_high_scores() -> None:
    run = np.r_[np.zeros(5), 0.6, 0.8, 0.8, 0.7, 0.9, 0.2, np.zeros(20), 0.5]
    held, _ = hold_peaks(10, new_hold_state(), run)
    # Every threshold sees the rise of the run (0.6, 0.8, 0.9: each a new high) and nothing
    # else in it; after ten windows without a new high the hold expires.
    assert np.flatnonzero(held).tolist() == [5, 6, 9, len(run) - 1]
    np.testing.assert_array_equal(held[[5, 6, 9]], [0.6, 0.8, 0.9])
    assert np.array_equal(hold_peaks(0, new_hold_state(), run)[0], run)


# --- the chain ---------------------------------------------------------------------------------

CHAIN = PostParams(
    likelihood=LikelihoodParams(short_window=1, long_window=100, learning_windows=10),
    seasonal=SeasonalParams(slots=4, memory=5, learning_windows=2),
    hold=7,
    range=None,
)


@settings(max_examples=40, deadline=None)
@given(
    raw=st.lists(st.one_of(st.floats(0.0, 20.0), st.just(math.nan)), min_size=1, max_size=150),
    cuts=st.lists(st.integers(0, 150), max_size=5),
)
def test_the_chain_is_the_same_for_any_split_into_batches(
    raw: list[float], cuts: list[int]
) -> None:
    values = np.asarray(raw)
    ts = 1_396_310_400_000 + 1_800_000 * np.arange(len(values), dtype=np.int64)
    whole, whole_state = post_scores(CHAIN, new_post_state(CHAIN), values, ts)
    state, parts = new_post_state(CHAIN), []
    for lo, hi in itertools.pairwise(sorted({0, len(values), *(c for c in cuts if c < len(raw))})):
        scores, state = post_scores(CHAIN, state, values[lo:hi], ts[lo:hi])
        parts.append(scores)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    np.testing.assert_array_equal(state, whole_state)
    assert np.array_equal(np.isnan(whole), np.isnan(values))
    assert np.all((whole[~np.isnan(whole)] >= 0) & (whole[~np.isnan(whole)] <= 1))


def test_the_chain_takes_the_larger_tail_then_holds_peaks() -> None:
    ts, d = hourly(12), daily_errors(12)
    likelihood, _ = likelihood_scores(CHAIN.likelihood, new_state(CHAIN.likelihood), d)
    seasonal, _ = seasonal_scores(CHAIN.seasonal or SeasonalParams(), np.zeros(12), d, ts)
    expected, _ = hold_peaks(CHAIN.hold, new_hold_state(), np.fmax(likelihood, seasonal))
    got, state = post_scores(CHAIN, new_post_state(CHAIN), d, ts)
    np.testing.assert_array_equal(got, expected)
    assert state.shape == (CHAIN.state_size,) == (6 + 12 + 2,)
    assert PostParams().state_size == 56  # the default: small enough for every window state


def test_post_params_round_trip_and_can_switch_the_profile_off() -> None:
    assert PostParams.from_dict(CHAIN.to_dict()) == CHAIN
    off = PostParams.from_dict({**CHAIN.to_dict(), "seasonal": None})
    assert off.seasonal is None and off.state_size == 6 + 2
    ts, d = hourly(3), daily_errors(3)
    scores, _ = post_scores(off, new_post_state(off), d, ts)
    held, _ = hold_peaks(
        off.hold,
        new_hold_state(),
        likelihood_scores(off.likelihood, new_state(off.likelihood), d)[0],
    )
    np.testing.assert_array_equal(scores, held)


# --- many streams at once ----------------------------------------------------------------------

CLIPPED = PostParams(
    likelihood=LikelihoodParams(short_window=9, long_window=20, learning_windows=3, clip_z=2.0),
    seasonal=SeasonalParams(slots=5, memory=4, learning_windows=1, min_std=0.05),
    hold=3,
    range=None,
)


@settings(max_examples=60, deadline=None)
@given(
    streams=st.lists(
        st.lists(st.one_of(st.floats(0.0, 20.0), st.just(math.nan)), max_size=40),
        min_size=1,
        max_size=6,
    ),
    warm=st.sampled_from([0, 7, 4090]),  # 4090: the ring's periodic re-sum at 4096 comes next
    params=st.sampled_from([CHAIN, CLIPPED]),
)
def test_a_batch_of_streams_gives_each_stream_what_it_gets_alone(
    streams: list[list[float]], warm: int, params: PostParams
) -> None:
    """The processor post-processes all streams of a poll batch in one call; each stream must
    get bit for bit what it gets alone (the one-stream path runs in Python floats, the batch
    path in numpy: the same operations in the same order)."""
    ts0 = 1_396_310_400_000
    warm_ts = ts0 + 3_600_000 * np.arange(warm, dtype=np.int64)
    _, warmed = post_scores(params, new_post_state(params), noise(warm, seed=warm), warm_ts)
    starts = [warmed if i % 2 else new_post_state(params) for i in range(len(streams))]
    distances = [np.asarray(s, dtype=np.float64) for s in streams]
    ts = [
        ts0 + 1_800_000 * (np.arange(len(d), dtype=np.int64) + 7 * i)
        for i, d in enumerate(distances)
    ]
    batch = post_batch(
        params,
        np.stack(starts),
        np.concatenate(distances),
        np.concatenate(ts),
        np.array([len(d) for d in distances]),
    )
    row = 0
    for i, d in enumerate(distances):
        alone, state = post_scores(params, starts[i], d, ts[i])
        np.testing.assert_array_equal(batch.scores[row : row + len(d)], alone)
        np.testing.assert_array_equal(batch.states[i], state)
        row += len(d)
    assert np.all(np.isin(batch.stages, [LIKELIHOOD, SEASONAL]))


def test_the_stage_is_the_one_that_gave_the_final_score() -> None:
    ts, d = hourly(12), daily_errors(12)
    result = post_batch(CHAIN, new_post_state(CHAIN)[None], d, ts, np.array([len(d)]))
    likelihood, _ = likelihood_scores(CHAIN.likelihood, new_state(CHAIN.likelihood), d)
    seasonal, _ = seasonal_scores(CHAIN.seasonal or SeasonalParams(), np.zeros(12), d, ts)
    np.testing.assert_array_equal(result.stages == SEASONAL, seasonal > likelihood)


def test_the_periodic_resum_is_the_same_in_a_batch_and_alone() -> None:
    """At 4096 windows the ring is summed afresh; values of very different sizes make the order
    of that sum visible, and both paths must use the same one."""
    rng = np.random.default_rng(2)  # a ring whose sum depends on the order of its additions
    params = CLIPPED
    ts = 1_396_310_400_000 + 3_600_000 * np.arange(4200, dtype=np.int64)
    d = np.exp(rng.uniform(-12.0, 12.0, 4200))
    _, warmed = post_scores(params, new_post_state(params), d[:4090], ts[:4090])
    starts = np.stack([warmed, new_post_state(params), warmed])
    rest = [d[4090:4200], d[:50], d[4090:4200][::-1]]
    rest_ts = [ts[4090:4200], ts[:50], ts[4090:4200]]
    batch = post_batch(
        params, starts, np.concatenate(rest), np.concatenate(rest_ts), np.array([110, 50, 110])
    )
    bounds = [0, 110, 160, 270]
    for i in range(3):
        alone, state = post_scores(params, starts[i], rest[i], rest_ts[i])
        np.testing.assert_array_equal(batch.scores[bounds[i] : bounds[i + 1]], alone)
        np.testing.assert_array_equal(batch.states[i], state)


# --- the smoothed distance and the running-range check (SKAB's detector) --------------------

RANGED = PostParams(
    likelihood=None,
    seasonal=None,
    hold=0,
    threshold=0.5,
    distance=DistanceParams(smoothing=3, level=4.0),
    range=RangeParams(margin=0.2, learning_windows=5),
)
# The default's composition: likelihood, time-of-day profile, range check, peak hold.
LIKELY_RANGED = PostParams(
    likelihood=LikelihoodParams(short_window=3, long_window=40, learning_windows=6),
    seasonal=SeasonalParams(slots=4, memory=5, learning_windows=2),
    hold=5,
    range=RangeParams(margin=0.02, learning_windows=4),
)


def stride_one_windows(values: np.ndarray, window: int) -> np.ndarray:
    """Every window of ``values`` (T, F) with stride 1, as the processor builds them."""
    return np.lib.stride_tricks.sliding_window_view(values, window, axis=0).transpose(0, 2, 1)


def test_the_distance_score_is_the_trailing_mean_scaled_at_its_level() -> None:
    d = np.array([1.0, 2.0, 9.0, 3.0, 40.0, 0.0])
    params = PostParams(
        likelihood=None,
        seasonal=None,
        hold=0,
        distance=DistanceParams(smoothing=3, level=4.0),
        range=None,
    )
    scores, state = post_scores(params, new_post_state(params), d, np.zeros(6, dtype=np.int64))
    means = np.array([1.0, 1.5, 4.0, 14 / 3, 52 / 3, 43 / 3])
    np.testing.assert_allclose(scores, np.minimum(means / 8.0, 1.0))
    assert scores[2] == 0.5  # the mean at the level scores the detector's threshold 0.5
    assert state.tolist() == [6.0, 3.0, 40.0, 0.0, -math.inf, 0.0]  # count, ring, hold


def test_the_range_check_flags_rows_outside_the_running_range_after_learning() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(80, 2))
    values[40, 1] = 50.0  # far outside
    values[60, 0] = -50.0
    windows = stride_one_windows(values, 4)
    d = np.zeros(len(windows))  # distances score 0: only the range check fires
    scores, _ = post_scores(RANGED, new_post_state(RANGED, 2), d, np.zeros(len(d), int), windows)
    # The reference: row i against the range of rows < i (all of them, from row 0), by margin.
    rows = np.arange(3, 80)
    expected = np.zeros(len(rows), dtype=bool)
    for j, i in enumerate(rows):
        low, high = values[:i].min(axis=0), values[:i].max(axis=0)
        span = high - low
        outside = (values[i] > high + 0.2 * span) | (values[i] < low - 0.2 * span)
        expected[j] = outside.any() and j >= RANGED.range.learning_windows  # type: ignore[union-attr]
    assert expected[[40 - 3, 60 - 3]].all()
    np.testing.assert_array_equal(scores == 1.0, expected)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 1000),
    cuts=st.lists(st.integers(0, 60), max_size=5),
    nan_at=st.lists(st.integers(0, 59), max_size=3),
    params=st.sampled_from([RANGED, LIKELY_RANGED]),
)
def test_the_range_check_is_the_same_for_any_split_into_batches(
    seed: int, cuts: list[int], nan_at: list[int], params: PostParams
) -> None:
    """With the smoothed distance (SKAB's detector) or the likelihood and the time-of-day
    profile (the default): any split, and a batch of streams, give each stream the same."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(64, 3)) * rng.uniform(0.5, 3.0, size=(64, 1))
    windows = stride_one_windows(values, 5)
    d = np.abs(rng.normal(size=len(windows))) * 6
    d[nan_at] = np.nan  # a window the model could not score: no score, no state change
    ts = 1_396_310_400_000 + 1_800_000 * np.arange(len(d), dtype=np.int64)
    whole, whole_state = post_scores(params, new_post_state(params, 3), d, ts, windows)
    state, parts = new_post_state(params, 3), []
    for lo, hi in itertools.pairwise(sorted({0, len(d), *(c for c in cuts if c < len(d))})):
        scores, state = post_scores(params, state, d[lo:hi], ts[lo:hi], windows[lo:hi])
        parts.append(scores)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    np.testing.assert_array_equal(state, whole_state)
    assert np.array_equal(np.isnan(whole), np.isnan(d))
    # Many streams at once: each gets what it gets alone.
    lengths = np.array([len(d), 7, len(d)])
    batch = post_batch(
        params,
        np.stack([new_post_state(params, 3)] * 3),
        np.r_[d, d[:7], d[::-1]],
        np.r_[ts, ts[:7], ts],
        lengths,
        np.concatenate([windows, windows[:7], windows[::-1]]),
    )
    np.testing.assert_array_equal(batch.scores[: len(d)], whole)
    np.testing.assert_array_equal(batch.states[0], whole_state)
    alone, alone_state = post_scores(params, new_post_state(params, 3), d[::-1], ts, windows[::-1])
    np.testing.assert_array_equal(batch.scores[len(d) + 7 :], alone)
    np.testing.assert_array_equal(batch.states[2], alone_state)


def test_the_default_range_check_catches_a_value_the_stream_never_came_near() -> None:
    """A daily wave the model predicts well (steady distances: the likelihood scores low),
    then a value 5% of its range above its highest: the default's range check scores it 1."""
    params = PostParams()
    hours = np.arange(400)
    values = np.sin(2 * np.pi * hours / 24)[:, None]
    values[300, 0] = 1.1  # 0.05 of the range (2) above the highest value so far
    windows = stride_one_windows(values, 4)
    d = np.full(len(windows), 1.0)
    ts = 1_396_310_400_000 + 3_600_000 * (hours[3:]).astype(np.int64)
    result = post_batch(params, new_post_state(params)[None], d, ts, np.array([len(d)]), windows)
    assert result.scores[300 - 3] == 1.0 and result.stages[300 - 3] == RANGE
    assert result.scores[: 300 - 3].max() < params.threshold


def test_no_window_looks_ahead() -> None:
    rng = np.random.default_rng(5)
    values = rng.normal(size=(100, 2))
    d = np.abs(rng.normal(size=96)) * 5
    changed = values.copy()
    changed[70:] *= 40.0
    d2 = np.r_[d[:66], d[66:] * 40.0]  # the window ending at row 70 is index 66
    ts = np.zeros(96, dtype=np.int64)
    first, _ = post_scores(RANGED, new_post_state(RANGED, 2), d, ts, stride_one_windows(values, 5))
    second, _ = post_scores(
        RANGED, new_post_state(RANGED, 2), d2, ts, stride_one_windows(changed, 5)
    )
    np.testing.assert_array_equal(first[:66], second[:66])
    assert second[66] == 1.0 and not np.array_equal(first[66:], second[66:])


def test_post_params_take_one_score_and_load_old_definitions() -> None:
    assert PostParams.from_dict(RANGED.to_dict()) == RANGED
    assert RANGED.state_size_of(3) == (1 + 3) + (1 + 2 * 3) + 2
    # A detector.json written before the distance score and the range check: the likelihood
    # chain, as it ran (the default has the range check since).
    old = {k: v for k, v in PostParams().to_dict().items() if k not in ("distance", "range")}
    assert PostParams.from_dict(old) == PostParams(range=None)
    assert PostParams().range == DEFAULT_RANGE
    with pytest.raises(ValueError, match="exactly one of likelihood, distance"):
        PostParams(distance=DistanceParams())
    with pytest.raises(ValueError, match="exactly one of likelihood, distance"):
        PostParams(likelihood=None, seasonal=None)
    with pytest.raises(ValueError, match="time-of-day profile goes with the likelihood"):
        PostParams(likelihood=None, distance=DistanceParams())
    with pytest.raises(ValueError, match="needs every window's values"):
        post_scores(RANGED, new_post_state(RANGED), np.ones(3), np.zeros(3, dtype=np.int64))


# --- the distance's episodes (DistanceParams.drop) ---------------------------------------------

EPISODES = PostParams(
    likelihood=None,
    seasonal=None,
    hold=0,
    threshold=0.5,
    distance=DistanceParams(smoothing=3, level=4.0, drop=0.7, drop_after=2),
    range=None,
)


def episode_reference(
    d: np.ndarray, smoothing: int, level: float, drop: float, after: int
) -> np.ndarray:
    """A plain rendering of the episodes over a stream's distances (NaN: no window)."""
    valid = [x for x in d.tolist() if not math.isnan(x)]
    scores: list[float] = []
    is_open, total, count, below, open_level = False, 0.0, 0, 0, level
    for i in range(len(valid)):
        m = float(np.mean(valid[max(0, i - smoothing + 1) : i + 1]))
        if not is_open and m >= open_level:
            is_open, total, count, below = True, m, 1, 0
        elif is_open:
            total, count = total + m, count + 1
            below = below + 1 if m < drop * total / count else 0
            if below >= after:
                is_open, below, open_level = False, 0, max(m / drop, level)
        scaled = min(m / (2 * open_level), 1.0)
        scores.append(max(scaled, 0.5) if is_open else scaled)
    out = np.full(len(d), np.nan)
    out[~np.isnan(d)] = scores
    return out


def test_an_episode_ends_when_the_distance_drops_and_the_next_needs_as_much_again() -> None:
    # Quiet, an anomaly at 12, a disturbed normal at 6 (above the level 4), the anomaly again.
    d = np.r_[np.full(10, 1.0), np.full(10, 12.0), np.full(10, 6.0), np.full(10, 12.0)]
    scores, _ = post_scores(EPISODES, new_post_state(EPISODES), d, np.zeros(40, dtype=np.int64))
    assert (scores[:10] < 0.5).all()
    assert (scores[10:20] >= 0.5).all()  # the episode: opens at the level
    # Its mean is about 12: the smoothed 6s are below 0.7 of it from the second, and the
    # episode ends 2 windows later; the next opens only at 6 / 0.7 (about 8.6), not at 4.
    first_low = 10 + int(np.argmax(scores[10:] < 0.5))
    assert 20 < first_low <= 24 and (scores[first_low:30] < 0.5).all()
    # A new episode once the smoothed distance passes 8.6 (at the second 12, (6+12+12)/3):
    # scaled at its open level, not at 4.
    assert scores[30] < 0.5 and (scores[31:] >= 0.5).all()
    np.testing.assert_allclose(scores[32:], 12.0 / (2 * 6.0 / 0.7))
    # Without the drop the disturbed normal scores as an anomaly.
    plain = PostParams(
        likelihood=None,
        seasonal=None,
        hold=0,
        distance=DistanceParams(smoothing=3, level=4.0),
        range=None,
    )
    no_drop, _ = post_scores(plain, new_post_state(plain), d, np.zeros(40, dtype=np.int64))
    assert (no_drop[22:30] >= 0.5).all()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 1000),
    cuts=st.lists(st.integers(0, 80), max_size=5),
    nan_at=st.lists(st.integers(0, 79), max_size=3),
    drop=st.sampled_from([0.5, 0.7, 0.9]),
    after=st.integers(1, 4),
)
def test_episodes_match_the_reference_for_any_split_and_any_batch_of_streams(
    seed: int, cuts: list[int], nan_at: list[int], drop: float, after: int
) -> None:
    params = PostParams(
        likelihood=None,
        seasonal=None,
        hold=0,
        distance=DistanceParams(smoothing=3, level=4.0, drop=drop, drop_after=after),
        range=None,
    )
    rng = np.random.default_rng(seed)
    # Levels that move between quiet, anomalous and disturbed, with noise.
    d = np.repeat(rng.choice([1.0, 5.0, 9.0, 20.0], size=8), 10) * rng.uniform(0.6, 1.4, 80)
    d[nan_at] = np.nan
    ts = np.zeros(len(d), dtype=np.int64)
    whole, whole_state = post_scores(params, new_post_state(params), d, ts)
    np.testing.assert_allclose(whole, episode_reference(d, 3, 4.0, drop, after), rtol=1e-12)
    state, parts = new_post_state(params), []
    for lo, hi in itertools.pairwise(sorted({0, len(d), *(c for c in cuts if c < len(d))})):
        scores, state = post_scores(params, state, d[lo:hi], ts[lo:hi])
        parts.append(scores)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    np.testing.assert_array_equal(state, whole_state)
    # Many streams at once (the vectorised path): each gets bit for bit what it gets alone.
    lengths = np.array([len(d), 7, len(d)])
    batch = post_batch(
        params,
        np.stack([new_post_state(params)] * 3),
        np.r_[d, d[:7], d[::-1]],
        np.zeros(int(lengths.sum()), dtype=np.int64),
        lengths,
    )
    np.testing.assert_array_equal(batch.scores[: len(d)], whole)
    np.testing.assert_array_equal(batch.states[0], whole_state)
    alone, alone_state = post_scores(params, new_post_state(params), d[::-1], ts)
    np.testing.assert_array_equal(batch.scores[len(d) + 7 :], alone)
    np.testing.assert_array_equal(batch.states[2], alone_state)


def test_episodes_do_not_look_ahead() -> None:
    rng = np.random.default_rng(11)
    d = np.r_[np.full(20, 1.0), np.full(20, 10.0), np.full(20, 5.0)] * rng.uniform(0.8, 1.2, 60)
    changed = np.r_[d[:45], d[45:] * 3.0]
    ts = np.zeros(60, dtype=np.int64)
    first, _ = post_scores(EPISODES, new_post_state(EPISODES), d, ts)
    second, _ = post_scores(EPISODES, new_post_state(EPISODES), changed, ts)
    np.testing.assert_array_equal(first[:45], second[:45])


def test_episode_parameters_are_checked_and_round_trip() -> None:
    assert PostParams.from_dict(EPISODES.to_dict()) == EPISODES
    assert EPISODES.state_size_of(1) == (1 + 3 + 5) + 2  # count, ring, episode, hold
    # A detector.json written before the episodes: no drop.
    old = EPISODES.to_dict()
    del old["distance"]["drop"], old["distance"]["drop_after"]
    assert PostParams.from_dict(old).distance == DistanceParams(smoothing=3, level=4.0)
    for bad in ({"drop": 0.0}, {"drop": 1.0}, {"drop": 0.5, "drop_after": 0}):
        with pytest.raises(ValueError, match="drop"):
            DistanceParams(**bad)  # type: ignore[arg-type]
