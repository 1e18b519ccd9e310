"""Alerts match the shipped JSON Schema (stream_ae/schemas/alert.v4.json), and alert ids are
deterministic: the same input and model version always give the same id."""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

import stream_ae
from stream_ae.core.postprocess import STAGES
from stream_ae.core.records import ALERT_SCHEMA_ID, alert_id, alert_schema, build_alert, ms_to_iso

SCHEMAS = Path(stream_ae.__file__).parent / "schemas"
SCHEMA_FILE = SCHEMAS / "alert.v4.json"
# RFC 3339 date-time, as JSON Schema's "date-time" format means it. jsonschema only checks this
# format when the optional rfc3339-validator is installed, so the check is spelled out here.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _checker() -> FormatChecker:
    checker = copy.deepcopy(Draft202012Validator.FORMAT_CHECKER)

    @checker.checks("date-time", raises=ValueError)
    def is_date_time(instance: object) -> bool:
        if not isinstance(instance, str):
            return True
        if not _RFC3339.match(instance):
            return False
        datetime.fromisoformat(instance.upper().replace("Z", "+00:00"))  # real calendar date
        return True

    return checker


VALIDATOR = Draft202012Validator(alert_schema(), format_checker=_checker())


def make_alert(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "stream": "host-7/cpu",
        "status": "open",
        "score": 0.61,
        "raw_score": 0.9993,
        "stage": "likelihood",
        "threshold": 0.5715,
        "distance": 4.2,
        "start_ts_ms": 1_704_067_200_000,
        "end_ts_ms": 1_704_067_263_000,
        "window_size": 64,
        "topic": "metrics",
        "partition": 3,
        "offset": 12_345,
        "model_name": "default",
        "model_version": "20240101T000000000000Z",
        "feature_names": ("cpu", "mem"),
        "contributions": np.array([0.75, 0.25]),
        "directions": np.array([1, -1]),
        "steps": np.array([63, 10]),
        "observed": np.array([97.5, 0.25]),
        "expected": np.array([41.0, 0.5]),
        "emitted_at_ms": 1_704_067_264_123,
    }
    arguments.update(overrides)
    return build_alert(**arguments)


def test_the_shipped_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema == alert_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["schema"]["const"] == ALERT_SCHEMA_ID


def test_an_alert_validates_and_survives_json() -> None:
    alert = make_alert()
    VALIDATOR.validate(alert)
    VALIDATOR.validate(json.loads(json.dumps(alert)))
    assert alert["schema"] == ALERT_SCHEMA_ID
    assert alert["window"] == {
        "start_ts": "2024-01-01T00:00:00.000Z",
        "end_ts": "2024-01-01T00:01:03.000Z",
        "size": 64,
    }
    assert alert["source"] == {"topic": "metrics", "partition": 3, "offset": 12_345}
    assert alert["features"] == [
        {
            "name": "cpu",
            "contribution": 0.75,
            "direction": "above",
            "step": 63,
            "observed": 97.5,
            "expected": 41.0,
        },
        {
            "name": "mem",
            "contribution": 0.25,
            "direction": "below",
            "step": 10,
            "observed": 0.25,
            "expected": 0.5,
        },
    ]
    assert alert["emitted_at"] == "2024-01-01T00:01:04.123Z"


def test_the_validator_does_check_formats_and_constraints() -> None:
    """Guard against a validator that accepts anything (e.g. formats silently unchecked)."""
    broken: list[tuple[str, Any]] = [
        ("emitted_at", "yesterday"),
        ("emitted_at", "2024-02-30T00:00:00Z"),
        ("status", "closed"),
        ("score", 1.5),
        ("raw_score", -0.1),
        ("stage", "model"),
        ("alert_id", "XYZ"),
        ("schema", "stream-ae.alert/v2"),
        ("features", []),
        ("unexpected", 1),
    ]
    for field, value in broken:
        alert = make_alert()
        alert[field] = value
        with pytest.raises(jsonschema.ValidationError):
            VALIDATOR.validate(alert)
    alert = make_alert()
    alert["window"]["end_ts"] = "2024-01-01 00:00"
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(alert)
    alert = make_alert()
    del alert["source"]["offset"]
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(alert)
    for field, value in [("step", -1), ("observed", "high"), ("expected", None)]:
        alert = make_alert()
        alert["features"][0][field] = value
        with pytest.raises(jsonschema.ValidationError):
            VALIDATOR.validate(alert)


