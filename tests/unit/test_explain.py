"""``stream-ae explain``'s re-scoring and rendering without a broker: for every kind of model,
the alert's window is found among the re-scored windows, its largest deviation is the spike,
the text lists every step (a predict model's input steps have no expected value) and the plot
is drawn."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from stream_ae.alerts import parse_alert
from stream_ae.cli.explain import StreamEvents, explain, plot, render_text
from stream_ae.core.records import build_alert
from stream_ae.errors import ConfigError
from stream_ae.model.artifacts import load_artifact
from stream_ae.model.network import ModelSpec
from tests.support.hotswap_models import write_artifact
from tests.support.timeline_png import timeline_description

TS = 1_780_000_000_000
SPECS = {
    "reconstruct": ModelSpec(window=12, hidden=4),
    "predict": ModelSpec(kind="predict", window=12, horizon=3, hidden=4),
}


def _events(n: int = 80, spike_at: int = 60) -> StreamEvents:
    values = np.sin(np.arange(n) / 5.0).astype(np.float32)[:, None]
    values[spike_at] = 30.0
    # Offsets with gaps: other streams share the partition.
    return StreamEvents(values, TS + np.arange(n) * 60_000, 1000 + 3 * np.arange(n))


def _alert(events: StreamEvents, row: int, version: str, window: int) -> bytes:
    import orjson

    body = build_alert(
        stream="host-3",
        status="open",
        score=1.0,
        raw_score=1.0,
        stage="calibration",
        threshold=0.99,
        distance=9.0,
        start_ts_ms=int(events.ts_ms[row - window + 1]),
        end_ts_ms=int(events.ts_ms[row]),
        window_size=window,
        topic="metrics",
        partition=0,
        offset=int(events.offsets[row]),
        model_name="hs",
        model_version=version,
        feature_names=("value",),
        contributions=np.array([1.0]),
        directions=np.array([1]),
        steps=np.array([window - 1]),
        observed=np.array([30.0]),
        expected=np.array([0.1]),
        emitted_at_ms=int(events.ts_ms[row]),
    )
    return orjson.dumps(body)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_explain_finds_the_window_and_its_spike(kind: str, tmp_path: Path) -> None:
    spec = SPECS[kind]
    artifact = load_artifact(write_artifact(tmp_path / kind, f"v-{kind}", spec))
    events = _events()
    alert = parse_alert(_alert(events, 62, artifact.version, spec.window))
    ex = explain(alert, events, artifact)
    assert ex.end_offsets[ex.row] == events.offsets[62]
    assert len(ex.final_scores) == len(events.offsets) - spec.window + 1
    step = spec.window - 1 - 2  # the spike, two events before the window's end
    assert ex.deviations.steps[0, 0] == step and ex.deviations.observed[0, 0] == 30.0
    assert abs(ex.expected[step, 0]) < 5.0 and ex.band[step, 0] > 0

    text = render_text(ex)
    assert f"alert {alert.alert_id}  open  stream host-3" in text
    rows = text.split("largest deviation):")[1].strip().splitlines()[1:]
    assert len(rows) == spec.window
    assert rows[step].endswith("*") and rows[-1].split()[1] == str(events.offsets[62])
    assert ("/ -" in rows[0]) == (kind == "predict")  # no expected value on input steps

    png = plot(ex, tmp_path / f"{kind}.png")
    # The recent windows are drawn as the shared score timeline: every re-scored window, the
    # alert's threshold, the alert itself, no labels.
    n = len(ex.final_scores)
    drawn = timeline_description(png)
    assert f"{n} values, {n} scores (final score, model score), threshold 0.99" in drawn
    assert drawn.endswith("0 labelled windows, 1 alerts opened, 0 resolved")


def test_a_window_not_among_the_events_read_is_a_clear_error(tmp_path: Path) -> None:
    spec = SPECS["reconstruct"]
    artifact = load_artifact(write_artifact(tmp_path / "a", "v1", spec))
    events = _events()
    alert = parse_alert(_alert(events, 62, artifact.version, spec.window))
    short = StreamEvents(events.values[55:63], events.ts_ms[55:63], events.offsets[55:63])
    with pytest.raises(ConfigError, match="its window needs 12"):
        explain(alert, short, artifact)
