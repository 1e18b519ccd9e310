"""Message schemas: input events, alerts and dead-letter records.

Input (key = stream id): ``{"stream": str, "ts": ISO-8601 | epoch ms, "value": number |
[numbers] | {name: number}}``; ``stream`` may be left out, and must equal the key if not.
Decoding never raises anything but :class:`SchemaError`, whose ``reason`` is the dead-letter
reason code.

Alerts follow the JSON Schema in ``stream_ae/schemas/alert.v4.json`` (v2 added the window's
raw score and the stage that fired, ``score`` being the final score the threshold applies to;
v3 adds, per feature, the observed and the expected value at the step of largest deviation;
v4 adds ``window.gap``, whether the window spans a gap in its stream, where the worker checks);
``alert_id`` is a hash of what determines the alert (stream, source position, status, model
version), so a replay yields the same ids and consumers can de-duplicate.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Protocol

import numpy as np
import orjson

from stream_ae.errors import SchemaError

ALERT_SCHEMA_ID = "stream-ae.alert/v4"
ALERT_SCHEMA_FILE = "schemas/alert.v4.json"
MAX_STREAM_ID_CHARS = 256
# Epoch-ms timestamps outside [1970, 2255-03-14) are rejected: they are almost always seconds or
# microseconds sent by mistake. The bound, 9e12 ms, is a round number safely below April 2262,
# where int64 nanoseconds (pandas, numpy) end.
_MAX_TS_MS = 9_000_000_000_000
_FLOAT32_MAX = float(np.finfo(np.float32).max)


# Dead-letter reason codes.
class Reason:
    OVERSIZE = "oversize"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    BAD_STREAM = "bad_stream"
    BAD_TS = "bad_ts"
    BAD_VALUE = "bad_value"
    NOT_FINITE = "not_finite"
    FEATURE_COUNT = "feature_count"
    UNKNOWN_FEATURE = "unknown_feature"
    # The body's "stream" differs from the message key (the key is the stream id: see
    # decode_event).
    KEY_MISMATCH = "key_mismatch"
    # Anything else that went wrong while decoding one message (a bug, not bad input): the
    # message is dead-lettered with the error instead of stopping the worker.
    UNDECODABLE = "undecodable"


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded input event with its Kafka position."""

    stream: str
    ts_ms: int
    values: np.ndarray  # (F,) float32
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Decoded events as arrays, one row per event: what the processor consumes.

    ``values`` is (N, F) float32; ``ts_ms``, ``partitions`` and ``offsets`` (N,) int64;
    ``streams`` and ``topics`` lists of N strings.
    """

    streams: list[str]
    ts_ms: np.ndarray
    values: np.ndarray
    topics: list[str]
    partitions: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.streams)

    @classmethod
    def from_events(cls, events: Sequence[Event], features: int) -> EventBatch:
        """The batch of these :class:`Event` objects (all of ``features`` values)."""
        n = len(events)
        # map over attrgetter, not generator expressions: C loops, no Python frame per event.
        return cls(
            streams=list(map(_STREAM, events)),
            ts_ms=np.fromiter(map(_TS_MS, events), dtype=np.int64, count=n),
            # np.array, not np.stack: the same (n, F) array for equal shapes (decode_event
            # guarantees them), at a fraction of np.stack's per-call cost.
            values=np.array(list(map(_VALUES, events)), dtype=np.float32).reshape(n, features),
            topics=list(map(_TOPIC, events)),
            partitions=np.fromiter(map(_PARTITION, events), dtype=np.int64, count=n),
            offsets=np.fromiter(map(_OFFSET, events), dtype=np.int64, count=n),
        )


_STREAM, _TS_MS, _VALUES, _TOPIC, _PARTITION, _OFFSET = (
    operator.attrgetter(f) for f in ("stream", "ts_ms", "values", "topic", "partition", "offset")
)


def decode_event(
    key: bytes | None,
    payload: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    feature_names: Sequence[str],
    max_bytes: int,
) -> Event:
    """Decode and validate one message; raise :class:`SchemaError` with the DLQ reason.

    Nothing else escapes: whatever else goes wrong decoding one message is a
    :class:`SchemaError` with reason ``undecodable``, so one message can never stop the worker
    (a crash would meet the same message again on every restart).
    """
    try:
        return _decode_event(
            key,
            payload,
            topic=topic,
            partition=partition,
            offset=offset,
            feature_names=feature_names,
            max_bytes=max_bytes,
        )
    except SchemaError:
        raise
    except Exception as exc:
        raise SchemaError(Reason.UNDECODABLE, f"{type(exc).__name__}: {exc}"[:200]) from None


class Message(Protocol):
    """What :func:`decode_batch` reads of a consumed Kafka record."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message :func:`decode_batch` refused: its index in the batch and the
    :class:`SchemaError`'s reason code and detail."""

    index: int
    reason: str
    detail: str


