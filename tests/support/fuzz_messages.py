"""Generated bad input for the worker: every way a message can be malformed, from a seed.

:func:`fuzz_input` shuffles good events (kept in order per stream) with ``bad_count`` generated
bad messages, each labelled with how it was made (:data:`BAD_KINDS`). Every bad message is bad
by construction, whatever the decoder's exact rules: it is not JSON, not an object, or it lacks
or breaks a field the input schema requires. Its key, when it has one, names the stream its body
names (or it has no body stream at all), so a rule about keys that disagree with bodies cannot
turn a bad message good or a good one bad.

Good events come in the forms the schema allows for the same event: epoch ms or ISO-8601
``ts``; ``value`` as a number, a one-element list or a ``{name: number}`` object; the stream in
the body or only in the key. They decode to the same event, so the oracle's states hold whatever
form was sent.

Deep nesting is generated at every depth from 2 to ``MAX_NESTING_DEPTH``, the band around
orjson's own limit (1024) included, where the decoder once raised ``RecursionError`` while
building its error text (issue 14, item 1); the fixed poison examples of
``tests/integration/test_fuzz_worker.py`` cover it as well.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from stream_ae.core.records import MAX_STREAM_ID_CHARS, ms_to_iso

# Nesting depths are drawn up to here (the band around 1000 once crashed the decoder).
SAFE_NESTING_DEPTH = 1023
JSON_NESTING_LIMIT = 1024  # orjson refuses deeper documents itself
MAX_NESTING_DEPTH = 2500  # at most 15 KB: under the fuzzed worker's max_message_bytes
TS = 1_700_000_000_000  # a valid epoch-ms timestamp for bad messages that need one


@dataclass(frozen=True)
class FuzzMessage:
    """One message to send, and how it was made: ``kind`` is "good" or one of BAD_KINDS."""

    key: bytes | None
    value: bytes | None
    kind: str

    @property
    def bad(self) -> bool:
        return self.kind != "good"


class _Maker:
    """Random bad messages about the streams ``streams`` (seeded by ``rng``)."""

    def __init__(self, rng: random.Random, streams: Sequence[str], max_message_bytes: int) -> None:
        self.rng = rng
        self.streams = list(streams)
        self.max_message_bytes = max_message_bytes

    def stream(self) -> str:
        return self.rng.choice(self.streams)

    def event(self, **fields: object) -> tuple[bytes, bytes]:
        """(key, body) of an event of a random stream, ``fields`` replacing its "ts" or
        "value" or adding fields; ``...`` as a field's value removes it."""
        stream = self.stream()
        body: dict[str, object] = {"stream": stream, "ts": TS, "value": self.rng.random()}
        body.update(fields)
        return stream.encode(), orjson.dumps({k: v for k, v in body.items() if v is not ...})

    def text(self, max_chars: int = 20) -> str:
        return "".join(self.rng.choices(string.printable, k=self.rng.randint(0, max_chars)))

    def json_scalar(self) -> object:
        return self.rng.choice([None, True, False, self.rng.randint(-(2**40), 2**40), self.text()])

    def nested(self, depth: int) -> bytes:
        """A JSON text nested ``depth`` deep: lists, objects or a mix."""
        shape = self.rng.choice(["list", "object", "mixed"])
        opening, closing = [], []
        for level in range(depth):
            as_list = shape == "list" or (shape == "mixed" and level % 2 == 0)
            opening.append(b"[" if as_list else b'{"a":')
            closing.append(b"]" if as_list else b"}")
        return b"".join(opening) + b"".join(reversed(closing))

    def nesting_depth(self) -> int:
        if self.rng.random() < 0.5:
            return self.rng.randint(2, SAFE_NESTING_DEPTH)
        return self.rng.randint(JSON_NESTING_LIMIT, MAX_NESTING_DEPTH)


def _arbitrary_bytes(m: _Maker) -> tuple[bytes | None, bytes | None]:
    # A leading byte no JSON text starts with keeps a random "1" or "[]" out of this kind.
    return m.rng.randbytes(m.rng.randint(0, 8)), b"\xfe" + m.rng.randbytes(m.rng.randint(0, 300))


def _tombstone(m: _Maker) -> tuple[bytes | None, bytes | None]:
    return m.stream().encode(), None