@settings(max_examples=100, deadline=None)
@given(
    stream=st.text(min_size=1, max_size=256).filter(lambda s: not set(s) & set("{}\n\r\x00")),
    status=st.sampled_from(["open", "resolved"]),
    score=st.floats(0, 1),
    raw_score=st.floats(0, 1),
    stage=st.sampled_from(["calibration", "likelihood", "seasonal"]),
    threshold=st.floats(0, 1),
    distance=st.floats(0, 1e12),
    start_ms=st.integers(0, 8_999_999_999_999),
    span_ms=st.integers(0, 10**9),
    window=st.integers(1, 4096),
    partition=st.integers(0, 2**31 - 1),
    offset=st.integers(0, 2**62),
    shares=st.lists(st.floats(0.001, 1), min_size=1, max_size=5),
    version=st.text(max_size=30),
)
def test_any_alert_the_worker_can_build_validates(
    stream: str,
    status: str,
    score: float,
    raw_score: float,
    stage: str,
    threshold: float,
    distance: float,
    start_ms: int,
    span_ms: int,
    window: int,
    partition: int,
    offset: int,
    shares: list[float],
    version: str,
) -> None:
    contributions = np.array(shares) / np.sum(shares)
    alert = make_alert(
        stream=stream,
        status=status,
        score=score,
        raw_score=raw_score,
        stage=stage,
        threshold=threshold,
        distance=distance,
        start_ts_ms=start_ms,
        end_ts_ms=start_ms + span_ms,
        emitted_at_ms=start_ms + span_ms,
        window_size=window,
        partition=partition,
        offset=offset,
        model_version=version,
        feature_names=[f"f{i}" for i in range(len(shares))],
        contributions=np.clip(contributions, 0.0, 1.0),
        directions=np.where(np.arange(len(shares)) % 2 == 0, 1, -1),
        steps=np.arange(len(shares)) % window,
        observed=np.array(shares) * 1e6,
        expected=-np.array(shares),
    )
    VALIDATOR.validate(alert)


# --- alert_id ---------------------------------------------------------------------------------


def test_alert_id_is_deterministic_and_ignores_presentation_fields() -> None:
    first = make_alert()
    # Re-scored on replay: emitted later, score and contributions may be recomputed.
    again = make_alert(emitted_at_ms=1_800_000_000_000, score=0.99931, distance=4.3)
    assert first["alert_id"] == again["alert_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first["alert_id"])
    assert first["alert_id"] == alert_id(
        "host-7/cpu", "metrics", 3, 12_345, "open", "20240101T000000000000Z"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"model_version": "20240102T000000000000Z"},
        {"offset": 12_346},
        {"status": "resolved"},
        {"partition": 4},
        {"topic": "metrics-2"},
        {"stream": "host-8/cpu"},
    ],
)
def test_alert_id_differs_when_its_inputs_differ(change: dict[str, Any]) -> None:
    assert make_alert(**change)["alert_id"] != make_alert()["alert_id"]


def test_alert_id_fields_cannot_run_into_each_other() -> None:
    # Naive concatenation would make ("a1", 23) and ("a", 123) the same token.
    assert alert_id("a1", "t", 2, 3, "open", "v") != alert_id("a", "1t", 2, 3, "open", "v")
    assert alert_id("s", "t", 12, 3, "open", "v") != alert_id("s", "t", 1, 23, "open", "v")


def test_ms_to_iso_is_utc_with_milliseconds() -> None:
    assert ms_to_iso(0) == "1970-01-01T00:00:00.000Z"
    assert ms_to_iso(1_704_067_200_001) == "2024-01-01T00:00:00.001Z"