def decode_batch(
    messages: Sequence[Message], *, feature_names: Sequence[str], max_bytes: int
) -> tuple[EventBatch, list[DeadLetter]]:
    """Decode a poll batch: the valid events as one :class:`EventBatch` (in message order) and
    the messages to dead-letter.

    Exactly :func:`decode_event` per message, faster: the common shape (a keyed message whose
    body repeats the key or leaves it out, epoch-ms ``ts``, numbers as ``value``) is checked
    inline with exact type tests, each key's stream id once per batch, and the values array
    built in one go. Any message off that shape, valid or not, goes through
    :func:`decode_event` itself, so the dead-letter rules and reasons are its own.
    """
    features = len(feature_names)
    streams: list[str] = []
    ts_ms: list[int] = []
    flat: list[float] = []
    topics: list[str] = []
    partitions: list[int] = []
    offsets: list[int] = []
    dead: list[DeadLetter] = []
    checked: dict[bytes, str] = {}  # message key -> its stream id, checked once per batch
    for index, message in enumerate(messages):
        try:
            common = _decode_common(message, checked, features, max_bytes)
        except Exception:  # whatever it is, the full decoder below decides
            common = None
        if common is None:
            try:
                event = decode_event(
                    message.key,
                    message.value,
                    topic=message.topic,
                    partition=message.partition,
                    offset=message.offset,
                    feature_names=feature_names,
                    max_bytes=max_bytes,
                )
            except SchemaError as exc:
                dead.append(DeadLetter(index, exc.reason, exc.detail))
                continue
            common = event.stream, event.ts_ms, event.values.tolist()
        stream, ts, numbers = common
        streams.append(stream)
        ts_ms.append(ts)
        flat.extend(numbers)
        topics.append(message.topic)
        partitions.append(message.partition)
        offsets.append(message.offset)
    n = len(streams)
    batch = EventBatch(
        streams=streams,
        ts_ms=np.array(ts_ms, dtype=np.int64),
        values=np.array(flat, dtype=np.float32).reshape(n, features),
        topics=topics,
        partitions=np.array(partitions, dtype=np.int64),
        offsets=np.array(offsets, dtype=np.int64),
    )
    return batch, dead


def _decode_common(
    message: Message, checked: dict[bytes, str], features: int, max_bytes: int
) -> tuple[str, int, list[float]] | None:
    """(stream, ts_ms, values) of a valid message of the common shape, else None. Only exact
    types pass (``type(x) is int`` refuses ``bool``), so whatever passes, :func:`decode_event`
    accepts with the same result."""
    payload, key = message.value, message.key
    if payload is None or key is None or len(payload) > max_bytes:
        return None
    body = orjson.loads(payload)
    if type(body) is not dict:
        return None
    stream = checked.get(key)
    if stream is None:
        stream = checked[key] = _stream_id(None, key)
    named = body.get("stream")
    ts = body.get("ts")
    value = body.get("value")
    if (named is not None and named != stream) or type(ts) is not int:
        return None
    if not 0 <= ts < _MAX_TS_MS:
        return None
    if type(value) is list:
        if len(value) != features:
            return None
        items = value
    elif features == 1 and (type(value) is float or type(value) is int):
        items = [value]
    else:
        return None
    numbers = []
    for item in items:
        if type(item) is not float and type(item) is not int:
            return None
        number = float(item)
        if not -_FLOAT32_MAX <= number <= _FLOAT32_MAX:  # also false for NaN
            return None
        numbers.append(number)
    return stream, ts, numbers


def _decode_event(
    key: bytes | None,
    payload: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    feature_names: Sequence[str],
    max_bytes: int,
) -> Event:
    if payload is None:
        raise SchemaError(Reason.NOT_JSON, "empty message (tombstone)")
    if len(payload) > max_bytes:
        raise SchemaError(Reason.OVERSIZE, f"{len(payload)} bytes > max_message_bytes {max_bytes}")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(Reason.NOT_JSON, str(exc)[:200]) from None
    if not isinstance(body, dict):
        raise SchemaError(Reason.NOT_OBJECT, f"expected a JSON object, got {type(body).__name__}")
    stream = _stream_id(body.get("stream"), key)
    ts_ms = parse_ts(body.get("ts"))
    values = _feature_values(body.get("value"), feature_names)
    return Event(stream, ts_ms, values, topic, partition, offset)


