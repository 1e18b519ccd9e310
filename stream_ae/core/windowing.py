"""Per-stream sliding windows: the pure core shared by the worker, the evaluator and the trainer.

:func:`append_runs` applies the runs of new events of many streams (a poll batch) to their
:class:`~stream_ae.core.state.StreamState` s and returns every window completed on the way, with
array operations across the streams; :func:`append` is its one-stream case.

Window ``k`` of a stream completes at the event that makes ``count - W`` a multiple of
``stride`` (``count`` = events applied so far). That depends only on the event sequence, never
on how it was split into poll batches, so any split yields the same windows.

**Gaps.** A window *spans a gap* when two of its consecutive events are more than
``GapRule.periods`` periods apart, the period being the (lower) median spacing of the window's
own timestamps (:func:`window_gaps`): known once the window is complete, without looking
ahead and without any state, so again the same under any split. :class:`GapRule` says what
becomes of such a window: ``score`` (scored like any other, unflagged: nothing is checked),
``mark`` (scored and flagged in :attr:`RunsResult.gaps`), ``restart`` (not produced: the
stream's windows start again after the gap, the next one being the first that lies wholly
after it).

>>> import numpy as np
>>> state = new_state(window=3, features=1)
>>> result = append(state, np.arange(5, dtype=np.float32)[:, None], np.arange(5) * 1000,
...                 np.arange(5), topic="t", partition=0, stride=1)
>>> result.windows[:, :, 0].tolist()
[[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from stream_ae.core.alerting import NO_OFFSET
from stream_ae.core.state import StreamState, new_state

GapPolicy = Literal["score", "mark", "restart"]
GAP_POLICIES: tuple[str, ...] = get_args(GapPolicy)


@dataclass(frozen=True)
class GapRule:
    """What becomes of a window whose events span a gap: more than ``periods`` of its stream's
    periods between two consecutive events (:func:`window_gaps`).

    - ``score``: nothing is checked; every window is scored as it comes (the default, and
      exactly what stream-ae did before the rule existed);
    - ``mark``: windows that span a gap are scored, and flagged (``RunsResult.gaps``, and
      ``window.gap`` in their alerts);
    - ``restart``: the window starts again after the gap: windows that would span it are not
      produced, so the next window of the stream is the first that lies wholly after the gap
      (``W`` events after it, on the ``stride`` grid).

    >>> GapRule("mark", 10.0).checks, GapRule().checks
    (True, False)
    >>> GapRule("skip")
    Traceback (most recent call last):
    ...
    ValueError: gap policy 'skip' is not one of score, mark, restart
    """

    policy: GapPolicy = "score"
    periods: float = 10.0

    def __post_init__(self) -> None:
        if self.policy not in GAP_POLICIES:
            raise ValueError(f"gap policy {self.policy!r} is not one of {', '.join(GAP_POLICIES)}")
        if not (np.isfinite(self.periods) and self.periods > 1):
            raise ValueError(f"gap periods must be a finite number above 1, not {self.periods}")

    @property
    def checks(self) -> bool:
        """Whether windows are checked for gaps at all (any policy but ``score``)."""
        return self.policy != "score"


def window_gaps(ts_ms: np.ndarray, periods: float) -> np.ndarray:
    """Whether each window (a row of ``ts_ms``, (k, W) int64, oldest first) spans a gap: a
    spacing between consecutive events above ``periods`` times the window's period.

    The period is the lower median of the window's ``W - 1`` spacings: robust to the gap
    itself (one large spacing moves it by at most one rank), an exact integer (no rounding
    that could differ between runs), and known from the window alone. A window whose period
    is not positive (repeated or backward timestamps) never spans a gap, nor does a window
    of fewer than 3 events (its period is its only spacing).

    >>> ts = np.array([[0, 60, 120, 180, 240], [0, 60, 120, 1320, 1380], [0, 60, 120, 660, 720]])
    >>> window_gaps(ts, periods=10.0).tolist()  # 1200 > 10 x 60; 540 is not
    [False, True, False]
    """
    ts_ms = np.asarray(ts_ms, dtype=np.int64)
    k, window = ts_ms.shape
    if window < 3:
        return np.zeros(k, dtype=bool)
    ordered = np.sort(ts_ms[:, 1:] - ts_ms[:, :-1], axis=1)
    period = ordered[:, (window - 2) // 2]
    result: np.ndarray = (period > 0) & (ordered[:, -1] > periods * period.astype(np.float64))
    return result


NO_GAP_CHECK = GapRule()


@dataclass(frozen=True)
class AppendResult:
    """What :func:`append` produced: the new state and the windows completed on the way.

    Per completed window ``k``: ``windows[k]`` (W, F) raw values, ``start_ts_ms[k]`` and
    ``end_ts_ms[k]``, ``end_offsets[k]`` (offset of its last event), ``counts[k]`` (events
    applied up to and including it), and the running statistics at that event
    (``stat_mean[k]``, ``stat_std[k]``), which per-stream scaling uses; ``gaps[k]``: whether
    it spans a gap (only ever true under :class:`GapRule` ``mark``).
    """

    state: StreamState
    windows: np.ndarray
    start_ts_ms: np.ndarray
    end_ts_ms: np.ndarray
    end_offsets: np.ndarray
    counts: np.ndarray
    stat_mean: np.ndarray
    stat_std: np.ndarray
    applied: int
    skipped: int
    gaps: np.ndarray


def append(
    state: StreamState,
    values: np.ndarray,
    ts_ms: np.ndarray,
    offsets: np.ndarray,
    *,
    topic: str,
    partition: int,
    stride: int,
    std_floor: float = 1e-6,
    gap_rule: GapRule = NO_GAP_CHECK,
) -> AppendResult:
    """Apply new events (in offset order) to ``state`` and collect the completed windows.

    Events at or below the state's last applied offset of the same topic-partition are skipped:
    they were applied before a crash, and applying them again would double them. ``state`` is
    not modified; the result holds a new one. One stream's case of :func:`append_runs`.
    """
    values = np.asarray(values, dtype=np.float32).reshape(-1, state.features)
    ts_ms = np.asarray(ts_ms, dtype=np.int64).reshape(-1)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    if not (len(values) == len(ts_ms) == len(offsets)):
        raise ValueError("values, ts_ms and offsets must have the same length")
    if len(values) == 0:
        return _empty_result(state, skipped=0)
    runs = append_runs(
        [state],
        values,
        ts_ms,
        offsets,
        np.array([len(values)]),
        topics=[topic],
        partitions=[partition],
        stride=stride,
        std_floor=std_floor,
        gap_rule=gap_rule,
    )
    applied = int(runs.applied[0])
    if applied == 0:
        return _empty_result(state, skipped=len(values))
    return AppendResult(
        state=runs.states[0],
        windows=runs.windows,
        start_ts_ms=runs.start_ts_ms,
        end_ts_ms=runs.end_ts_ms,
        end_offsets=runs.end_offsets,
        counts=runs.counts,
        stat_mean=runs.stat_mean,
        stat_std=runs.stat_std,
        applied=applied,
        skipped=len(values) - applied,
        gaps=runs.gaps,
    )


_OFFSET, _TOPIC, _PARTITION, _COUNT = (
    operator.attrgetter(f) for f in ("offset", "topic", "partition", "count")
)
_VALUES, _TS, _MEAN, _M2 = (
    operator.attrgetter(f) for f in ("values", "ts_ms", "stat_mean", "stat_m2")
)


@dataclass(frozen=True)
class RunsResult:
    """What :func:`append_runs` produced for ``m`` runs: per run its new state and how many of
    its events were applied (``applied``, (m,)); per completed window (all runs' windows, run by
    run, each run's in time order) ``run`` (the index of its run) and the fields of
    :class:`AppendResult`."""

    states: list[StreamState]
    applied: np.ndarray
    run: np.ndarray
    windows: np.ndarray
    start_ts_ms: np.ndarray
    end_ts_ms: np.ndarray
    end_offsets: np.ndarray
    counts: np.ndarray
    stat_mean: np.ndarray
    stat_std: np.ndarray
    gaps: np.ndarray


def append_runs(
    states: Sequence[StreamState],
    values: np.ndarray,
    ts_ms: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    *,
    topics: Sequence[str],
    partitions: Sequence[int],
    stride: int,
    std_floor: float = 1e-6,
    gap_rule: GapRule = NO_GAP_CHECK,
) -> RunsResult:
    """Apply ``m`` runs of events, each to its own state, with array operations across runs.

    Run ``i`` is ``lengths[i]`` consecutive rows of ``values`` (N, F) / ``ts_ms`` / ``offsets``,
    in offset order, all from ``topics[i]``/``partitions[i]``, applied to ``states[i]``; the runs
    are of distinct streams (a stream's second run needs the first's new state: apply it in a
    later call). Per run, the result is exactly :func:`append`'s, bit for bit: the poll-batch
    path applies a whole batch in one call, the trainer one series.
    """
    m = len(states)
    lengths = np.asarray(lengths, dtype=np.int64)
    window, features = (states[0].window, states[0].features) if m else (1, 1)
    values = np.asarray(values, dtype=np.float32).reshape(-1, features)
    ts_ms = np.asarray(ts_ms, dtype=np.int64).reshape(-1)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    run_of = np.repeat(np.arange(m), lengths)

    # Replays: events at or below the state's offset of the same topic-partition are skipped.
    # map over attrgetter, not generator expressions: C loops, no Python frame per state.
    last = np.fromiter(map(_OFFSET, states), dtype=np.int64, count=m)
    same = (
        np.fromiter(map(operator.eq, map(_TOPIC, states), topics), dtype=bool, count=m)
        & (np.fromiter(map(_PARTITION, states), dtype=np.int64, count=m) == partitions)
        & (last != NO_OFFSET)
    )
    stale = same[run_of] & (offsets <= last[run_of])
    if stale.any():
        fresh = ~stale
        values, ts_ms, offsets, run_of = values[fresh], ts_ms[fresh], offsets[fresh], run_of[fresh]
        lengths = np.bincount(run_of, minlength=m).astype(np.int64)
    n = len(values)
    starts = np.zeros(m, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    local = np.arange(n) - starts[run_of]  # each event's index within its run
    prior = np.fromiter(map(_COUNT, states), dtype=np.int64, count=m)
    counts = prior[run_of] + local + 1  # events applied up to and including each one

    # Every run's ring followed by its new events, laid end to end: run i's block starts at
    # row i * W + starts[i]; the window ending at a new event spans the W rows up to it.
    rows = np.arange(n) + (run_of + 1) * window  # each new event's row
    ring_rows = (np.arange(m) * window + starts)[:, None] + np.arange(window)
    concat = np.empty((n + m * window, features), dtype=np.float32)
    concat_ts = np.empty(n + m * window, dtype=np.int64)
    if m:
        # np.concatenate, not np.stack: a quarter of the cost per state.
        concat[ring_rows.reshape(-1)] = np.concatenate(list(map(_VALUES, states)))
        concat_ts[ring_rows.reshape(-1)] = np.concatenate(list(map(_TS, states)))
    concat[rows] = values
    concat_ts[rows] = ts_ms
    ends = np.flatnonzero((counts >= window) & ((counts - window) % stride == 0))
    gaps = np.zeros(len(ends), dtype=bool)
    if gap_rule.checks and len(ends):
        # Each completed window's own timestamps decide (window_gaps): no state, no look-ahead.
        first_row = rows[ends] - (window - 1)
        gaps = window_gaps(concat_ts[first_row[:, None] + np.arange(window)], gap_rule.periods)
        if gap_rule.policy == "restart":
            ends, gaps = ends[~gaps], gaps[~gaps]

    run_mean, run_m2 = _welford_runs(states, values, starts, lengths)

    # Fancy indexing gathers every completed window of every run in one copy.
    first = rows[ends] - (window - 1)
    windows = concat[first[:, None] + np.arange(window)]
    seen = counts[ends].astype(np.float64)[:, None]
    denom = np.maximum(seen - 1, 1.0)
    stds = np.where(seen >= 2, np.maximum(np.sqrt(run_m2[ends] / denom), std_floor), 1.0)

    # The new states: each run's last W rows, its last offset and running statistics. Copies
    # per state, not views of this batch's arrays: a view would keep the whole batch alive as
    # long as any one of its streams is cached.
    new_rings = concat[ring_rows + lengths[:, None]]
    new_ts = concat_ts[ring_rows + lengths[:, None]]
    last_event = (starts + lengths - 1).tolist()
    last_offsets = offsets[np.maximum(starts + lengths - 1, 0)].tolist() if n else []
    counts_after = (prior + lengths).tolist()
    new_states = list(states)
    for i in np.flatnonzero(lengths).tolist():
        state, j = states[i], last_event[i]
        # The constructor, not dataclasses.replace: replace re-reads every field by name,
        # several times slower, and this runs per stream per batch.
        new_states[i] = StreamState(
            window=window,
            features=features,
            values=new_rings[i].copy(),
            ts_ms=new_ts[i].copy(),
            count=counts_after[i],
            topic=topics[i],
            partition=partitions[i],
            offset=last_offsets[i],
            stat_mean=run_mean[j].copy(),
            stat_m2=run_m2[j].copy(),
            alert=state.alert,
            post=state.post,
        )
    return RunsResult(
        states=new_states,
        applied=lengths,
        run=run_of[ends],
        windows=windows,
        start_ts_ms=concat_ts[first],
        end_ts_ms=ts_ms[ends],
        end_offsets=offsets[ends],
        counts=counts[ends],
        stat_mean=run_mean[ends],
        stat_std=stds,
        gaps=gaps,
    )


# Below this many runs still going, the running statistics continue one run at a time: a step
# across runs costs about ten numpy calls (~15 us), a value one at a time about 0.5 us.
_ACROSS_RUNS_MIN = 24


def _welford_runs(
    states: Sequence[StreamState],
    values: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Running mean and M2 after each event of every run, continuing from its state's.

    Welford's recurrence one event at a time per run, in the same float64 operations as
    :func:`_welford`, so bit for bit the same whatever the split into batches. Step ``k``
    advances the ``k``-th event of every run at once (runs ordered longest first, so the runs
    still going are a prefix); once few runs are left, :func:`_welford` finishes each alone.
    """
    n, features = values.shape
    x = values.astype(np.float64)
    run_mean, run_m2 = np.empty((n, features)), np.empty((n, features))
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    ordered = [states[i] for i in order.tolist()]
    mean = np.concatenate(list(map(_MEAN, ordered))).astype(np.float64).reshape(-1, features)
    m2 = np.concatenate(list(map(_M2, ordered))).astype(np.float64).reshape(-1, features)
    seen = np.fromiter(map(_COUNT, ordered), dtype=np.float64, count=len(ordered))
    first = starts[order]
    descending = -sorted_lengths  # ascending: searchsorted counts the runs longer than step
    step = 0
    while step < (sorted_lengths[0] if len(order) else 0):
        going = int(np.searchsorted(descending, -step, side="left"))
        if going < _ACROSS_RUNS_MIN:
            break
        at = first[:going] + step
        value = x[at]
        seen[:going] += 1
        delta = value - mean[:going]
        mean[:going] += delta / seen[:going, None]
        m2[:going] += delta * (value - mean[:going])
        run_mean[at] = mean[:going]
        run_m2[at] = m2[:going]
        step += 1
    for k in range(len(order)):
        if sorted_lengths[k] <= step:
            break
        rows = slice(int(first[k]) + step, int(first[k] + sorted_lengths[k]))
        run_mean[rows], run_m2[rows] = _welford(mean[k], m2[k], int(seen[k]), x[rows])
    return run_mean, run_m2


def _welford(
    mean: np.ndarray, m2: np.ndarray, count: int, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and M2 after each of ``values`` (N, F), continuing from ``mean``/``m2`` over
    ``count`` earlier values. Plain float64 arithmetic in a fixed order per event, so the result
    does not depend on where the stream was cut into batches (about 0.5 us per value)."""
    x = values.astype(np.float64)
    n, features = x.shape
    run_mean, run_m2 = np.empty((n, features)), np.empty((n, features))
    for j in range(features):
        mu, m2_j, seen = float(mean[j]), float(m2[j]), count
        means, m2s = [0.0] * n, [0.0] * n
        for i, value in enumerate(x[:, j].tolist()):
            seen += 1
            delta = value - mu
            mu += delta / seen
            m2_j += delta * (value - mu)
            means[i], m2s[i] = mu, m2_j
        run_mean[:, j], run_m2[:, j] = means, m2s
    return run_mean, run_m2


def _empty_result(state: StreamState, skipped: int) -> AppendResult:
    f = state.features
    empty_i = np.zeros(0, dtype=np.int64)
    return AppendResult(
        state=state,
        windows=np.zeros((0, state.window, f), dtype=np.float32),
        start_ts_ms=empty_i,
        end_ts_ms=empty_i,
        end_offsets=empty_i,
        counts=empty_i,
        stat_mean=np.zeros((0, f)),
        stat_std=np.zeros((0, f)),
        applied=0,
        skipped=skipped,
        gaps=np.zeros(0, dtype=bool),
    )


def series_windows(
    values: np.ndarray,
    window: int,
    stride: int = 1,
    ts_ms: np.ndarray | None = None,
    gap_rule: GapRule = NO_GAP_CHECK,
) -> AppendResult:
    """All windows of one whole series, through the same :func:`append` the worker uses.

    This is how the trainer and the evaluator build windows: never a second copy of the logic.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.ndim == 1:
        values = values[:, None]
    n = len(values)
    ts = np.arange(n, dtype=np.int64) if ts_ms is None else np.asarray(ts_ms, dtype=np.int64)
    state = new_state(window, values.shape[1])
    return append(
        state,
        values,
        ts,
        np.arange(n, dtype=np.int64),
        topic="",
        partition=-1,
        stride=stride,
        gap_rule=gap_rule,
    )