def _truncated_json(m: _Maker) -> tuple[bytes | None, bytes | None]:
    key, value = m.event()
    return key, value[: m.rng.randint(0, len(value) - 1)]


def _invalid_utf8_in_json(m: _Maker) -> tuple[bytes | None, bytes | None]:
    stream = m.stream()
    return stream.encode(), b'{"stream":"' + stream.encode() + b'\xff\xfe","ts":1,"value":1}'


def _not_an_object(m: _Maker) -> tuple[bytes | None, bytes | None]:
    body = m.rng.choice(
        [m.json_scalar(), [m.json_scalar() for _ in range(m.rng.randint(0, 5))], m.text()]
    )
    return m.stream().encode(), orjson.dumps(body)


def _nan_or_infinity(m: _Maker) -> tuple[bytes | None, bytes | None]:
    stream = m.stream()
    literal = m.rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"])
    if m.rng.random() < 0.5:
        value = b'{"stream":"%s","ts":%d,"value":%s}' % (stream.encode(), TS, literal)
    else:  # as a string, or a finite number beyond float32
        text = m.rng.choice(["NaN", "inf", "-Infinity", "nan"])
        number = m.rng.choice([1e39, -3.5e38, 1e300])
        value = orjson.dumps(
            {"stream": stream, "ts": TS, "value": m.rng.choice([text, [number], {"value": number}])}
        )
    return stream.encode(), value


def _wrong_value_type(m: _Maker) -> tuple[bytes | None, bytes | None]:
    value = m.rng.choice(
        [m.text(), True, False, None, ..., [m.text()], [None], [[1.0]], {"value": m.text()}]
    )
    return m.event(value=value)


def _wrong_feature_count(m: _Maker) -> tuple[bytes | None, bytes | None]:
    # The model has one feature: any other count is wrong, from none to a huge list.
    count = m.rng.choice([0, 2, 3, m.rng.randint(4, 64), 2000])
    if m.rng.random() < 0.8:
        return m.event(value=[round(m.rng.random(), 2) for _ in range(count)])
    return m.event(value={})  # an object naming no feature


def _unknown_feature(m: _Maker) -> tuple[bytes | None, bytes | None]:
    names = {"".join(m.rng.choices(string.ascii_lowercase, k=m.rng.randint(1, 12)))}
    names.discard("value")
    names.add("cpu")
    features: dict[str, object] = {name: m.rng.random() for name in names}
    if m.rng.random() < 0.5:
        features["value"] = 1.0  # a known one beside the unknown ones
    return m.event(value=features)


def _bad_timestamp(m: _Maker) -> tuple[bytes | None, bytes | None]:
    ts = m.rng.choice(
        [
            ...,
            None,
            True,
            -1,
            -(2**62),
            10**13,  # the year 2286: beyond any cut-off near int64 nanoseconds' end (2262)
            2**63,
            1e20,
            m.text(),
            "2024-13-45T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "yesterday",
            [TS],
            {"ms": TS},
        ]
    )
    return m.event(ts=ts)


def _bad_stream_id(m: _Maker) -> tuple[bytes | None, bytes | None]:
    stream = m.rng.choice(
        [
            "",
            "a{b}",
            "x}",
            "line\nbreak",
            "cr\r",
            "nul\x00",
            "s" * (MAX_STREAM_ID_CHARS + 1 + m.rng.randint(0, 1000)),
            m.rng.randint(0, 100),
            1.5,
            True,
            ["host-0"],
            {"id": "host-0"},
        ]
    )
    body = {"stream": stream, "ts": TS, "value": 1.0}
    return None, orjson.dumps(body)


def _bad_utf8_key(m: _Maker) -> tuple[bytes | None, bytes | None]:
    # No stream in the body: the key would be the stream id, and it is not UTF-8.
    key = m.rng.choice([b"\xff", b"\xc3\x28", b"host-\xe2\x82", b"\xed\xa0\x80"])
    return key, orjson.dumps({"ts": TS, "value": 1.0})


def _no_stream_no_key(m: _Maker) -> tuple[bytes | None, bytes | None]:
    return None, orjson.dumps({"ts": TS, "value": 1.0})


