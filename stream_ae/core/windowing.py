"""Per-stream sliding windows: the pure core shared by the worker, the evaluator and the trainer.

A :class:`StreamState` holds the last ``W`` values of one stream (a float32 ring of ``W x F``),
their timestamps, the last applied Kafka position, running normalisation statistics (Welford)
and the alert state. :func:`append` applies a run of new events to a state and returns every
window completed on the way, in one vectorised pass per stream.

Window ``k`` of a stream completes at the event that makes ``count - W`` a multiple of
``stride`` (``count`` = events applied so far). That depends only on the event sequence, never
on how it was split into poll batches, so any split yields the same windows.

The binary layout (:func:`encode_state` / :func:`decode_state`) is what the Redis store keeps:
a 62-byte header, the topic name, the Welford statistics, delta-of-delta encoded timestamps
(one byte per event for a regular series) and the ring in storage order.

>>> import numpy as np
>>> state = new_state(window=3, features=1)
>>> result = append(state, np.arange(5, dtype=np.float32)[:, None], np.arange(5) * 1000,
...                 np.arange(5), topic="t", partition=0, stride=1)
>>> result.windows[:, :, 0].tolist()
[[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from stream_ae.errors import StateFormatError

MAGIC = b"SAE1"
FORMAT_VERSION = 1
# magic, version, flags, window, features, partition, offset, count, last_ts_ms, head,
# above_run, below_run, cooldown_left, open_offset, ts_width, topic_len
_HEADER = struct.Struct("<4sBBHHiqQqIHHIqBxH")
HEADER_SIZE = _HEADER.size
# Byte positions the Lua fencing script reads (1-based in Lua): partition and offset.
PARTITION_POS = 4 + 1 + 1 + 2 + 2
OFFSET_POS = PARTITION_POS + 4
_FLAG_ALERT_OPEN = 1
NO_OFFSET = -1


@dataclass(frozen=True)
class AlertState:
    """Where a stream stands in the alert policy (see :mod:`stream_ae.core.alerting`)."""

    open: bool = False
    above_run: int = 0
    below_run: int = 0
    cooldown_left: int = 0
    # Offset of the window's last event that opened the current alert (NO_OFFSET if none).
    open_offset: int = NO_OFFSET


@dataclass
class StreamState:
    """The window state of one stream. ``values``/``ts_ms`` are in time order (oldest first);
    only the last ``min(count, window)`` rows are real."""

    window: int
    features: int
    values: np.ndarray  # (W, F) float32
    ts_ms: np.ndarray  # (W,) int64
    count: int = 0
    topic: str = ""
    partition: int = -1
    offset: int = NO_OFFSET
    stat_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (F,) float64
    stat_m2: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (F,) float64
    alert: AlertState = field(default_factory=AlertState)

    @property
    def last_ts_ms(self) -> int:
        return int(self.ts_ms[-1]) if self.count else 0

    def position(self) -> tuple[str, int, int]:
        """The last applied (topic, partition, offset): the fencing token."""
        return self.topic, self.partition, self.offset

    def stat_std(self, floor: float = 1e-6) -> np.ndarray:
        """Standard deviation of every value applied so far (running, per feature)."""
        if self.count < 2:
            return np.ones(self.features)
        return np.maximum(np.sqrt(self.stat_m2 / (self.count - 1)), floor)

    def same_as(self, other: StreamState) -> bool:
        """Field-by-field equality (arrays compared exactly)."""
        return (
            self.window == other.window
            and self.features == other.features
            and self.count == other.count
            and self.position() == other.position()
            and self.alert == other.alert
            and np.array_equal(self.values, other.values)
            and np.array_equal(self.ts_ms, other.ts_ms)
            and np.array_equal(self.stat_mean, other.stat_mean)
            and np.array_equal(self.stat_m2, other.stat_m2)
        )


def new_state(window: int, features: int) -> StreamState:
    """An empty state for a stream never seen before."""
    return StreamState(
        window=window,
        features=features,
        values=np.zeros((window, features), dtype=np.float32),
        ts_ms=np.zeros(window, dtype=np.int64),
        stat_mean=np.zeros(features),
        stat_m2=np.zeros(features),
    )


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


# --- binary encoding ---------------------------------------------------------------------


def encode_state(state: StreamState) -> bytes:
    """The compact binary form stored in Redis (see the module docstring)."""
    window, features = state.window, state.features
    topic = state.topic.encode()
    ts_width, ts_blob = _encode_ts(state.ts_ms)
    head = state.count % window
    # Storage order is the ring's: the slot for event number c is c % W (np.roll by head,
    # written as two slices: np.roll's generality costs more than the copy itself).
    values = state.values
    ring = (np.concatenate((values[-head:], values[:-head])) if head else values).astype(
        "<f4", copy=False
    )
    alert = state.alert
    header = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        _FLAG_ALERT_OPEN if alert.open else 0,
        window,
        features,
        state.partition,
        state.offset,
        state.count,
        state.last_ts_ms,
        head,
        min(alert.above_run, 0xFFFF),
        min(alert.below_run, 0xFFFF),
        alert.cooldown_left,
        alert.open_offset,
        ts_width,
        len(topic),
    )
    stats = np.concatenate([state.stat_mean, state.stat_m2]).astype("<f8", copy=False)
    return b"".join([header, topic, stats.tobytes(), ts_blob, ring.tobytes()])


def decode_state(
    blob: bytes, window: int | None = None, features: int | None = None
) -> StreamState:
    """Inverse of :func:`encode_state`; checks the magic, version and (if given) the shape."""
    if len(blob) < HEADER_SIZE or blob[:4] != MAGIC:
        raise StateFormatError("not a stream-ae window state (bad magic or too short)")
    (
        _magic,
        version,
        flags,
        w,
        f,
        partition,
        offset,
        count,
        last_ts,
        head,
        above_run,
        below_run,
        cooldown_left,
        open_offset,
        ts_width,
        topic_len,
    ) = _HEADER.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise StateFormatError(f"window state format version {version}, expected {FORMAT_VERSION}")
    if (window is not None and w != window) or (features is not None and f != features):
        raise StateFormatError(
            f"stored window is {w}x{f}, the model expects {window}x{features}; "
            "a model with another window shape needs a new key prefix (see docs/operations.md)"
        )
    if w < 1 or f < 1 or ts_width not in _TS_DTYPES:
        raise StateFormatError(f"window state header is corrupt ({w}x{f}, ts width {ts_width})")
    # Check the length before reading the body: a truncated value must be a StateFormatError,
    # not whatever numpy raises on a short buffer.
    expected = HEADER_SIZE + topic_len + 16 * f + 16 + ts_width * max(w - 2, 0) + 4 * w * f
    if len(blob) != expected:
        raise StateFormatError(f"window state has {len(blob)} bytes, expected {expected}")
    pos = HEADER_SIZE
    try:
        topic = blob[pos : pos + topic_len].decode()
    except UnicodeDecodeError:
        raise StateFormatError("window state topic is not UTF-8") from None
    pos += topic_len
    stats = np.frombuffer(blob, dtype="<f8", count=2 * f, offset=pos).astype(np.float64)
    pos += 16 * f
    ts_ms, pos = _decode_ts(blob, pos, w, ts_width, last_ts)
    ring = np.frombuffer(blob, dtype="<f4", count=w * f, offset=pos).reshape(w, f)
    # Back to time order: np.roll by -head, as two slices (a new, writable array either way).
    head %= w
    values = np.concatenate((ring[head:], ring[:head])) if head else ring.copy()
    return StreamState(
        window=w,
        features=f,
        values=values.astype(np.float32, copy=False),
        ts_ms=ts_ms,
        count=count,
        topic=topic,
        partition=partition,
        offset=offset,
        stat_mean=stats[:f].copy(),
        stat_m2=stats[f:].copy(),
        alert=AlertState(
            open=bool(flags & _FLAG_ALERT_OPEN),
            above_run=above_run,
            below_run=below_run,
            cooldown_left=cooldown_left,
            open_offset=open_offset,
        ),
    )


_TS_DTYPES = {1: "<i1", 2: "<i2", 4: "<i4", 8: "<i8"}


def _encode_ts(ts_ms: np.ndarray) -> tuple[int, bytes]:
    """Timestamps as first value, first delta and delta-of-deltas in the narrowest integer
    type that holds them: 1 byte per event for a regular series, exact for any series."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    deltas = ts[1:] - ts[:-1]  # np.diff, without its per-call overhead
    dod = deltas[1:] - deltas[:-1]
    biggest = int(np.abs(dod).max()) if len(dod) else 0
    width = next(
        w for w, limit in ((1, 127), (2, 32767), (4, 2**31 - 1), (8, 2**63)) if biggest <= limit
    )
    first = np.array([ts[0], deltas[0] if len(deltas) else 0], dtype="<i8")
    return width, first.tobytes() + dod.astype(_TS_DTYPES[width]).tobytes()


def _decode_ts(
    blob: bytes, pos: int, window: int, width: int, last_ts: int
) -> tuple[np.ndarray, int]:
    if width not in _TS_DTYPES:
        raise StateFormatError(f"bad timestamp width {width}")
    first = np.frombuffer(blob, dtype="<i8", count=2, offset=pos)
    pos += 16
    n_dod = max(window - 2, 0)
    dod = np.frombuffer(blob, dtype=_TS_DTYPES[width], count=n_dod, offset=pos)
    pos += width * n_dod
    del last_ts  # kept in the header for readers that only need the newest time
    if window < 2:
        return first[:1].astype(np.int64), pos
    # steps = [ts0, delta0, dod...]: the deltas are the running sum from delta0 on, the
    # timestamps the running sum of [ts0, deltas...] (int64 sums: exact, wrap-around included).
    steps = np.empty(window, dtype=np.int64)
    steps[:2] = first
    steps[2:] = dod
    np.cumsum(steps[1:], out=steps[1:])
    return np.cumsum(steps), pos