def _stream_id(raw: Any, key: bytes | None) -> str:
    """The stream id: the message key, which the body's ``stream`` (if any) must repeat.

    Kafka keeps the order of one key's messages on one partition; a window state is fenced by
    one partition's offsets. A body naming another stream than its key would put that stream
    on two partitions, whose replays the fence cannot tell apart (issue 14): such a message is
    dead-lettered as ``key_mismatch``. A message without a key takes its body's ``stream``
    (its producer must keep each stream on one partition itself).
    """
    if raw is None:
        if key is None:
            raise SchemaError(Reason.BAD_STREAM, "no 'stream' in the body and no message key")
        try:
            raw = key.decode("utf-8")
        except UnicodeDecodeError:
            raise SchemaError(Reason.BAD_STREAM, "message key is not UTF-8") from None
    if not isinstance(raw, str) or not raw or len(raw) > MAX_STREAM_ID_CHARS:
        raise SchemaError(
            Reason.BAD_STREAM,
            f"'stream' must be a non-empty string of at most {MAX_STREAM_ID_CHARS} characters, "
            f"got {shown(raw)}",
        )
    if any(ch in raw for ch in "{}\n\r\x00"):
        # Braces would break the Redis Cluster hash tag; control characters the logs.
        raise SchemaError(
            Reason.BAD_STREAM, f"'stream' contains a forbidden character: {shown(raw)}"
        )
    if key is not None and key != raw.encode("utf-8"):
        raise SchemaError(
            Reason.KEY_MISMATCH,
            f"'stream' {shown(raw)} differs from the message key {shown(key)}; "
            "the key must be the stream id",
        )
    return raw


def parse_ts(raw: Any) -> int:
    """An ISO-8601 string or epoch milliseconds, as integer epoch milliseconds."""
    if isinstance(raw, bool) or raw is None:
        raise SchemaError(Reason.BAD_TS, f"'ts' must be ISO-8601 or epoch ms, got {shown(raw)}")
    if isinstance(raw, int | float):
        if not math.isfinite(raw) or not 0 <= raw < _MAX_TS_MS:
            raise SchemaError(Reason.BAD_TS, f"epoch ms out of range: {shown(raw)}")
        return int(raw)
    if isinstance(raw, str):
        try:
            parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)  # naive times are taken as UTC
            ms = round(parsed.timestamp() * 1000)
        except (ValueError, OverflowError):  # year 1 at +14:00 overflows timestamp()
            raise SchemaError(Reason.BAD_TS, f"not an ISO-8601 time: {shown(raw)}") from None
        if not 0 <= ms < _MAX_TS_MS:
            raise SchemaError(Reason.BAD_TS, f"time out of range: {shown(raw)}")
        return ms
    raise SchemaError(Reason.BAD_TS, f"'ts' must be ISO-8601 or epoch ms, got {type(raw).__name__}")


def _feature_values(raw: Any, feature_names: Sequence[str]) -> np.ndarray:
    n = len(feature_names)
    if isinstance(raw, dict):
        unknown = set(raw) - set(feature_names)
        if unknown:
            raise SchemaError(
                Reason.UNKNOWN_FEATURE, f"unknown feature(s) {shown(sorted(unknown))}"
            )
        missing = [name for name in feature_names if name not in raw]
        if missing:
            raise SchemaError(Reason.FEATURE_COUNT, f"missing feature(s) {shown(missing)}")
        items = [raw[name] for name in feature_names]
    elif isinstance(raw, list):
        if len(raw) != n:
            raise SchemaError(Reason.FEATURE_COUNT, f"{len(raw)} values, the model expects {n}")
        items = raw
    elif raw is not None and not isinstance(raw, str):
        if n != 1:
            raise SchemaError(Reason.FEATURE_COUNT, f"1 value, the model expects {n}")
        items = [raw]
    else:
        raise SchemaError(
            Reason.BAD_VALUE, f"'value' must be a number, list or object: {shown(raw)}"
        )
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise SchemaError(Reason.BAD_VALUE, f"feature value {shown(item)} is not a number")
    # float32 is what the model sees: a finite float64 beyond its range is as bad as inf. Plain
    # Python here, not numpy: this runs once per event, and numpy's per-call overhead on a
    # one-element array was most of the decode time (see docs/performance.md).
    numbers = [float(item) for item in items]
    for number in numbers:
        if not -_FLOAT32_MAX <= number <= _FLOAT32_MAX:  # also false for NaN
            raise SchemaError(
                Reason.NOT_FINITE, f"non-finite or out-of-range value in {shown(items)}"
            )
    return np.array(numbers, dtype=np.float32)


