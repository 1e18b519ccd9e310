"""The binary form of a :class:`~stream_ae.core.state.StreamState`: what the Redis store keeps.

A 62-byte header, the topic name, the Welford statistics, delta-of-delta encoded timestamps
(one byte per event for a regular series), the ring in storage order and the post-processing
state. The Lua fencing script
of :mod:`stream_ae.io.window_store` reads the partition and offset at fixed byte positions
(:data:`PARTITION_POS`, :data:`OFFSET_POS`), so those never move.

>>> from stream_ae.core.state import new_state
>>> blob = encode_state(new_state(window=8, features=2))
>>> blob[:4], decode_state(blob, 8, 2).count
(b'SAE1', 0)
"""

from __future__ import annotations

import struct

import numpy as np

from stream_ae.core.alerting import AlertState
from stream_ae.core.state import StreamState
from stream_ae.errors import StateFormatError, StateShapeError

MAGIC = b"SAE1"
# Version 2 appends the post-processing state (a uint32 count, then float64 values) after the
# ring; version 1 states (without it) still load, with an empty post-processing state that the
# processor replaces by a fresh one. The header is the same in both.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_POST_COUNT = struct.Struct("<I")
# magic, version, flags, window, features, partition, offset, count, last_ts_ms, head,
# above_run, below_run, cooldown_left, open_offset, ts_width, topic_len
_HEADER = struct.Struct("<4sBBHHiqQqIHHIqBxH")
HEADER_SIZE = _HEADER.size
# Byte positions the Lua fencing script reads (1-based in Lua): partition and offset.
PARTITION_POS = 4 + 1 + 1 + 2 + 2
OFFSET_POS = PARTITION_POS + 4
_FLAG_ALERT_OPEN = 1


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
    post = np.asarray(state.post, dtype="<f8")
    return b"".join(
        [
            header,
            topic,
            stats.tobytes(),
            ts_blob,
            ring.tobytes(),
            _POST_COUNT.pack(len(post)),
            post.tobytes(),
        ]
    )


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
    if version not in READABLE_VERSIONS:
        raise StateFormatError(
            f"window state format version {version}, expected one of {READABLE_VERSIONS}"
        )
    if w < 1 or f < 1 or ts_width not in _TS_DTYPES:
        raise StateFormatError(f"window state header is corrupt ({w}x{f}, ts width {ts_width})")
    # Check the length before reading the body: a truncated value must be a StateFormatError,
    # not whatever numpy raises on a short buffer.
    expected = HEADER_SIZE + topic_len + 16 * f + 16 + ts_width * max(w - 2, 0) + 4 * w * f
    post_count = 0
    if version >= 2:
        if len(blob) < expected + _POST_COUNT.size:
            raise StateFormatError(f"window state has {len(blob)} bytes, too short")
        (post_count,) = _POST_COUNT.unpack_from(blob, expected)
        expected += _POST_COUNT.size + 8 * post_count
    if len(blob) != expected:
        raise StateFormatError(f"window state has {len(blob)} bytes, expected {expected}")
    # Only a well-formed state of another shape is a shape error (the model does not fit the
    # stored states); garbage that starts like a state is a format error of its own stream.
    if (window is not None and w != window) or (features is not None and f != features):
        raise StateShapeError(
            f"stored window is {w}x{f}, the model expects {window}x{features}; "
            "a model with another window shape needs a new key prefix (see docs/operations.md)"
        )
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
    pos += 4 * w * f + _POST_COUNT.size
    post = (
        np.frombuffer(blob, dtype="<f8", count=post_count, offset=pos).astype(np.float64)
        if post_count
        else np.zeros(0)
    )
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
        post=post,
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
