"""Per-stream sliding windows: the pure core shared by the worker, the evaluator and the trainer.

:func:`append` applies a run of new events to a :class:`~stream_ae.core.state.StreamState` and
returns every window completed on the way, in one vectorised pass per stream.

Window ``k`` of a stream completes at the event that makes ``count - W`` a multiple of
``stride`` (``count`` = events applied so far). That depends only on the event sequence, never
on how it was split into poll batches, so any split yields the same windows.

>>> import numpy as np
>>> state = new_state(window=3, features=1)
>>> result = append(state, np.arange(5, dtype=np.float32)[:, None], np.arange(5) * 1000,
...                 np.arange(5), topic="t", partition=0, stride=1)
>>> result.windows[:, :, 0].tolist()
[[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stream_ae.core.alerting import NO_OFFSET
from stream_ae.core.state import StreamState, new_state


@dataclass(frozen=True)
class AppendResult:
    """What :func:`append` produced: the new state and the windows completed on the way.

    Per completed window ``k``: ``windows[k]`` (W, F) raw values, ``start_ts_ms[k]`` and
    ``end_ts_ms[k]``, ``end_offsets[k]`` (offset of its last event), ``counts[k]`` (events
    applied up to and including it), and the running statistics at that event
    (``stat_mean[k]``, ``stat_std[k]``), which per-stream scaling uses.
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
) -> AppendResult:
    """Apply new events (in offset order) to ``state`` and collect the completed windows.

    Events at or below the state's last applied offset of the same topic-partition are skipped:
    they were applied before a crash, and applying them again would double them. ``state`` is
    not modified; the result holds a new one.
    """
    values = np.asarray(values, dtype=np.float32).reshape(-1, state.features)
    ts_ms = np.asarray(ts_ms, dtype=np.int64).reshape(-1)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    if not (len(values) == len(ts_ms) == len(offsets)):
        raise ValueError("values, ts_ms and offsets must have the same length")
    total = len(values)
    if (
        total
        and state.partition == partition
        and state.topic == topic
        and state.offset != NO_OFFSET
        and offsets.min() <= state.offset
    ):
        fresh = offsets > state.offset
        values, ts_ms, offsets = values[fresh], ts_ms[fresh], offsets[fresh]
    n = len(values)
    window, features = state.window, state.features
    if n == 0:
        return _empty_result(state, skipped=total)

    # Chronological concatenation of what the ring holds and the new values; window j ends at
    # new event j and spans concat[j + 1 : j + 1 + W].
    concat = np.concatenate([state.values, values])
    concat_ts = np.concatenate([state.ts_ms, ts_ms])
    counts = state.count + np.arange(1, n + 1)
    if stride == 1 and state.count + 1 >= window:
        # The steady state of a stride-1 stream: every new event completes a window. Taking
        # all of them directly saves the mask arithmetic below (this runs per stream per batch).
        ends = np.arange(n)
    else:
        ends = np.flatnonzero((counts >= window) & ((counts - window) % stride == 0))

    # Running mean/M2 after each new event, by Welford's recurrence one event at a time. Not
    # the vectorised (Chan) merge of batch statistics: that rounds differently for every split
    # of the stream into poll batches, and the state after a replay must be bit-identical.
    run_mean, run_m2 = _welford(state.stat_mean, state.stat_m2, state.count, values)

    if len(ends):
        # Fancy indexing builds the (k, W, F) windows in one copy; a sliding_window_view costs
        # more in numpy call overhead than it saves for the few windows of one stream.
        windows = concat[(ends + 1)[:, None] + np.arange(window)]
        start_ts = concat_ts[ends + 1]
        end_ts = ts_ms[ends]
        end_offsets = offsets[ends]
        seen = counts[ends].astype(np.float64)[:, None]
        denom = np.maximum(seen - 1, 1.0)
        stds = np.where(seen >= 2, np.maximum(np.sqrt(run_m2[ends] / denom), std_floor), 1.0)
        means = run_mean[ends]
    else:
        windows = np.zeros((0, window, features), dtype=np.float32)
        start_ts = end_ts = end_offsets = np.zeros(0, dtype=np.int64)
        means = stds = np.zeros((0, features))

    # The constructor, not dataclasses.replace: replace re-reads every field by name, several
    # times slower, and this runs per stream per batch.
    new = StreamState(
        window=window,
        features=features,
        values=concat[-window:].copy(),
        ts_ms=concat_ts[-window:].copy(),
        count=state.count + n,
        topic=topic,
        partition=partition,
        offset=int(offsets[-1]),
        stat_mean=run_mean[-1],
        stat_m2=run_m2[-1],
        alert=state.alert,
        post=state.post,
    )
    return AppendResult(
        state=new,
        windows=windows,
        start_ts_ms=start_ts,
        end_ts_ms=end_ts,
        end_offsets=end_offsets,
        counts=counts[ends],
        stat_mean=means,
        stat_std=stds,
        applied=n,
        skipped=total - n,
    )


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
    )


def series_windows(
    values: np.ndarray,
    window: int,
    stride: int = 1,
    ts_ms: np.ndarray | None = None,
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
        state, values, ts, np.arange(n, dtype=np.int64), topic="", partition=-1, stride=stride
    )
