"""Streaming post-processing of window distances into anomaly scores. Pure numpy.

A window's distance (:mod:`stream_ae.core.scoring`) says how unusual that one window's error is
against the errors the model made at calibration. It cannot say whether the error is unusual
for *this stream lately*, or for *this time of day*: a model that fits a stream a little worse
than its calibration data gives a steady excess that is not an anomaly, and the evening peak of
a daily load may always be hard to predict. Three stages, each a pure function over one
stream's windows in time order with a small fixed-size state:

1. **Anomaly likelihood** (:func:`likelihood_scores`), after Numenta's (Ahmad et al.,
   "Unsupervised real-time anomaly detection for streaming data", Neurocomputing 2017, worth
   about 16 NAB points to their HTM detector): the mean of the last ``short_window`` distances
   (error smoothing) against the mean and variance of that mean over a long, exponentially
   weighted history; the score is the Gaussian tail probability ``Q(z)`` on a log scale.
2. **Time-of-day error profile** (:func:`seasonal_scores`): the same question asked of the
   windows that ended in the same slot of the day (``slots`` per day, UTC), with a short memory
   per slot, and two-sided: an error unusually *low* for its slot (a daily peak that did not
   come, a signal gone flat) is as telling as an unusually high one.
3. **Peak hold** (:func:`hold_peaks`): a score is reported only when it is a new high since the
   last reported high, or that high is more than ``hold`` windows old; other windows score 0.
   For any alert threshold this turns a run of high scores into its first crossing: one alert
   per incident, as an alert policy with a cool-down would give.

One more stage serves every detector, and one more those whose anomalies last long (SKAB's,
``docs/skab.md``), where a likelihood's adapting baseline absorbs the anomaly:

* **Smoothed distance** (:class:`DistanceParams`, instead of the likelihood and the profile):
  the mean of the last ``smoothing`` distances, scaled so that the distance ``level`` scores
  0.5 (``min(mean / (2 level), 1)``): with the detector's threshold at 0.5 an alert opens at a
  smoothed distance of ``level``. Optionally (``drop``) relative to the stream's own episodes:
  an episode that opened at ``level`` holds the score at 0.5 or more until the smoothed
  distance falls below ``drop`` times the episode's mean for ``drop_after`` windows, and the
  next one opens only at that distance over ``drop``: a rig that settles on a higher error
  after an anomaly ends its alert instead of keeping it open (SKAB, ``docs/skab.md``).
* **Running-range check** (:class:`RangeParams`, before the peak hold): a window whose last row
  has some feature outside the range of every earlier row of the stream, by more than
  ``margin`` times that range, scores 1. The range is the running one, from the stream's first
  row (its first window's rows) to the row before: no look-ahead. On by default, at margin
  0.02 (:data:`DEFAULT_RANGE`, chosen by cross-validation on NAB, ``docs/nab.md``): a value
  the stream has never come near is caught even where the model predicted it well.

:func:`post_scores` chains them: the score (the larger of the two tail scores, or the smoothed
distance), the range check, then the peak hold. Its state is one float64 array
(:func:`new_post_state`, ``PostParams.state_size_of(features)`` numbers: 56 with the defaults
and one feature),
the concatenation of the stages' states, kept in each stream's state (``StreamState.post``).
:func:`post_batch` runs the chain over the windows of many streams at once (the worker's poll
batch: one vectorised step per window index, not per window), and gives each stream bit for bit
what :func:`post_scores` gives it alone. Every stage gives the same
outputs and final state whether the windows come one at a time or in any split into batches,
so a replayed poll batch is exact.

Scores are ``-log10 Q(z) / decades`` capped at 1: a tail probability of ``10**-decades`` or
less scores 1, and far tails keep their resolution (computed in log space).

>>> params = LikelihoodParams(short_window=3, long_window=50, learning_windows=20)
>>> state = new_state(params)
>>> scores, state = likelihood_scores(params, state, np.r_[np.full(60, 1.0), 9.0, 9.0])
>>> bool(scores[:20].max() == 0.0), bool(scores[-1] > 0.5)
(True, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.special import log_ndtr

_LN10 = math.log(10.0)
DAY_MS = 86_400_000

# --- 1. anomaly likelihood -------------------------------------------------------------------

# Layout of the likelihood state; the ring of the last ``short_window`` raw scores follows _RING.
_COUNT, _MEAN, _VAR, _SUM, _HEAD, _RING = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class LikelihoodParams:
    """How raw window scores become anomaly-likelihood scores in [0, 1].

    ``short_window``: raw scores averaged (the smoothing; Numenta uses 10).
    ``long_window``: effective length, in windows, of the exponentially weighted history the
    smoothed score is compared with; until that many windows are seen the weights are equal
    (a plain running mean), so the estimate is usable early.
    ``learning_windows``: windows seen before any score is reported (0 until then): the
    history needs some length before a tail probability means anything.
    ``min_std``: floor of the history's standard deviation, in raw-score units, so a stream
    whose errors were constant for a while does not turn the next small change into a
    certainty (Numenta floors the variance the same way).
    ``decades``: tail probabilities of ``10**-decades`` or less score 1.
    ``clip_z``: a smoothed score enters the history clipped at ``clip_z`` standard deviations
    above its mean, so one anomaly does not inflate the variance enough to mask the next one
    (None: no clipping, as Numenta).
    """

    short_window: int = 10
    long_window: int = 8000
    learning_windows: int = 100
    min_std: float = 0.2
    decades: float = 20.0
    clip_z: float | None = None

    def __post_init__(self) -> None:
        if self.short_window < 1 or self.long_window < 1 or self.learning_windows < 0:
            raise ValueError(
                "short_window and long_window must be >= 1 and learning_windows >= 0, got "
                f"{self.short_window}, {self.long_window}, {self.learning_windows}"
            )
        if not self.min_std > 0 or not self.decades > 0:
            raise ValueError(f"min_std and decades must be > 0, got {self.min_std}, {self.decades}")
        if self.clip_z is not None and not self.clip_z > 0:
            raise ValueError(f"clip_z must be > 0 or None, got {self.clip_z}")

    @property
    def state_size(self) -> int:
        """Length of the state array."""
        return _RING + self.short_window


def new_state(params: LikelihoodParams) -> np.ndarray:
    """The likelihood state of a stream that has seen no window yet."""
    return np.zeros(params.state_size, dtype=np.float64)


def _checked_states(state: np.ndarray, size: int, what: str) -> np.ndarray:
    """One stream's state as a (1, size) array; a copy: inputs are never modified."""
    state = np.array(state, dtype=np.float64)
    if state.shape != (size,):
        raise ValueError(f"{what} state has shape {state.shape}, expected ({size},)")
    return state.reshape(1, size)