def shown(value: Any, limit: int = 80) -> str:
    """A short description of a decoded JSON value for an error text, bounded in length and in
    work: containers are described, never ``repr``-ed (``repr`` of a list nested 1,000 deep
    raises RecursionError, and that error text once crashed the worker).

    >>> shown([[[]]]), shown({"a": 1}), shown("x" * 100, limit=5), shown(1.5)
    ('a JSON array of 1 item(s)', 'a JSON object of 1 item(s)', "'xxxxx'...", '1.5')
    """
    if isinstance(value, list | tuple):
        if all(isinstance(item, str | int | float | bool) or item is None for item in value):
            text = repr(list(value))
            return text if len(text) <= limit else text[:limit] + "..."
        return f"a JSON array of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"a JSON object of {len(value)} item(s)"
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    return repr(value)[:limit]


def encode_event(
    stream: str, ts_ms: int, value: float | Sequence[float] | dict[str, float]
) -> bytes:
    """The JSON an input producer sends (used by ``stream-ae produce`` and the tests)."""
    return orjson.dumps({"stream": stream, "ts": ts_ms, "value": value})


# --- alerts ------------------------------------------------------------------------------


def alert_id(
    stream: str, topic: str, partition: int, offset: int, status: str, model_version: str
) -> str:
    """Deterministic id: the same input and model version always give the same id."""
    token = f"{stream}\x1f{topic}\x1f{partition}\x1f{offset}\x1f{status}\x1f{model_version}"
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def ms_to_iso(ts_ms: int) -> str:
    return (
        datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def build_alert(
    *,
    stream: str,
    status: str,
    score: float,
    raw_score: float,
    stage: str,
    threshold: float,
    distance: float,
    start_ts_ms: int,
    end_ts_ms: int,
    window_size: int,
    topic: str,
    partition: int,
    offset: int,
    model_name: str,
    model_version: str,
    feature_names: Sequence[str],
    contributions: np.ndarray,
    directions: np.ndarray,
    steps: np.ndarray,
    observed: np.ndarray,
    expected: np.ndarray,
    emitted_at_ms: int,
    gap: bool | None = None,
) -> dict[str, Any]:
    """An alert as the dict that is serialised to the alerts topic (schema v4).

    ``score`` is the window's final anomaly score (what ``threshold`` applies to), ``raw_score``
    its calibrated model score, ``stage`` the scoring stage that gave the final score.
    ``steps``, ``observed`` and ``expected`` (F,) are, per feature, the step of the window
    (0 = oldest) where the observed value lies farthest from the model's expected value (its
    reconstruction or prediction, in original units), and both values there. ``gap``: whether
    the window spans a gap in its stream's events (:class:`~stream_ae.core.windowing.GapRule`);
    None (left out of the alert) when the worker does not check."""
    window: dict[str, Any] = {
        "start_ts": ms_to_iso(start_ts_ms),
        "end_ts": ms_to_iso(end_ts_ms),
        "size": window_size,
    }
    if gap is not None:
        window["gap"] = bool(gap)
    return {
        "schema": ALERT_SCHEMA_ID,
        "alert_id": alert_id(stream, topic, partition, offset, status, model_version),
        "stream": stream,
        "status": status,
        "score": float(score),
        "raw_score": float(raw_score),
        "stage": stage,
        "threshold": float(threshold),
        "distance": float(distance),
        "window": window,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "model": {"name": model_name, "version": model_version},
        "features": [
            {
                "name": name,
                "contribution": float(share),
                "direction": "above" if sign > 0 else "below",
                "step": int(step),
                "observed": float(seen),
                "expected": float(wanted),
            }
            for name, share, sign, step, seen, wanted in zip(
                feature_names, contributions, directions, steps, observed, expected, strict=True
            )
        ],
        "emitted_at": ms_to_iso(emitted_at_ms),
    }


def alert_schema() -> dict[str, Any]:
    """The shipped JSON Schema of alerts (the current version)."""
    text = resources.files("stream_ae").joinpath(ALERT_SCHEMA_FILE).read_bytes()
    schema: dict[str, Any] = orjson.loads(text)
    return schema


def dead_letter_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-lettered message (the value is the original bytes)."""
    return [
        ("stream-ae.reason", reason.encode()),
        ("stream-ae.detail", detail[:1000].encode()),
        ("stream-ae.source.topic", topic.encode()),
        ("stream-ae.source.partition", str(partition).encode()),
        ("stream-ae.source.offset", str(offset).encode()),
    ]