def _deep_nesting(m: _Maker) -> tuple[bytes | None, bytes | None]:
    stream = m.stream()
    nested = m.nested(m.nesting_depth())
    where = m.rng.choice(["stream", "ts", "value", "value_list", "value_object", "document"])
    key = stream.encode()
    ts = b"%d" % TS
    if where == "document":
        return key, nested
    if where == "stream":  # no key: the body's stream is the only one
        return None, b'{"stream":' + nested + b',"ts":' + ts + b',"value":1}'
    if where == "ts":
        ts, value = nested, b"1"
    elif where == "value":
        value = nested
    elif where == "value_list":
        value = b"[" + nested + b"]"
    else:
        value = b'{"value":' + nested + b"}"
    return key, b'{"stream":"' + key + b'","ts":' + ts + b',"value":' + value + b"}"


def _oversize(m: _Maker) -> tuple[bytes | None, bytes | None]:
    # A valid event but for its size: the worker refuses it before parsing.
    pad = m.max_message_bytes + m.rng.randint(1, m.max_message_bytes)
    return m.event(pad="p" * pad)


def _random_object(m: _Maker) -> tuple[bytes | None, bytes | None]:
    # A stream, and other fields whose names (ending in "_") are never "ts" or "value".
    stream = m.stream()
    body = {m.text(8) + "_": m.json_scalar() for _ in range(m.rng.randint(0, 6))}
    return stream.encode(), orjson.dumps({"stream": stream, **body})


BAD_KINDS: dict[str, Callable[[_Maker], tuple[bytes | None, bytes | None]]] = {
    "arbitrary_bytes": _arbitrary_bytes,
    "tombstone": _tombstone,
    "truncated_json": _truncated_json,
    "invalid_utf8_in_json": _invalid_utf8_in_json,
    "not_an_object": _not_an_object,
    "nan_or_infinity": _nan_or_infinity,
    "wrong_value_type": _wrong_value_type,
    "wrong_feature_count": _wrong_feature_count,
    "unknown_feature": _unknown_feature,
    "bad_timestamp": _bad_timestamp,
    "bad_stream_id": _bad_stream_id,
    "bad_utf8_key": _bad_utf8_key,
    "no_stream_no_key": _no_stream_no_key,
    "deep_nesting": _deep_nesting,
    "oversize": _oversize,
    "random_object": _random_object,
}
# Relative frequencies; oversize messages are few because each is large.
_WEIGHTS = {kind: 1.0 for kind in BAD_KINDS} | {"oversize": 0.1, "deep_nesting": 1.5}


def good_variant(rng: random.Random, key: bytes, value: bytes) -> tuple[bytes, bytes]:
    """The same event in another form the schema accepts (see the module docstring)."""
    body = orjson.loads(value)
    form = rng.choice(["as_sent", "iso_ts", "value_list", "value_object", "stream_in_key_only"])
    if form == "iso_ts":
        body["ts"] = ms_to_iso(body["ts"])
    elif form == "value_list":
        body["value"] = [body["value"]]
    elif form == "value_object":
        body["value"] = {"value": body["value"]}
    elif form == "stream_in_key_only":
        del body["stream"]
    return key, orjson.dumps(body)


def fuzz_input(
    seed: int,
    good: Sequence[tuple[bytes, bytes]],
    bad_count: int,
    *,
    max_message_bytes: int,
) -> list[FuzzMessage]:
    """``good`` events (each in a random accepted form, in order per stream) shuffled with
    ``bad_count`` generated bad messages; the same seed gives the same messages."""
    rng = random.Random(seed)
    streams = sorted({key.decode() for key, _ in good})
    maker = _Maker(rng, streams, max_message_bytes)
    kinds = rng.choices(list(BAD_KINDS), weights=[_WEIGHTS[k] for k in BAD_KINDS], k=bad_count)
    bad = [FuzzMessage(*BAD_KINDS[kind](maker), kind=kind) for kind in kinds]
    good_messages = [FuzzMessage(*good_variant(rng, k, v), kind="good") for k, v in good]
    bad_slots = set(rng.sample(range(len(good) + bad_count), bad_count))
    good_iter, bad_iter = iter(good_messages), iter(bad)
    return [
        next(bad_iter) if position in bad_slots else next(good_iter)
        for position in range(len(good) + bad_count)
    ]
