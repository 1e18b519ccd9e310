"""Input decoding and validation (stream_ae.core.records): every dead-letter reason, and the promise
that :func:`decode_event` never raises anything but :class:`SchemaError`, whatever the bytes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_ae.core.records import (
    MAX_STREAM_ID_CHARS,
    Event,
    Reason,
    dead_letter_headers,
    decode_batch,
    decode_event,
    encode_event,
    parse_ts,
)
from stream_ae.errors import SchemaError

ONE = ("value",)
THREE = ("cpu", "mem", "disk")
MAX_BYTES = 4096
TS_2024 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def decode(
    payload: bytes | None,
    key: bytes | None = None,
    names: Sequence[str] = ONE,
    max_bytes: int = MAX_BYTES,
) -> Event:
    return decode_event(
        key, payload, topic="in", partition=2, offset=41, feature_names=names, max_bytes=max_bytes
    )


def body(**fields: Any) -> bytes:
    """A message body; ``fields`` default to a valid one-feature event."""
    message: dict[str, Any] = {"stream": "s1", "ts": TS_2024, "value": 1.5}
    message.update(fields)
    return json.dumps({k: v for k, v in message.items() if v is not _ABSENT}).encode()


_ABSENT = object()


def reason_of(payload: bytes | None, **kwargs: Any) -> str:
    with pytest.raises(SchemaError) as info:
        decode(payload, **kwargs)
    assert info.value.detail  # every dead letter says why in words too
    return info.value.reason


# --- valid events -----------------------------------------------------------------------------


def test_a_valid_event_keeps_its_kafka_position() -> None:
    event = decode(body())
    assert (event.stream, event.ts_ms, event.topic, event.partition, event.offset) == (
        "s1",
        TS_2024,
        "in",
        2,
        41,
    )
    assert event.values.dtype == np.float32 and event.values.tolist() == [1.5]


@pytest.mark.parametrize(
    "value",
    [[1, 2.5, -3], {"disk": -3, "cpu": 1, "mem": 2.5}],
    ids=["list", "dict-any-order"],
)
def test_multi_feature_values_map_to_the_model_order(value: Any) -> None:
    assert decode(body(value=value), names=THREE).values.tolist() == [1.0, 2.5, -3.0]


def test_scalar_value_and_integers_are_accepted() -> None:
    assert decode(body(value=7)).values.tolist() == [7.0]
    assert decode(body(value=[7])).values.tolist() == [7.0]
    assert decode(body(value={"value": -2})).values.tolist() == [-2.0]


def test_missing_stream_falls_back_to_the_key() -> None:
    assert decode(body(stream=_ABSENT), key=b"from-key").stream == "from-key"
    assert decode(body(stream=None), key=b"from-key").stream == "from-key"
    assert decode(body(stream="same"), key=b"same").stream == "same"


@pytest.mark.parametrize(
    ("stream", "key"),
    [("from-body", b"from-key"), ("s1", b"S1"), ("s1", b"s1 "), ("s1", b""), ("s1", b"\xff")],
)
def test_a_body_that_disagrees_with_its_key_is_dead_lettered(stream: str, key: bytes) -> None:
    """The key is the stream id: a body naming another stream would put that stream on two
    partitions, which the per-partition fence cannot replay exactly (issue 14)."""
    with pytest.raises(SchemaError) as info:
        decode(body(stream=stream), key=key)
    assert info.value.reason == Reason.KEY_MISMATCH
    assert "key" in info.value.detail


def test_without_a_key_the_body_names_the_stream() -> None:
    assert decode(body(stream="only-body"), key=None).stream == "only-body"


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        (TS_2024, TS_2024),
        (TS_2024 + 0.7, TS_2024),
        (0, 0),
        ("2024-01-01T00:00:00Z", TS_2024),
        ("2024-01-01T00:00:00.250Z", TS_2024 + 250),
        ("2024-01-01T00:00:00+00:00", TS_2024),
        ("2024-01-01T02:00:00+02:00", TS_2024),
        ("2023-12-31T19:00:00-05:00", TS_2024),
        ("2024-01-01T00:00:00", TS_2024),  # no zone: taken as UTC
        ("2024-01-01", TS_2024),
    ],
)
def test_timestamps_iso_8601_with_and_without_zone_and_epoch_ms(ts: Any, expected_ms: int) -> None:
    assert decode(body(ts=ts)).ts_ms == expected_ms
    assert parse_ts(ts) == expected_ms


def test_encode_event_round_trips() -> None:
    payload = encode_event("s9", TS_2024, {"cpu": 0.5, "mem": 1.0, "disk": 2.0})
    event = decode(payload, key=None, names=THREE)
    assert (event.stream, event.ts_ms, event.values.tolist()) == ("s9", TS_2024, [0.5, 1.0, 2.0])


# --- every dead-letter reason -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, Reason.NOT_JSON),  # tombstone
        (b"", Reason.NOT_JSON),
        (b"not json", Reason.NOT_JSON),
        (b'{"stream": "s", "ts": 1, "value": 1', Reason.NOT_JSON),  # truncated
        (b"\xff\xfe{}", Reason.NOT_JSON),  # not UTF-8
        (b'{"stream": "s", "ts": 1, "value": NaN}', Reason.NOT_JSON),  # orjson rejects NaN
        (b'{"stream": "s", "ts": 1, "value": Infinity}', Reason.NOT_JSON),
        (b'{"stream": "s", "ts": 1, "value": 1e400}', Reason.NOT_JSON),  # inf as a double
        (b"[1, 2, 3]", Reason.NOT_OBJECT),
        (b'"a string"', Reason.NOT_OBJECT),
        (b"42", Reason.NOT_OBJECT),
        (b"null", Reason.NOT_OBJECT),
    ],
)
def test_undecodable_messages(payload: bytes | None, reason: str) -> None:
    assert reason_of(payload) == reason


def test_oversize_is_checked_before_parsing() -> None:
    payload = body(pad="x" * 200)
    assert decode(payload, max_bytes=len(payload)).stream == "s1"
    assert reason_of(payload, max_bytes=len(payload) - 1) == Reason.OVERSIZE
    assert reason_of(b"{" * 100, max_bytes=64) == Reason.OVERSIZE


@pytest.mark.parametrize(
    "stream",
    [
        "",
        "a{b",
        "a}b",
        "{tag}",
        "line\nbreak",
        "carriage\rreturn",
        "nul\x00",
        "x" * (MAX_STREAM_ID_CHARS + 1),
        42,
        ["s"],
        {"id": "s"},
        True,
    ],
)
def test_bad_stream_ids(stream: Any) -> None:
    assert reason_of(body(stream=stream)) == Reason.BAD_STREAM


def test_stream_id_limits_and_key_fallback_checks() -> None:
    longest = "x" * MAX_STREAM_ID_CHARS
    assert decode(body(stream=longest)).stream == longest
    assert decode(body(stream="ünïcode · ok")).stream == "ünïcode · ok"
    no_stream = body(stream=_ABSENT)
    assert reason_of(no_stream, key=None) == Reason.BAD_STREAM
    assert reason_of(no_stream, key=b"\xff\xfe") == Reason.BAD_STREAM  # key not UTF-8
    assert reason_of(no_stream, key=b"bad{key}") == Reason.BAD_STREAM
    assert reason_of(no_stream, key=b"") == Reason.BAD_STREAM


@pytest.mark.parametrize(
    "ts",
    [
        True,
        False,
        None,
        _ABSENT,
        -1,
        -0.5,
        9_000_000_000_000,  # year 2255: seconds/microseconds sent by mistake look like this
        10**30,
        1e300,
        "garbage",
        "",
        "2024-13-01T00:00:00Z",
        "2024-01-01T25:00:00Z",
        "1969-12-31T23:59:59Z",  # before the epoch
        "9999-12-31T23:59:59Z",
        [TS_2024],
        {"ms": TS_2024},
    ],
)
def test_bad_timestamps(ts: Any) -> None:
    assert reason_of(body(ts=ts)) == Reason.BAD_TS


@pytest.mark.parametrize(
    ("value", "names", "reason"),
    [
        ("1.5", ONE, Reason.BAD_VALUE),
        (None, ONE, Reason.BAD_VALUE),
        (_ABSENT, ONE, Reason.BAD_VALUE),
        (True, ONE, Reason.BAD_VALUE),
        (["1"], ONE, Reason.BAD_VALUE),
        ([[1.0]], ONE, Reason.BAD_VALUE),
        ([1, None, 3], THREE, Reason.BAD_VALUE),
        ([1, False, 3], THREE, Reason.BAD_VALUE),
        ({"cpu": 1, "mem": "2", "disk": 3}, THREE, Reason.BAD_VALUE),
        ([1, 2], THREE, Reason.FEATURE_COUNT),
        ([1, 2, 3, 4], THREE, Reason.FEATURE_COUNT),
        ([], ONE, Reason.FEATURE_COUNT),
        (1.0, THREE, Reason.FEATURE_COUNT),
        ({"cpu": 1, "mem": 2}, THREE, Reason.FEATURE_COUNT),  # missing name
        ({}, ONE, Reason.FEATURE_COUNT),
        ({"cpu": 1, "mem": 2, "disk": 3, "net": 4}, THREE, Reason.UNKNOWN_FEATURE),
        ({"CPU": 1, "mem": 2, "disk": 3}, THREE, Reason.UNKNOWN_FEATURE),
        ({"other": 1}, ONE, Reason.UNKNOWN_FEATURE),
        (1e39, ONE, Reason.NOT_FINITE),  # finite double, but inf as the model's float32
        (-3.5e38, ONE, Reason.NOT_FINITE),
        (10**40, ONE, Reason.NOT_FINITE),
        ([1, 2, 1e308], THREE, Reason.NOT_FINITE),
        ({"cpu": 1, "mem": -1e300, "disk": 3}, THREE, Reason.NOT_FINITE),
    ],
)
def test_bad_values(value: Any, names: Sequence[str], reason: str) -> None:
    assert reason_of(body(value=value), names=names) == reason


def test_float32_limits_are_accepted() -> None:
    largest = float(np.finfo(np.float32).max)
    assert decode(body(value=[largest, -largest, 1e-45]), names=THREE).values.tolist() == [
        largest,
        -largest,
        pytest.approx(1e-45, abs=1e-44),
    ]


def test_dead_letter_headers_carry_reason_and_source() -> None:
    headers = dict(dead_letter_headers(Reason.BAD_TS, "x" * 5000, "in", 2, 41))
    assert headers["stream-ae.reason"] == b"bad_ts"
    assert headers["stream-ae.source.topic"] == b"in"
    assert headers["stream-ae.source.partition"] == b"2"
    assert headers["stream-ae.source.offset"] == b"41"
    assert len(headers["stream-ae.detail"]) == 1000  # bounded, however long the reason


# --- fuzzing ----------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T00:00:00+14:00", "0001-01-01", "Z"]),
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(["stream", "ts", "value", "cpu", "mem", "disk", "value "])
messages = st.dictionaries(field_names, json_values, max_size=5)
keys = st.one_of(st.none(), st.binary(max_size=20), st.text(max_size=20).map(str.encode))


def assert_only_schema_errors(key: bytes | None, payload: bytes | None) -> None:
    for names in (ONE, THREE):
        try:
            event = decode(payload, key=key, names=names, max_bytes=512)
        except SchemaError as exc:
            assert exc.reason in vars(Reason).values()
        else:
            # Whatever got through is exactly what the core may rely on.
            assert event.values.shape == (len(names),) and event.values.dtype == np.float32
            assert np.all(np.isfinite(event.values))
            assert 0 <= event.ts_ms < 9_000_000_000_000
            assert event.stream and not set(event.stream) & set("{}\n\r\x00")


@settings(max_examples=400, deadline=None)
@given(key=keys, payload=st.one_of(st.none(), st.binary(max_size=600)))
def test_arbitrary_bytes_only_ever_raise_schema_error(
    key: bytes | None, payload: bytes | None
) -> None:
    assert_only_schema_errors(key, payload)


@settings(max_examples=200, deadline=None)
@given(key=keys, message=messages)
def test_arbitrary_json_objects_only_ever_raise_schema_error(
    key: bytes | None, message: dict[str, Any]
) -> None:
    assert_only_schema_errors(key, json.dumps(message).encode())


near_valid = st.fixed_dictionaries(
    {
        "stream": st.one_of(st.text(min_size=1, max_size=300), json_scalars),
        "ts": st.one_of(
            st.integers(-(2**64), 2**64),
            st.floats(),
            st.datetimes().map(datetime.isoformat),
            st.datetimes(timezones=st.timezones()).map(datetime.isoformat),
            json_scalars,
        ),
        "value": st.one_of(
            st.floats(width=64),
            st.lists(st.floats(), min_size=1, max_size=4),
            st.dictionaries(st.sampled_from(THREE), st.floats(), min_size=3),
            json_values,
        ),
    }
)


@settings(max_examples=250, deadline=None)
@given(key=keys, message=near_valid)
def test_near_valid_messages_only_ever_raise_schema_error(
    key: bytes | None, message: dict[str, Any]
) -> None:
    # json.dumps writes NaN and Infinity literals: the decoder must refuse them as not JSON.
    assert_only_schema_errors(key, json.dumps(message).encode())


# --- poison pills: nothing but SchemaError, whatever the message -----------------------------


def nested(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


@pytest.mark.parametrize("depth", [1000, 1023, 1024, 1025, 5000, 100_000])
@pytest.mark.parametrize("field", ["stream", "ts", "value"])
def test_deeply_nested_fields_are_dead_lettered_not_crashing(depth: int, field: str) -> None:
    """A 2 KB message nested 1,000 deep once raised RecursionError while its error text was
    built (issue 14), and the worker died on it at every restart."""
    fields = {"stream": b'"s1"', "ts": str(TS_2024).encode(), "value": b"1.5"}
    fields[field] = nested(depth)
    payload = b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in fields.items()) + b"}"
    reason = reason_of(payload, max_bytes=len(payload))
    assert reason in {Reason.BAD_STREAM, Reason.BAD_TS, Reason.BAD_VALUE, Reason.NOT_JSON}


def test_the_reported_repro_is_dead_lettered() -> None:
    payload = b'{"stream":' + nested(1000) + b',"ts":1,"value":1}'
    with pytest.raises(SchemaError) as info:
        decode_event(
            b"k", payload, topic="t", partition=0, offset=0, feature_names=ONE, max_bytes=65_536
        )
    assert info.value.reason == Reason.BAD_STREAM
    assert len(info.value.detail) < 200


def test_any_other_error_while_decoding_becomes_a_dead_letter_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stream_ae.core.records as records

    def broken(raw: Any, names: Sequence[str]) -> np.ndarray:
        raise RuntimeError("a bug in a validator")

    monkeypatch.setattr(records, "_feature_values", broken)
    with pytest.raises(SchemaError) as info:
        decode(body())
    assert info.value.reason == Reason.UNDECODABLE
    assert "RuntimeError: a bug in a validator" in info.value.detail


def test_error_texts_are_bounded_for_huge_or_nested_values() -> None:
    for value in (nested(900), b'"' + b"x" * 3000 + b'"', b"[" + b"1," * 1000 + b"1]"):
        payload = b'{"stream":"s1","ts":' + value + b',"value":1}'
        with pytest.raises(SchemaError) as info:
            decode(payload, max_bytes=len(payload))
        assert len(info.value.detail) <= 200


def deep_json(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 3000))
    opener = draw(st.sampled_from([b"[", b'{"a":']))
    closer = b"]" if opener == b"[" else b"}"
    inner = draw(st.sampled_from([b"", b"1", b'"x"', b"null", b"{}"]))
    if opener == b'{"a":' and inner == b"":
        inner = b"1"
    return opener * depth + inner + closer * depth


@settings(max_examples=150, deadline=None)
@given(
    key=keys,
    deep=st.composite(deep_json)(),
    field=st.sampled_from(["stream", "ts", "value", "other"]),
    prefix=st.binary(max_size=4),
)
def test_fuzz_deep_nesting_anywhere_only_ever_raises_schema_error(
    key: bytes | None, deep: bytes, field: str, prefix: bytes
) -> None:
    payload = b'{"stream":"s1","ts":1,"value":1,"%s":%s}' % (field.encode(), deep)
    for candidate in (payload, deep, prefix + payload):
        for names in (ONE, THREE):
            try:
                decode(candidate, key=key, names=names, max_bytes=len(candidate))
            except SchemaError as exc:
                assert exc.reason in vars(Reason).values()


# --- the batch decoder: decode_event's results, message by message ---------------------------


@dataclass(frozen=True)
class Record:
    """A consumed Kafka record, as decode_batch reads it."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