def likelihood_scores(
    params: LikelihoodParams, state: np.ndarray, raw_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Score one stream's next raw window scores, in time order; returns ``(scores, state)``.

    ``state`` is not modified; the returned one is a new array. A NaN raw score (a window the
    model could not score) scores NaN and leaves the state unchanged.
    """
    states = _checked_states(state, params.state_size, "likelihood")
    raw = np.asarray(raw_scores, dtype=np.float64).reshape(1, -1)
    z = _likelihood_z(params, states, raw)
    return _tail_scores(z, raw, params.decades)[0], states[0]


def _likelihood_z(params: LikelihoodParams, states: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """z-scores of the smoothed raw scores ``raw`` (S streams x J windows, NaN: no window),
    advancing ``states`` (S, size) in place.

    The recurrence is sequential in time, so the loop runs over the J window steps, each step
    one vectorised update of every stream that has a window there: a poll batch of many
    streams with a few windows each costs a few numpy calls per step, never a Python loop per
    window. Every operation is elementwise float64 in a fixed order, so a stream's result does
    not depend on the other streams of its batch nor on where its windows were cut into batches.
    """
    if len(states) == 1:
        return _likelihood_z_one(params, states[0], raw[0])[None]
    k = params.short_window
    ring = states[:, _RING:]  # a view: written in place
    z = np.full(raw.shape, np.nan)
    for j in range(raw.shape[1]):
        value = raw[:, j]
        rows = np.flatnonzero(~np.isnan(value))
        if not len(rows):
            continue
        value = value[rows]
        count, mean, var, total, head = states[rows, :_RING].T
        slot = head.astype(np.int64)
        # The running sum is recomputed from the ring now and then, so float error cannot
        # accumulate over a stream that runs for years.
        resum = count % 4096 == 0
        if resum.any():
            total = np.where(resum, _row_sums(ring[rows]), total)
        total = total + (value - ring[rows, slot])
        ring[rows, slot] = value
        head = (slot + 1) % k
        count = count + 1
        smoothed = total / np.minimum(count, k)
        std = np.maximum(np.sqrt(var), params.min_std)
        learned = count > params.learning_windows
        z[rows, j] = np.where(learned, (smoothed - mean) / std, np.nan)
        # Update the history after scoring, so a window is never compared with itself.
        entering = smoothed
        if params.clip_z is not None:
            entering = np.where(learned, np.minimum(smoothed, mean + params.clip_z * std), smoothed)
        weight = 1.0 / np.minimum(count, params.long_window)
        delta = entering - mean
        mean = mean + weight * delta
        var = (1.0 - weight) * (var + weight * delta * delta)
        states[rows, :_RING] = np.stack([count, mean, var, total, head], axis=1)
    return z


def _likelihood_z_one(params: LikelihoodParams, state: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """:func:`_likelihood_z` for one stream, in Python floats: the same operations in the same
    order (so bit for bit the same results), without numpy's per-call cost on one-element
    arrays (a few us a window instead of about 60: the evaluators replay one stream at a
    time)."""
    k = params.short_window
    ring = state[_RING:].tolist()
    count, mean, var, total, head = state[:_RING].tolist()
    z = np.full(len(raw), np.nan)
    for i, value in enumerate(raw.tolist()):
        if math.isnan(value):
            continue
        slot = int(head)
        if count % 4096 == 0:
            total = ring[0]
            for held in ring[1:]:
                total += held
        total = total + (value - ring[slot])
        ring[slot] = value
        head = (slot + 1) % k
        count = count + 1
        smoothed = total / min(count, k)
        std = max(math.sqrt(var), params.min_std)
        learned = count > params.learning_windows
        if learned:
            z[i] = (smoothed - mean) / std
        entering = smoothed
        if params.clip_z is not None and learned:
            entering = min(smoothed, mean + params.clip_z * std)
        weight = 1.0 / min(count, params.long_window)
        delta = entering - mean
        mean = mean + weight * delta
        var = (1.0 - weight) * (var + weight * delta * delta)
    state[:_RING] = (count, mean, var, total, head)
    state[_RING:] = ring
    return z


def _row_sums(values: np.ndarray) -> np.ndarray:
    """Sums of the rows of ``values``, column after column: the same order for every row
    whatever the number of rows (numpy's pairwise sum does not promise that)."""
    total = values[:, 0].copy()
    for column in range(1, values.shape[1]):
        total += values[:, column]
    return total


def _tail_scores(z: np.ndarray, raw: np.ndarray, decades: float) -> np.ndarray:
    """NaN where the raw score was NaN, 0 where no z was computed (learning), else the score."""
    scores = np.where(np.isnan(raw), np.nan, 0.0)
    scored = ~np.isnan(z)
    scores[scored] = tail_score(z[scored], decades)
    return scores


def tail_score(z: np.ndarray, decades: float = 10.0) -> np.ndarray:
    """``-log10 Q(z) / decades`` capped to [0, 1]: the log-scaled Gaussian tail probability.

    ``Q(z) = P(N(0, 1) > z)``, evaluated in log space (``log_ndtr``) so that z-scores of 40 or
    more still differ instead of all rounding to a tail probability of 0.

    >>> tail_score(np.array([-5.0, 0.0, 4.2649, 50.0])).round(3).tolist()
    [0.0, 0.03, 0.5, 1.0]
    """
    log10_q = log_ndtr(-np.asarray(z, dtype=np.float64)) / _LN10
    return np.clip(-log10_q / decades, 0.0, 1.0)


# --- 2. time-of-day error profile ------------------------------------------------------------


@dataclass(frozen=True)
class SeasonalParams:
    """How window distances are compared with those of the same time of day.

    ``slots``: the day (UTC) is cut into this many equal slots; a window belongs to the slot of
    its last event. ``memory``: effective number of windows, per slot, in the exponentially
    weighted mean and variance (short: the profile follows a stream that changes).
    ``learning_windows``: windows a slot must have seen before it scores (0 until then).
    ``min_std``: floor of a slot's standard deviation, in distance units. ``decades``: as in
    :class:`LikelihoodParams`.
    """

    slots: int = 12
    memory: int = 14
    learning_windows: int = 3
    min_std: float = 0.05
    decades: float = 20.0

    def __post_init__(self) -> None:
        if self.slots < 1 or self.memory < 1 or self.learning_windows < 0:
            raise ValueError(
                "slots and memory must be >= 1 and learning_windows >= 0, got "
                f"{self.slots}, {self.memory}, {self.learning_windows}"
            )
        if not self.min_std > 0 or not self.decades > 0:
            raise ValueError(f"min_std and decades must be > 0, got {self.min_std}, {self.decades}")

    @property
    def state_size(self) -> int:
        """Length of the state array: count, mean and variance per slot."""
        return 3 * self.slots


def seasonal_scores(
    params: SeasonalParams, state: np.ndarray, distances: np.ndarray, end_ts_ms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided tail scores of distances against their time-of-day slot's history.

    ``end_ts_ms`` (epoch ms of each window's last event) picks the slot. Returns ``(scores,
    state)``; NaN distances score NaN and change nothing.
    """
    states = _checked_states(state, params.state_size, "seasonal")
    d = np.asarray(distances, dtype=np.float64).reshape(1, -1)
    ts = np.asarray(end_ts_ms, dtype=np.int64).reshape(1, -1)
    if ts.shape != d.shape:
        raise ValueError(f"{ts.shape[1]} timestamps for {d.shape[1]} distances")
    z = _seasonal_z(params, states, d, ts)
    return _tail_scores(z, d, params.decades)[0], states[0]


def _seasonal_z(
    params: SeasonalParams, states: np.ndarray, distances: np.ndarray, end_ts_ms: np.ndarray
) -> np.ndarray:
    """Two-sided z-scores of ``distances`` (S x J, NaN: no window) against their slots,
    advancing ``states`` (S, size) in place; one vectorised step per window index, as
    :func:`_likelihood_z`."""
    if len(states) == 1:
        return _seasonal_z_one(params, states[0], distances[0], end_ts_ms[0])[None]
    slots = params.slots
    counts, means, variances = (
        states[:, :slots],
        states[:, slots : 2 * slots],
        states[:, 2 * slots :],
    )
    slot_of = (end_ts_ms % DAY_MS) * slots // DAY_MS
    z = np.full(distances.shape, np.nan)
    for j in range(distances.shape[1]):
        value = distances[:, j]
        rows = np.flatnonzero(~np.isnan(value))
        if not len(rows):
            continue
        value, slot = value[rows], slot_of[rows, j]
        count, mean, var = counts[rows, slot], means[rows, slot], variances[rows, slot]
        learned = count >= params.learning_windows
        z[rows, j] = np.where(
            learned, np.abs(value - mean) / np.maximum(np.sqrt(var), params.min_std), np.nan
        )
        count = count + 1
        weight = 1.0 / np.minimum(count, params.memory)
        delta = value - mean
        counts[rows, slot] = count
        means[rows, slot] = mean + weight * delta
        variances[rows, slot] = (1.0 - weight) * (var + weight * delta * delta)
    return z


def _seasonal_z_one(
    params: SeasonalParams, state: np.ndarray, distances: np.ndarray, end_ts_ms: np.ndarray
) -> np.ndarray:
    """:func:`_seasonal_z` for one stream in Python floats (see :func:`_likelihood_z_one`)."""
    counts, means, variances = (part.tolist() for part in state.reshape(3, params.slots))
    slot_of = ((end_ts_ms % DAY_MS) * params.slots // DAY_MS).tolist()
    z = np.full(len(distances), np.nan)
    for i, (value, slot) in enumerate(zip(distances.tolist(), slot_of, strict=True)):
        if math.isnan(value):
            continue
        count, mean, var = counts[slot], means[slot], variances[slot]
        if count >= params.learning_windows:
            z[i] = abs(value - mean) / max(math.sqrt(var), params.min_std)
        count = count + 1
        weight = 1.0 / min(count, params.memory)
        delta = value - mean
        counts[slot] = count
        means[slot] = mean + weight * delta
        variances[slot] = (1.0 - weight) * (var + weight * delta * delta)
    state[:] = counts + means + variances
    return z


# --- 3. peak hold ------------------------------------------------------------------------------

_PEAK, _AGE = 0, 1
HOLD_STATE_SIZE = 2
_NO_PEAK = -math.inf


def new_hold_state() -> np.ndarray:
    """A peak hold that has reported nothing yet."""
    return np.array([_NO_PEAK, 0.0])


def hold_peaks(hold: int, state: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep a score only if it beats the last kept one, or that one is ``hold`` windows old.

    Dropped scores become 0; NaN stays NaN and ages nothing. ``hold=0`` keeps everything.

    >>> hold_peaks(3, new_hold_state(), np.array([0.2, 0.9, 0.9, 0.5, 0.95, 0.1, 0.1, 0.1, 0.4]))[0]
    array([0.2 , 0.9 , 0.  , 0.  , 0.95, 0.  , 0.  , 0.  , 0.4 ])
    """
    states = _checked_states(state, HOLD_STATE_SIZE, "peak hold")
    held = _hold_peaks(hold, states, np.asarray(scores, dtype=np.float64).reshape(1, -1))
    return held[0], states[0]


def _hold_peaks(hold: int, states: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """:func:`hold_peaks` over S streams x J windows (NaN: no window), ``states`` (S, 2)
    advanced in place."""
    if hold <= 0:
        return scores.copy()
    if len(states) == 1:
        return _hold_peaks_one(hold, states[0], scores[0])[None]
    out = np.where(np.isnan(scores), np.nan, 0.0)
    for j in range(scores.shape[1]):
        value = scores[:, j]
        rows = np.flatnonzero(~np.isnan(value))
        if not len(rows):
            continue
        value = value[rows]
        peak, age = states[rows, _PEAK], states[rows, _AGE]
        peak = np.where(age >= hold, _NO_PEAK, peak)
        kept = value > peak
        out[rows, j] = np.where(kept, value, 0.0)
        states[rows, _PEAK] = np.where(kept, value, peak)
        states[rows, _AGE] = np.where(kept, 0.0, age + 1)
    return out


def _hold_peaks_one(hold: int, state: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """:func:`_hold_peaks` for one stream in Python floats (see :func:`_likelihood_z_one`)."""
    out = np.where(np.isnan(scores), np.nan, 0.0)
    peak, age = state.tolist()
    for i, value in enumerate(scores.tolist()):
        if math.isnan(value):
            continue
        if age >= hold:
            peak = _NO_PEAK
        if value > peak:
            out[i], peak, age = value, value, 0.0
        else:
            age = age + 1
    state[:] = (peak, age)
    return out


# --- smoothed distance --------------------------------------------------------------------------

_D_COUNT, _D_RING = 0, 1
# The episode's state (DistanceParams.drop), after the ring, in this order: in an episode
# (0/1), the sum and count of its smoothed distances, the run of windows below the drop, the
# open level (0 until the first window: then ``level``).
_EPISODE_SIZE = 5


@dataclass(frozen=True)
class DistanceParams:
    """The window distance itself as the score: the mean of the last ``smoothing`` distances
    (fewer at a stream's start), scaled so that ``level`` scores 0.5, capped at 1.

    ``drop`` (None: off) makes the level relative to the stream's own episodes (see the module
    docstring): an *episode* starts when the smoothed distance reaches the open level (``level``,
    or above it after an episode ended) and scores at least 0.5 until, for ``drop_after``
    windows in a row, the smoothed distance stays below ``drop`` times the mean of the smoothed
    distances since the episode started. Then the open level becomes that window's smoothed
    distance divided by ``drop`` (never below ``level``): a stream that settles on a higher
    error after an anomaly, as a disturbed rig does, opens again only if its error rises by as
    much again."""

    smoothing: int = 5
    level: float = 15.0
    drop: float | None = None
    drop_after: int = 10

    def __post_init__(self) -> None:
        if self.smoothing < 1:
            raise ValueError(f"smoothing must be >= 1, got {self.smoothing}")
        if not self.level > 0:
            raise ValueError(f"level must be > 0, got {self.level}")
        if self.drop is not None and not 0.0 < self.drop < 1.0:
            raise ValueError(f"drop must be in (0, 1), got {self.drop}")
        if self.drop_after < 1:
            raise ValueError(f"drop_after must be >= 1, got {self.drop_after}")

    @property
    def state_size(self) -> int:
        """The count of distances seen and the last ``smoothing`` of them, oldest first; with
        ``drop``, the episode's state after them (:data:`_EPISODE_SIZE` numbers)."""
        return _D_RING + self.smoothing + (_EPISODE_SIZE if self.drop is not None else 0)


def _distance_scores(params: DistanceParams, states: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Smoothed, scaled distances of ``d`` (S streams x J windows, NaN: no window), advancing
    ``states`` (S, size) in place. Each mean is summed afresh, oldest distance first, so a
    window's score does not depend on how its stream's windows were cut into batches."""
    k = params.smoothing
    s, j = d.shape
    valid = ~np.isnan(d)
    counts = valid.sum(axis=1)
    # Each stream's distances, valid ones first in time order, after its last k held ones.
    order = np.argsort(~valid, axis=1, kind="stable")
    compact = np.take_along_axis(np.where(valid, d, 0.0), order, axis=1)
    history = np.concatenate([states[:, _D_RING : _D_RING + k], compact], axis=1)  # (S, k + J)
    total = history[:, 1 : j + 1].copy()
    for lag in range(2, k + 1):
        total += history[:, lag : j + lag]
    seen = states[:, _D_COUNT][:, None] + np.arange(1, j + 1)
    means = total / np.minimum(seen, k)
    if params.drop is None:
        scores_compact = np.minimum(means / (2.0 * params.level), 1.0)
    else:
        scores_compact = _episode_scores(params, states[:, _D_RING + k :], means, counts)
    scores = np.full((s, j), np.nan)
    rows, cols = np.nonzero(np.arange(j) < counts[:, None])
    scores[rows, order[rows, cols]] = scores_compact[rows, cols]
    # The new ring: the last k of history and the valid distances.
    ends = k + counts
    take = ends[:, None] - k + np.arange(k)
    states[:, _D_RING : _D_RING + k] = np.take_along_axis(history, take, axis=1)
    states[:, _D_COUNT] += counts
    return scores


def _episode_scores(
    params: DistanceParams, states: np.ndarray, means: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Scores of the smoothed distances ``means`` (S x J, stream ``s``'s first ``counts[s]``
    in time order) under ``params.drop``'s episodes, advancing the episode ``states`` (S, 5)
    in place. Sequential in time: one vectorised step per column over the streams that have a
    window there (like :func:`_likelihood_z`), in Python floats for one stream; the same
    operations in the same order either way, so the results are bit for bit the same."""
    if len(states) == 1:
        return _episode_scores_one(params, states[0], means[0], int(counts[0]))[None]
    drop = params.drop
    assert drop is not None  # only called with a drop
    scores = np.full(means.shape, np.nan)
    for j in range(means.shape[1]):
        rows = np.flatnonzero(counts > j)
        if not len(rows):
            break
        m = means[rows, j]
        is_open, total, count, below, level = states[rows].T
        level = np.maximum(level, params.level)
        starts = (is_open == 0.0) & (m >= level)
        going = is_open == 1.0
        total = np.where(starts, m, np.where(going, total + m, total))
        count = np.where(starts, 1.0, np.where(going, count + 1.0, count))
        with np.errstate(invalid="ignore", divide="ignore"):
            dropped = going & (m < drop * (total / count))
        below = np.where(dropped, below + 1.0, 0.0)
        ends = going & (below >= params.drop_after)
        level = np.where(ends, np.maximum(m / drop, params.level), level)
        is_open = np.where(starts | (going & ~ends), 1.0, 0.0)
        below = np.where(ends, 0.0, below)
        scaled = np.minimum(m / (2.0 * level), 1.0)
        scores[rows, j] = np.where(is_open == 1.0, np.maximum(scaled, 0.5), scaled)
        states[rows] = np.stack([is_open, total, count, below, level], axis=1)
    return scores


def _episode_scores_one(
    params: DistanceParams, state: np.ndarray, means: np.ndarray, n: int
) -> np.ndarray:
    """:func:`_episode_scores` for one stream, in Python floats."""
    drop = params.drop
    assert drop is not None  # only called with a drop
    is_open, total, count, below, level = state.tolist()
    scores = np.full(len(means), np.nan)
    for i, m in enumerate(means[:n].tolist()):
        level = max(level, params.level)
        going = is_open == 1.0
        if not going and m >= level:
            total, count, is_open = m, 1.0, 1.0
        elif going:
            total, count = total + m, count + 1.0
            below = below + 1.0 if m < drop * (total / count) else 0.0
            if below >= params.drop_after:
                level = max(m / drop, params.level)
                is_open, below = 0.0, 0.0
        scaled = min(m / (2.0 * level), 1.0)
        scores[i] = max(scaled, 0.5) if is_open == 1.0 else scaled
    state[:] = (is_open, total, count, below, level)
    return scores


# --- running-range check --------------------------------------------------------------------------

_R_COUNT = 0


@dataclass(frozen=True)
class RangeParams:
    """The running-range check (see the module docstring): ``margin`` times the range the
    stream has shown is the tolerance beyond it; the check starts once the stream has had
    ``learning_windows`` windows (its range needs some history to mean anything)."""

    margin: float = 0.2
    learning_windows: int = 0

    def __post_init__(self) -> None:
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.learning_windows < 0:
            raise ValueError(f"learning_windows must be >= 0, got {self.learning_windows}")

    def state_size(self, features: int) -> int:
        """The windows seen, then each feature's running minimum and maximum."""
        return 1 + 2 * features


# The range check of the default post-processing: cross-validated on NAB (docs/nab.md), where
# the folds chose margin 0.02 (all but one by category, 0.01, and one by file, 0.1); it starts
# with the likelihood's learning period.
DEFAULT_RANGE = RangeParams(margin=0.02, learning_windows=100)


def new_range_state(features: int) -> np.ndarray:
    """The range state of a stream that has seen no window: an empty range."""
    return np.r_[0.0, np.full(features, np.inf), np.full(features, -np.inf)]


def _range_flags(
    params: RangeParams, states: np.ndarray, windows: np.ndarray, present: np.ndarray
) -> np.ndarray:
    """True where a window's last row leaves the running range (S x J, like ``present``),
    advancing ``states`` (S, 1 + 2F) in place. ``windows`` (N, W, F) are the present windows in
    row-major order of ``present``. The rows before a window's last are its other rows and
    those of the stream's earlier windows (with stride 1 and from the first window on, every
    row), so the range is the running minimum and maximum of those; min and max are exact, so
    batch splits change nothing."""
    s, j = present.shape
    features = windows.shape[2]
    x = np.asarray(windows, dtype=np.float64)
    low = np.full((s, j, features), np.inf)
    high = np.full((s, j, features), -np.inf)
    low[present] = x[:, :-1].min(axis=1)
    high[present] = x[:, :-1].max(axis=1)
    low = np.minimum.accumulate(np.minimum(low, states[:, None, 1 : 1 + features]), axis=1)
    high = np.maximum.accumulate(np.maximum(high, states[:, None, 1 + features :]), axis=1)
    last = np.zeros((s, j, features))
    last[present] = x[:, -1]
    span = high - low
    with np.errstate(invalid="ignore"):
        outside = (last > high + params.margin * span) | (last < low - params.margin * span)
    # Windows before this one (absent ones, a NaN distance, are not windows).
    seen = states[:, _R_COUNT][:, None] + np.cumsum(present, axis=1) - present
    flags = present & outside.any(axis=2) & (seen >= params.learning_windows)
    states[:, _R_COUNT] += present.sum(axis=1)
    if j:
        states[:, 1 : 1 + features] = low[:, -1]
        states[:, 1 + features :] = high[:, -1]
    return flags


# --- the chain ---------------------------------------------------------------------------------

# Which stage gave a window its final score (the "stage" of an alert). Calibration: the detector
# has no post-processing and the calibrated score is final.
STAGES = ("calibration", "likelihood", "seasonal", "distance", "range")
CALIBRATION, LIKELIHOOD, SEASONAL, DISTANCE, RANGE = range(len(STAGES))


@dataclass(frozen=True)
class PostParams:
    """The whole post-processing: the score (the anomaly ``likelihood`` with the time-of-day
    profile ``seasonal`` (None: off), or the smoothed ``distance``: exactly one of
    ``likelihood`` and ``distance``), the running-range check ``range`` (None: off; by default
    :data:`DEFAULT_RANGE`), the peak hold, and ``threshold``, the final score at which the alert
    policy opens an alert unless the settings give one (0.5715: the threshold NAB's sweep
    picks for the standard profile, docs/nab.md)."""

    likelihood: LikelihoodParams | None = field(default_factory=LikelihoodParams)
    seasonal: SeasonalParams | None = field(default_factory=SeasonalParams)
    hold: int = 250
    threshold: float = 0.5715
    distance: DistanceParams | None = None
    range: RangeParams | None = DEFAULT_RANGE

    def __post_init__(self) -> None:
        if self.hold < 0:
            raise ValueError(f"hold must be >= 0, got {self.hold}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if (self.likelihood is None) == (self.distance is None):
            raise ValueError("the post-processing scores by exactly one of likelihood, distance")
        if self.seasonal is not None and self.likelihood is None:
            raise ValueError("the time-of-day profile goes with the likelihood score")

    @property
    def state_size(self) -> int:
        """Length of the state array of a one-feature stream (see :meth:`state_size_of`)."""
        return self.state_size_of(1)

    def state_size_of(self, features: int) -> int:
        """Length of the state array of a stream of ``features`` features (only the range
        check's state depends on them)."""
        return sum(self._sizes(features))

    def _sizes(self, features: int) -> tuple[int, int, int, int]:
        """The state sizes of the score, the profile, the range check and the peak hold."""
        score = (
            self.likelihood.state_size if self.likelihood is not None else self.distance.state_size  # type: ignore[union-attr]  # checked above
        )
        seasonal = self.seasonal.state_size if self.seasonal is not None else 0
        range_size = self.range.state_size(features) if self.range is not None else 0
        return score, seasonal, range_size, HOLD_STATE_SIZE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PostParams:
        """From :meth:`to_dict`'s output; a missing ``likelihood`` is the default one (a
        ``detector.json`` written before the distance score), a null one none; a missing
        ``range`` is none (written before the range check: it loads as it ran)."""
        likelihood = data.get("likelihood", {})
        seasonal = data.get("seasonal", {})
        distance = data.get("distance")
        range_check = data.get("range")
        return cls(
            likelihood=None if likelihood is None else LikelihoodParams(**likelihood),
            seasonal=None if seasonal is None else SeasonalParams(**seasonal),
            hold=int(data.get("hold", PostParams.hold)),
            threshold=float(data.get("threshold", PostParams.threshold)),
            distance=None if distance is None else DistanceParams(**distance),
            range=None if range_check is None else RangeParams(**range_check),
        )


def new_post_state(params: PostParams, features: int = 1) -> np.ndarray:
    """The post-processing state of a stream of ``features`` features that has seen no window
    yet."""
    score, seasonal, range_size, _ = params._sizes(features)
    return np.concatenate(
        [
            np.zeros(score),
            np.zeros(seasonal),
            new_range_state(features) if range_size else np.zeros(0),
            new_hold_state(),
        ]
    )


def post_scores(
    params: PostParams,
    state: np.ndarray,
    distances: np.ndarray,
    end_ts_ms: np.ndarray,
    windows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly scores in [0, 1] of one stream's next windows (in time order) from their
    distances and end times (and their values ``windows`` (J, W, F), which the range check
    needs); returns ``(scores, state)``. NaN distances score NaN."""
    state = np.asarray(state, dtype=np.float64)
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    result = post_batch(
        params, state[None], distances, end_ts_ms, np.array([len(distances)]), windows
    )
    return result.scores, result.states[0]


@dataclass(frozen=True)
class PostBatch:
    """:func:`post_batch`'s output: per window the final score and the index in
    :data:`STAGES` of the stage that gave it; per stream the new state (S, state_size)."""

    scores: np.ndarray
    stages: np.ndarray
    states: np.ndarray


def post_batch(
    params: PostParams,
    states: np.ndarray,
    distances: np.ndarray,
    end_ts_ms: np.ndarray,
    lengths: np.ndarray,
    windows: np.ndarray | None = None,
) -> PostBatch:
    """The chain over the windows of many streams at once: the windows of stream ``s`` are the
    ``lengths[s]`` rows after those of the streams before it, in time order; ``states`` (S,
    state_size) their states, not modified; ``windows`` (N, W, F) the windows' values (needed
    by the range check only). Gives for every window exactly what :func:`post_scores` gives
    for its stream alone."""
    features = 1 if windows is None else int(np.shape(windows)[2])
    size = params.state_size_of(features)
    states = np.asarray(states, dtype=np.float64)
    if states.shape != (len(lengths), size):
        raise ValueError(
            f"post-processing states have shape {states.shape}, expected ({len(lengths)}, {size})"
        )
    states = states.copy()
    lengths = np.asarray(lengths, dtype=np.int64)
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    ts = np.asarray(end_ts_ms, dtype=np.int64).reshape(-1)
    if ts.shape != d.shape or int(lengths.sum()) != len(d):
        raise ValueError(
            f"{len(ts)} timestamps and {len(d)} distances for {int(lengths.sum())} windows"
        )
    if params.range is not None and (
        windows is None or len(windows) != len(d) or np.shape(windows)[1] < 2
    ):
        raise ValueError("the range check needs every window's values, windows of 2 rows or more")
    # Streams x steps, NaN-padded: a NaN distance changes no state, exactly like no window.
    steps = int(lengths.max()) if len(lengths) else 0
    present = np.arange(steps) < lengths[:, None]
    matrix = np.full(present.shape, np.nan)
    matrix[present] = d  # row-major order of `present` is the order of the rows of `d`
    ts_matrix = np.zeros(present.shape, dtype=np.int64)
    ts_matrix[present] = ts
    score_size, seasonal_size, range_size, _ = params._sizes(features)
    a, b = score_size, score_size + seasonal_size
    c = b + range_size
    if params.likelihood is not None:
        z = _likelihood_z(params.likelihood, states[:, :a], matrix)
        scores = _tail_scores(z, matrix, params.likelihood.decades)
        stages = np.full(present.shape, LIKELIHOOD, dtype=np.int8)
    else:
        assert params.distance is not None  # checked by PostParams
        scores = _distance_scores(params.distance, states[:, :a], matrix)
        stages = np.full(present.shape, DISTANCE, dtype=np.int8)
    if params.seasonal is not None:
        seasonal_z = _seasonal_z(params.seasonal, states[:, a:b], matrix, ts_matrix)
        seasonal = _tail_scores(seasonal_z, matrix, params.seasonal.decades)
        stages[seasonal > scores] = SEASONAL
        scores = np.fmax(scores, seasonal)  # NaN only where both are (a NaN distance)
    if params.range is not None:
        assert windows is not None  # checked above
        # A NaN distance is no window: it neither scores nor moves the range.
        scored = present & ~np.isnan(matrix)
        flags = _range_flags(params.range, states[:, b:c], windows[~np.isnan(d)], scored)
        stages[flags & (scores < 1.0)] = RANGE
        scores = np.where(flags, 1.0, scores)
    held = _hold_peaks(params.hold, states[:, c:], scores)
    return PostBatch(held[present], stages[present], states)
