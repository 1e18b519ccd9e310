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

import operator
import struct
from collections.abc import Sequence

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


# The header as a numpy record: the same bytes as _HEADER.pack (no alignment padding), so
# encode_states writes the headers of a whole batch with column assignments.
_HEADER_DTYPE = np.dtype(
    [
        ("magic", "S4"),
        ("version", "u1"),
        ("flags", "u1"),
        ("window", "<u2"),
        ("features", "<u2"),
        ("partition", "<i4"),
        ("offset", "<i8"),
        ("count", "<u8"),
        ("last_ts", "<i8"),
        ("head", "<u4"),
        ("above_run", "<u2"),
        ("below_run", "<u2"),
        ("cooldown_left", "<u4"),
        ("open_offset", "<i8"),
        ("ts_width", "u1"),
        ("pad", "u1"),
        ("topic_len", "<u2"),
    ]
)
assert _HEADER_DTYPE.itemsize == HEADER_SIZE
_INT32 = (-(2**31), 2**31 - 1)
_get = operator.attrgetter


def encode_states(states: Sequence[StreamState]) -> list[bytes]:
    """:func:`encode_state` of every state, byte for byte, with array operations across them.

    The headers, statistics, timestamp deltas and rings of all states are computed as
    batch-wide arrays; per state only its slices are joined. States of mixed shapes, or with a
    field out of its stored range (which :func:`encode_state` refuses with its own error), are
    encoded one by one.
    """
    m = len(states)
    if m == 0:
        return []
    window, features = states[0].window, states[0].features
    try:
        parts = _encode_parts(states, window, features)
    except (OverflowError, ValueError):
        parts = None
    if parts is None:
        return [encode_state(state) for state in states]
    return parts


