"""The typed alerts follower's pure part (stream_ae.alerts): parsing by schema version, what it
refuses (what the shipped JSON Schema refuses), de-duplication in bounded memory, pairing."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson
import pytest

from stream_ae.alerts import Alert, AlertSequence, parse_alert
from stream_ae.core.records import build_alert
from stream_ae.errors import SchemaError
from tests.unit.test_alert_schema import VALIDATOR  # the shipped schema, formats checked


def alert(
    stream: str = "host-1", status: str = "open", offset: int = 100, gap: bool | None = None
) -> dict[str, Any]:
    return build_alert(
        stream=stream,
        status=status,
        score=0.97,
        raw_score=0.999,
        stage="likelihood",
        threshold=0.9,
        distance=5.5,
        start_ts_ms=1_780_000_000_000,
        end_ts_ms=1_780_000_015_000,
        window_size=16,
        topic="metrics",
        partition=2,
        offset=offset,
        model_name="tiny",
        model_version="v7",
        feature_names=("cpu", "mem"),
        contributions=np.array([0.8, 0.2]),
        directions=np.array([1, -1]),
        steps=np.array([15, 3]),
        observed=np.array([9.5, 1.0]),
        expected=np.array([2.0, 1.25]),
        emitted_at_ms=1_780_000_016_000,
        gap=gap,
    )


def as_version(body: dict[str, Any], version: int) -> dict[str, Any]:
    """``body`` as an older worker would have sent it."""
    body = orjson.loads(orjson.dumps(body))
    body["schema"] = f"stream-ae.alert/v{version}"
    for feature in body["features"]:
        for name in ("step", "observed", "expected"):
            del feature[name]
    if version == 1:
        del body["raw_score"], body["stage"]
    return body


def test_a_current_alert_parses_into_its_typed_fields() -> None:
    body = alert()
    parsed = parse_alert(orjson.dumps(body))
    assert parsed.alert_id == body["alert_id"] and parsed.schema == "stream-ae.alert/v4"
    assert (parsed.stream, parsed.status, parsed.stage) == ("host-1", "open", "likelihood")
    assert (parsed.score, parsed.raw_score, parsed.threshold) == (0.97, 0.999, 0.9)
    assert parsed.source.topic == "metrics" and parsed.source.offset == 100
    assert parsed.window_size == 16 and parsed.window_end.year == 2026
    assert parsed.window_end.tzinfo is not None
    assert parsed.top_feature.name == "cpu"
    cpu, mem = parsed.features
    assert (cpu.step, cpu.observed, cpu.expected, cpu.direction) == (15, 9.5, 2.0, "above")
    assert (mem.step, mem.observed, mem.expected, mem.direction) == (3, 1.0, 1.25, "below")
    assert parsed.payload == body and parsed.opened_by is None
    assert parsed.window_gap is None  # not checked (gap policy score)


@pytest.mark.parametrize("gap", [True, False])
def test_the_window_gap_flag_of_a_v4_alert_is_read(gap: bool) -> None:
    assert parse_alert(orjson.dumps(alert(gap=gap))).window_gap is gap
    older = {**alert(), "schema": "stream-ae.alert/v3"}
    assert parse_alert(older).window_gap is None


@pytest.mark.parametrize("version", [1, 2])
def test_older_versions_parse_with_the_fields_they_lack_as_none(version: int) -> None:
    parsed = parse_alert(as_version(alert(), version))
    assert parsed.features[0].observed is None and parsed.features[0].step is None
    assert (parsed.stage is None) == (version == 1)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("status",), "closed"),
        (("score",), 1.5),
        (("score",), "high"),
        (("raw_score",), -0.1),
        (("stage",), "model"),
        (("alert_id",), "XYZ"),
        (("features",), []),
        (("emitted_at",), "yesterday"),
        (("emitted_at",), "2026-02-30T00:00:00Z"),
        (("window", "end_ts"), "2026-01-01 00:00"),
        (("window", "size"), 0),
        (("source", "offset"), -1),
        (("source", "partition"), True),
        (("features", 0, "direction"), "up"),
        (("features", 0, "step"), -1),
        (("features", 0, "observed"), None),
        (("features", 0, "contribution"), 2.0),
        (("window", "gap"), "yes"),
    ],
)
def test_it_refuses_what_the_shipped_schema_refuses(path: tuple[Any, ...], value: Any) -> None:
    body = alert()
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert not VALIDATOR.is_valid(body)
    with pytest.raises(SchemaError):
        parse_alert(body)


def test_an_unknown_version_is_skipped_with_one_warning_or_raises_on_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    future = {**alert(), "schema": "stream-ae.alert/v9"}
    messages = [orjson.dumps(future), b"not json", orjson.dumps(alert()), orjson.dumps(future)]
    sequence = AlertSequence()
    with caplog.at_level(logging.WARNING, logger="stream_ae.alerts"):
        got = sequence.feed(messages)
    assert [a.alert_id for a in got] == [alert()["alert_id"]]
    assert sequence.skipped == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # one per reason, not one per message
    assert any("stream-ae.alert/v9" in w and "upgrade" in w for w in warnings)
    with pytest.raises(SchemaError, match="v9"):
        AlertSequence(on_invalid="raise").feed([orjson.dumps(future)])


def test_replays_are_dropped_within_the_remembered_ids() -> None:
    a, b, c = (orjson.dumps(alert(offset=o)) for o in (1, 2, 3))
    sequence = AlertSequence(remember=2)
    assert len(sequence.feed([a, b, a, b, None])) == 2
    assert len(sequence.feed([c])) == 1  # forgets a, the least recently seen
    assert len(sequence.feed([b, c])) == 0
    assert len(sequence.feed([a])) == 1
    with pytest.raises(ValueError):
        AlertSequence(remember=0)


def test_a_resolved_alert_is_paired_with_the_open_one_it_closes() -> None:
    messages = [
        alert("s1", "resolved", 5),  # its open alert came before the follower started
        alert("s1", "open", 10),
        alert("s2", "open", 11),
        alert("s1", "resolved", 20),
        alert("s1", "open", 30),
        alert("s2", "resolved", 31),
    ]
    got: list[Alert] = AlertSequence().feed(orjson.dumps(m) for m in messages)
    assert [a.status for a in got] == [m["status"] for m in messages]
    assert got[0].opened_by is None
    assert got[3].opened_by == got[1] and got[3].opened_by.source.offset == 10
    assert got[5].opened_by == got[2]
    assert all(a.opened_by is None for a in got if a.status == "open")