def common_shape(draw: st.DrawFn) -> tuple[bytes | None, bytes]:
    """Mostly valid keyed messages of the common shape, with every near miss in reach."""
    stream = draw(st.sampled_from(["s1", "s2", "a{b", "", "x" * 300]))
    key = draw(st.sampled_from([stream.encode(), b"s1", None, b"\xff"]))
    message: dict[str, Any] = {
        "ts": draw(st.one_of(st.integers(0, 10**13), st.integers(-5, 10**14), st.floats(0, 1e13))),
        "value": draw(
            st.one_of(
                st.floats(width=64),
                st.integers(-(2**130), 2**130),
                st.lists(st.one_of(st.floats(), st.integers(), st.booleans()), max_size=4),
                st.dictionaries(st.sampled_from(THREE), st.floats(), max_size=3),
                st.booleans(),
                st.none(),
            )
        ),
    }
    if draw(st.booleans()):
        message["stream"] = draw(st.sampled_from([stream, "s1", 5, None]))
    return key, json.dumps(message).encode()


batch_messages = st.lists(
    st.one_of(
        st.composite(common_shape)(),
        st.tuples(keys, st.builds(lambda m: json.dumps(m).encode(), near_valid)),
        st.tuples(keys, st.one_of(st.none(), st.binary(max_size=60))),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    messages=batch_messages,
    names=st.sampled_from([ONE, THREE]),
    max_bytes=st.sampled_from([64, 4096]),
)
def test_decode_batch_gives_decode_events_results_and_dead_letter_reasons(
    messages: list[tuple[bytes | None, bytes | None]], names: Sequence[str], max_bytes: int
) -> None:
    records = [Record(key, value, "in", i % 3, 100 + i) for i, (key, value) in enumerate(messages)]
    batch, dead = decode_batch(records, feature_names=names, max_bytes=max_bytes)
    expected_events, expected_dead = [], []
    for i, r in enumerate(records):
        try:
            expected_events.append(
                decode_event(
                    r.key,
                    r.value,
                    topic=r.topic,
                    partition=r.partition,
                    offset=r.offset,
                    feature_names=names,
                    max_bytes=max_bytes,
                )
            )
        except SchemaError as exc:
            expected_dead.append((i, exc.reason, exc.detail))
    assert [(d.index, d.reason, d.detail) for d in dead] == expected_dead
    assert batch.streams == [e.stream for e in expected_events]
    assert batch.ts_ms.tolist() == [e.ts_ms for e in expected_events]
    assert batch.topics == [e.topic for e in expected_events]
    assert batch.partitions.tolist() == [e.partition for e in expected_events]
    assert batch.offsets.tolist() == [e.offset for e in expected_events]
    assert batch.values.dtype == np.float32 and batch.values.shape == (len(batch), len(names))
    for row, event in zip(batch.values, expected_events, strict=True):
        assert row.tobytes() == event.values.tobytes()


def test_decode_batch_takes_the_common_shape_inline_and_refuses_as_decode_event_does() -> None:
    records = [
        Record(b"s1", body(stream=_ABSENT, ts=TS_2024, value=1.5), "in", 0, 1),
        Record(b"s1", body(value=True), "in", 0, 2),  # a bool is not a number
        Record(b"s1", body(value=[False]), "in", 0, 5),
        Record(b"s1", body(value=[1e39]), "in", 0, 6),  # beyond float32
        Record(b"s2", body(stream="s2", ts="2024-01-01T00:00:00Z", value=[2]), "in", 0, 3),
        Record(b"s1", body(stream="s9"), "in", 0, 4),
    ]
    batch, dead = decode_batch(records, feature_names=ONE, max_bytes=MAX_BYTES)
    assert batch.streams == ["s1", "s2"] and batch.offsets.tolist() == [1, 3]
    assert len(dead) == 4
    assert batch.ts_ms.tolist() == [TS_2024, TS_2024]
    assert batch.values.tolist() == [[1.5], [2.0]]
    assert [(d.index, d.reason) for d in dead] == [
        (1, Reason.BAD_VALUE),
        (2, Reason.BAD_VALUE),
        (3, Reason.NOT_FINITE),
        (5, Reason.KEY_MISMATCH),
    ]