def _encode_parts(states: Sequence[StreamState], window: int, features: int) -> list[bytes] | None:
    m = len(states)
    if any(s.window != window or s.features != features for s in states):
        return None
    # map over attrgetter and np.concatenate, not generator expressions and np.stack: C
    # loops, a fraction of the cost per state.
    topics = list(map(str.encode, map(_get("topic"), states)))
    alerts = list(map(_get("alert"), states))
    partition = np.fromiter(map(_get("partition"), states), dtype=np.int64, count=m)
    cooldown = np.fromiter(map(_get("cooldown_left"), alerts), dtype=np.int64, count=m)
    topic_len = np.fromiter(map(len, topics), dtype=np.int64, count=m)
    if (
        partition.min() < _INT32[0]
        or partition.max() > _INT32[1]
        or cooldown.min() < 0
        or cooldown.max() > 2**32 - 1
        or topic_len.max() > 0xFFFF
        or window > 0xFFFF
        or features > 0xFFFF
    ):
        return None
    count = np.fromiter(map(_get("count"), states), dtype=np.uint64, count=m)
    ts = np.concatenate(list(map(_get("ts_ms"), states))).astype(np.int64).reshape(m, window)
    values = np.concatenate(list(map(_get("values"), states))).reshape(m, window, features)
    head = (count % np.uint64(window)).astype(np.int64)

    header = np.zeros(m, dtype=_HEADER_DTYPE)
    header["magic"] = MAGIC
    header["version"] = FORMAT_VERSION
    header["flags"] = np.fromiter(map(_get("open"), alerts), dtype=bool, count=m) * _FLAG_ALERT_OPEN
    header["window"] = window
    header["features"] = features
    header["partition"] = partition
    header["offset"] = np.fromiter(map(_get("offset"), states), dtype=np.int64, count=m)
    header["count"] = count
    header["last_ts"] = np.where(count > 0, ts[:, -1], 0)
    header["head"] = head
    for name in ("above_run", "below_run"):
        runs = np.fromiter(map(_get(name), alerts), dtype=np.int64, count=m)
        if runs.min() < 0:
            return None
        header[name] = np.minimum(runs, 0xFFFF)
    header["cooldown_left"] = cooldown
    header["open_offset"] = np.fromiter(map(_get("open_offset"), alerts), dtype=np.int64, count=m)
    header["topic_len"] = topic_len

    # Timestamps: first value, first delta, delta-of-deltas in each state's narrowest width.
    deltas = ts[:, 1:] - ts[:, :-1]
    dod = deltas[:, 1:] - deltas[:, :-1]
    biggest = np.abs(dod).max(axis=1) if dod.shape[1] else np.zeros(m, dtype=np.int64)
    width = np.select(
        [biggest <= 127, biggest <= 32767, biggest <= 2**31 - 1], [1, 2, 4], default=8
    )
    header["ts_width"] = width
    first = np.zeros((m, 2), dtype="<i8")
    first[:, 0] = ts[:, 0]
    if window > 1:
        first[:, 1] = deltas[:, 0]
    stats = np.concatenate(
        [
            np.concatenate(list(map(_get("stat_mean"), states))).reshape(m, features),
            np.concatenate(list(map(_get("stat_m2"), states))).reshape(m, features),
        ],
        axis=1,
    ).astype("<f8")
    # Fixed-size middle: statistics then the two first timestamps.
    middle = np.concatenate(
        [stats.view(np.uint8).reshape(m, -1), first.view(np.uint8).reshape(m, -1)], axis=1
    ).tobytes()
    middle_size = 16 * features + 16
    dod_blobs: dict[int, bytes] = {}
    dod_rank = np.zeros(m, dtype=np.int64)
    for w in np.unique(width).tolist():
        rows = np.flatnonzero(width == w)
        dod_blobs[w] = dod[rows].astype(_TS_DTYPES[w]).tobytes()
        dod_rank[rows] = np.arange(len(rows))
    # The ring in storage order (slot c % W holds event number c), then the post count.
    slots = (np.arange(window)[None, :] - head[:, None]) % window
    ring = values[np.arange(m)[:, None], slots].astype("<f4")
    posts = [np.asarray(post, dtype="<f8") for post in map(_get("post"), states)]
    post_count = np.fromiter(map(len, posts), dtype="<u4", count=m)
    tail = np.concatenate(
        [ring.reshape(m, -1).view(np.uint8), post_count.view(np.uint8).reshape(m, 4)], axis=1
    ).tobytes()
    tail_size = 4 * window * features + 4
    post_blob = np.concatenate(posts).tobytes() if m else b""
    post_end = np.cumsum(post_count.astype(np.int64) * 8).tolist()

    headers = header.tobytes()
    widths, ranks = width.tolist(), dod_rank.tolist()
    dod_per_width = max(window - 2, 0)
    out = []
    post_start = 0
    for i in range(m):
        dod_size = dod_per_width * widths[i]
        dod_start = ranks[i] * dod_size
        out.append(
            b"".join(
                (
                    headers[i * HEADER_SIZE : (i + 1) * HEADER_SIZE],
                    topics[i],
                    middle[i * middle_size : (i + 1) * middle_size],
                    dod_blobs[widths[i]][dod_start : dod_start + dod_size],
                    tail[i * tail_size : (i + 1) * tail_size],
                    post_blob[post_start : post_end[i]],
                )
            )
        )
        post_start = post_end[i]
    return out


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


def decode_states(blobs: Sequence[bytes], window: int, features: int) -> list[StreamState]:
    """:func:`decode_state` of every blob, equal field for field, with array operations across
    the blobs of one layout (same length, topic length and timestamp width: the common case).

    A blob that is not a current-version state of this shape (an old version, a corrupt value,
    another shape) goes through :func:`decode_state` alone and raises what it raises there.
    """
    out: list[StreamState | None] = [None] * len(blobs)
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
    long_enough = np.flatnonzero(lengths >= HEADER_SIZE)
    if len(long_enough):
        heads = np.frombuffer(
            b"".join([blobs[i][:HEADER_SIZE] for i in long_enough.tolist()]), dtype=_HEADER_DTYPE
        )
        width = heads["ts_width"].astype(np.int64)
        topic_len = heads["topic_len"].astype(np.int64)
        fast = (
            (heads["magic"] == MAGIC)
            & (heads["version"] == FORMAT_VERSION)
            & (heads["window"] == window)
            & (heads["features"] == features)
            & np.isin(width, tuple(_TS_DTYPES))
        )
        # Rows of one layout share every byte position, so they decode as one matrix.
        layout = np.stack([lengths[long_enough], topic_len, width], axis=1)[fast]
        rows, fast_heads = long_enough[fast], heads[fast]
        if len(rows):
            keys, group_of = np.unique(layout, axis=0, return_inverse=True)
            for g, (length, t_len, w_len) in enumerate(keys.tolist()):
                in_group = group_of.reshape(-1) == g
                members = rows[in_group].tolist()
                decoded = _decode_layout(
                    [blobs[i] for i in members],
                    fast_heads[in_group],
                    window,
                    features,
                    length,
                    t_len,
                    w_len,
                )
                for i, state in zip(members, decoded, strict=True):
                    out[i] = state
    return [
        s if s is not None else decode_state(blobs[i], window, features) for i, s in enumerate(out)
    ]