def test_version_4_is_version_3_plus_the_optional_window_gap_flag() -> None:
    """The v3 file stays for consumers that still validate against it; v4 differs only by the
    optional ``window.gap`` (a v3 validator refuses an alert that carries it: its window allows
    no other properties, hence the new version) and by two more stage names (the smoothed
    distance and the running-range check), which only detectors that use them emit."""
    v3 = json.loads((SCHEMAS / "alert.v3.json").read_text())
    v4 = json.loads(SCHEMA_FILE.read_text())
    assert v4["properties"]["schema"]["const"] == ALERT_SCHEMA_ID == "stream-ae.alert/v4"
    assert set(v4["properties"]) == set(v3["properties"])
    for name in set(v3["properties"]) - {"schema", "window", "stage"}:
        assert v4["properties"][name] == v3["properties"][name], name
    stages3, stages4 = v3["properties"]["stage"]["enum"], v4["properties"]["stage"]["enum"]
    assert stages4[: len(stages3)] == stages3 and tuple(stages4) == STAGES
    with pytest.raises(jsonschema.ValidationError):
        Draft202012Validator(v3).validate(
            {**make_alert(), "schema": "stream-ae.alert/v3", "stage": "range"}
        )
    window3, window4 = v3["properties"]["window"], v4["properties"]["window"]
    assert set(window4["properties"]) - set(window3["properties"]) == {"gap"}
    assert window4["required"] == window3["required"]  # optional: absent under policy score
    flagged = make_alert(gap=True)
    VALIDATOR.validate(flagged)
    assert flagged["window"]["gap"] is True and "gap" not in make_alert()["window"]
    assert make_alert(gap=False)["window"]["gap"] is False
    v3_alert = {**make_alert(), "schema": "stream-ae.alert/v3"}
    Draft202012Validator(v3).validate(v3_alert)  # unflagged, it is a v3 alert but for its id
    with pytest.raises(jsonschema.ValidationError):
        Draft202012Validator(v3).validate({**flagged, "schema": "stream-ae.alert/v3"})
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate({**flagged, "window": {**flagged["window"], "gap": "yes"}})


def test_version_3_is_version_2_plus_the_observed_and_expected_values() -> None:
    """The v2 file stays for consumers that still validate against it; v3 differs only by the
    per-feature step, observed and expected values (a v2 validator refuses them: its feature
    items allow no other properties, hence the new version)."""
    v2 = json.loads((SCHEMAS / "alert.v2.json").read_text())
    v3 = json.loads((SCHEMAS / "alert.v3.json").read_text())
    assert v3["properties"]["schema"]["const"] == "stream-ae.alert/v3"
    assert set(v3["properties"]) == set(v2["properties"])
    for name in set(v2["properties"]) - {"schema", "features"}:
        assert v3["properties"][name] == v2["properties"][name], name
    item2, item3 = v2["properties"]["features"]["items"], v3["properties"]["features"]["items"]
    assert set(item3["properties"]) - set(item2["properties"]) == {"step", "observed", "expected"}
    assert set(item3["required"]) - set(item2["required"]) == {"step", "observed", "expected"}
    with pytest.raises(jsonschema.ValidationError):
        Draft202012Validator(v2).validate({**make_alert(), "schema": "stream-ae.alert/v2"})


def test_version_2_is_version_1_plus_raw_score_and_stage() -> None:
    """The v1 file stays for consumers that still validate against it; v2 differs only by
    the added fields (a v1 validator refuses v2 alerts, hence the new version)."""
    v1 = json.loads((SCHEMAS / "alert.v1.json").read_text())
    v2 = json.loads((SCHEMAS / "alert.v2.json").read_text())
    assert set(v2["properties"]) - set(v1["properties"]) == {"raw_score", "stage"}
    assert set(v2["required"]) - set(v1["required"]) == {"raw_score", "stage"}
    assert v2["properties"]["schema"]["const"] == "stream-ae.alert/v2"
    for name in set(v1["properties"]) - {"schema", "score"}:
        assert v2["properties"][name] == v1["properties"][name], name
