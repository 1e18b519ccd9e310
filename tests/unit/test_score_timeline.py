"""The score timeline every command draws (:mod:`stream_ae.score_timeline`): what ends up on the
axes with labels and without, several features, the PNG and its description, bad input, and
the one-line error without matplotlib."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from stream_ae.errors import StreamAEError
from stream_ae.score_timeline import (
    MISSING_MATPLOTLIB,
    Timeline,
    alert_marks,
    draw_timeline,
    flag_runs,
    plot_timeline,
    pyplot,
)
from tests.support.timeline_png import timeline_description

T0 = 1_780_000_000_000
STEP_MS = 60_000
N = 400


def _timeline(**changes: Any) -> Timeline:
    ts = T0 + np.arange(N) * STEP_MS
    values = np.sin(np.arange(N) / 9.0)
    values[300:305] += 6.0
    final = np.full(N, 0.2)
    final[300:310] = 0.97
    fields: dict[str, Any] = {
        "ts_ms": ts,
        "values": values,
        "scores": {"final score": final, "model score": final * 0.9},
        "threshold": 0.9,
        "opened_ms": [int(ts[300])],
        "resolved_ms": [int(ts[312])],
        "marks_ms": {"end of training": int(ts[100])},
        "title": "host-1.cpu",
    }
    return Timeline(**{**fields, **changes})


def _drawn(timeline: Timeline) -> tuple[Any, Any, Any]:
    plt = pyplot()
    figure = plt.figure()
    value_axis, score_axis = draw_timeline(figure, figure.add_gridspec(1, 1)[0], timeline)
    return figure, value_axis, score_axis


def _legend(axis: Any) -> list[str]:
    return [text.get_text() for text in axis.get_legend().get_texts()]


def test_with_labels_the_windows_are_shaded_on_both_panels(tmp_path: Path) -> None:
    ts = T0 + np.arange(N) * STEP_MS
    labelled = [(int(ts[295]), int(ts[315])), (int(ts[40]), int(ts[45]))]
    timeline = _timeline(labelled_ms=labelled)
    figure, value_axis, score_axis = _drawn(timeline)
    red = to_rgb("tab:red")
    try:
        for axis in (value_axis, score_axis):
            spans = [p for p in axis.patches if np.allclose(p.get_facecolor()[:3], red)]
            assert len(spans) == 2
            assert _legend(axis).count("labelled window") == 1
        legend = _legend(score_axis)
        assert "alert threshold 0.9" in legend
        assert "alert opened (1)" in legend and "alert resolved (1)" in legend
        assert "end of training" in legend
        # The open marker sits on the final score where the alert opened.
        (opened,) = [c for c in score_axis.collections if c.get_label() == "alert opened (1)"]
        assert opened.get_offsets()[0][1] == pytest.approx(0.97)
        assert value_axis.get_title(loc="left") == "host-1.cpu"
        assert score_axis.get_ylim() == (-0.02, 1.05)
    finally:
        pyplot().close(figure)

    png = plot_timeline(timeline, tmp_path / "deep" / "labelled.png")
    assert timeline_description(png) == (
        "score timeline: 400 values, 400 scores (final score, model score), threshold 0.9, "
        "2 labelled windows, 1 alerts opened, 1 resolved"
    )


def test_without_labels_nothing_is_shaded(tmp_path: Path) -> None:
    timeline = _timeline(opened_ms=[], resolved_ms=[], threshold=None, marks_ms={})
    figure, value_axis, score_axis = _drawn(timeline)
    try:
        for axis in (value_axis, score_axis):
            assert not axis.patches
            assert "labelled window" not in _legend(axis)
        assert not score_axis.collections  # no alert markers
        assert not any(t.startswith("alert threshold") for t in _legend(score_axis))
    finally:
        pyplot().close(figure)
    png = plot_timeline(timeline, tmp_path / "plain.png")
    assert timeline_description(png).endswith(
        "threshold none, 0 labelled windows, 0 alerts opened, 0 resolved"
    )


def test_several_features_are_standardised_and_scores_may_have_their_own_times() -> None:
    ts = T0 + np.arange(N) * STEP_MS
    values = np.column_stack([np.arange(N) * 1000.0, np.cos(np.arange(N) / 5.0)])
    ends = ts[31:]  # one score per window of 32 events
    distances = np.linspace(0.0, 30.0, len(ends))  # not a [0, 1] score
    timeline = Timeline(
        ts_ms=ts,
        values=values,
        value_names=("bytes", "load"),
        scores={"distance": distances},
        score_ts_ms=ends,
        threshold=15.0,
        focus_ms=(int(ts[200]), int(ts[231])),
        focus_label="the alert's window",
    )
    figure, value_axis, score_axis = _drawn(timeline)
    try:
        assert value_axis.get_ylabel() == "values (standardised)"
        lines = {line.get_label(): line.get_ydata() for line in value_axis.get_lines()}
        assert set(lines) == {"bytes", "load"}
        assert abs(np.mean(lines["bytes"])) < 1e-9 and np.std(lines["bytes"]) == pytest.approx(1)
        (score_line,) = [ln for ln in score_axis.get_lines() if ln.get_label() == "distance"]
        assert len(score_line.get_xdata()) == len(ends)
        assert score_axis.get_ylim()[1] > 15.0  # not clipped to [0, 1]
        assert "the alert's window" in _legend(value_axis)
    finally:
        pyplot().close(figure)


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="399 values for 400 times"):
        _timeline(values=np.zeros(N - 1))
    with pytest.raises(ValueError, match="score 'final score': 3 scores for 400 times"):
        _timeline(scores={"final score": np.zeros(3)})
    with pytest.raises(ValueError, match="at least one score"):
        _timeline(scores={})


def test_without_matplotlib_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(StreamAEError) as error:
        plot_timeline(_timeline(), tmp_path / "x.png")
    assert (
        str(error.value)
        == MISSING_MATPLOTLIB
        == ("plots need matplotlib: pip install 'stream-ae[plots]'")
    )
    assert not (tmp_path / "x.png").exists()


def test_alert_marks_and_flag_runs() -> None:
    alerts = [
        {"stream": "a", "status": "open", "window": {"end_ts": "2026-01-01T00:00:00Z"}},
        {"stream": "b", "status": "open", "window": {"end_ts": "2026-01-01T00:01:00Z"}},
        {"stream": "a", "status": "resolved", "window": {"end_ts": "2026-01-01T00:02:00.5Z"}},
    ]
    jan1 = 1_767_225_600_000
    assert alert_marks(alerts, "a") == ([jan1], [jan1 + 120_500])
    assert alert_marks(alerts) == ([jan1, jan1 + 60_000], [jan1 + 120_500])
    assert flag_runs(np.array([1, 1, 0, 0, 1, 0, 1])) == [(0, 1), (4, 4), (6, 6)]
    assert flag_runs(np.zeros(5)) == []