def _decode_layout(
    blobs: list[bytes],
    heads: np.ndarray,
    window: int,
    features: int,
    length: int,
    topic_len: int,
    width: int,
) -> list[StreamState | None]:
    """States of one layout (``heads``: their headers, parsed already), decoded as columns of
    one byte matrix; None for a row whose length or topic does not check out (left to
    :func:`decode_state`)."""
    n, w, f = len(blobs), window, features
    matrix = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(n, length)
    pos = HEADER_SIZE + topic_len
    stats_at, ts_at = pos, pos + 16 * f
    dod_at = ts_at + 16
    ring_at = dod_at + width * max(w - 2, 0)
    count_at = ring_at + 4 * w * f
    post_at = count_at + _POST_COUNT.size
    if post_at > length:
        return [None] * n
    post_bytes = length - post_at
    post_count = matrix[:, count_at:post_at].copy().view("<u4").reshape(n)
    usable = (post_count == post_bytes // 8) & (post_bytes % 8 == 0)
    stats = matrix[:, stats_at:ts_at].copy().view("<f8").astype(np.float64)
    first = matrix[:, ts_at:dod_at].copy().view("<i8").astype(np.int64)
    if w >= 2:
        steps = np.empty((n, w), dtype=np.int64)
        steps[:, :2] = first
        steps[:, 2:] = matrix[:, dod_at:ring_at].copy().view(_TS_DTYPES[width])
        np.cumsum(steps[:, 1:], axis=1, out=steps[:, 1:])
        ts_ms = np.cumsum(steps, axis=1)
    else:
        ts_ms = first[:, :1].copy()
    ring = matrix[:, ring_at:count_at].copy().view("<f4").reshape(n, w, f)
    head = heads["head"].astype(np.int64) % w
    # Back to time order: row r's event k sits in slot (head + k) % W.
    values = ring[np.arange(n)[:, None], (head[:, None] + np.arange(w)[None, :]) % w]
    values = values.astype(np.float32, copy=False)
    posts = (
        matrix[:, post_at : post_at + 8 * (post_bytes // 8)].copy().view("<f8").astype(np.float64)
    )
    topic_bytes = [blob[HEADER_SIZE : HEADER_SIZE + topic_len] for blob in blobs]
    topics: dict[bytes, str | None] = {}
    for raw in set(topic_bytes):
        try:
            topics[raw] = raw.decode()
        except UnicodeDecodeError:
            topics[raw] = None
    # Per row only the objects: row views made by list() (a C loop), positional arguments.
    alerts = list(
        map(
            AlertState,
            (heads["flags"] & _FLAG_ALERT_OPEN).astype(bool).tolist(),
            heads["above_run"].tolist(),
            heads["below_run"].tolist(),
            heads["cooldown_left"].tolist(),
            heads["open_offset"].tolist(),
        )
    )
    post_rows = list(posts) if posts.shape[1] else [np.zeros(0) for _ in range(n)]
    rows = zip(
        list(values),
        list(ts_ms),
        heads["count"].tolist(),
        [topics[raw] for raw in topic_bytes],
        heads["partition"].tolist(),
        heads["offset"].tolist(),
        list(stats[:, :f]),
        list(stats[:, f:]),
        alerts,
        post_rows,
        usable.tolist(),
        strict=True,
    )
    out: list[StreamState | None] = [
        StreamState(w, f, *fields[:-1]) if fields[-1] and fields[3] is not None else None
        for fields in rows
    ]
    return out
