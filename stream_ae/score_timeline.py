"""The score timeline: one stream's values and anomaly score over time, in one drawing.

Every command that shows a stream over time draws it with :func:`draw_timeline` (inside a
larger figure: ``stream-ae explain --plot``) or :func:`plot_timeline` (a PNG of its own:
``stream-ae-train report``, ``stream-ae evaluate nab --plot`` and ``evaluate skab --plot``), so
they all read the same way:

- top panel: the values (several features are each standardised, for display only);
- bottom panel: the score the alerts act on (bold), other scores faint (the model's score
  before post-processing, a baseline detector's), the alert threshold (red, dashed) and other
  levels (grey, dotted), a marker where an alert opened (red triangle up) and resolved (green
  triangle down);
- on both: labelled windows shaded red when labels exist, a highlighted span in grey (the
  explained alert's window), vertical dotted lines at named moments (end of the training rows,
  of NAB's probation).

Every PNG carries a ``Description`` text chunk (:func:`describe`) saying what was drawn, so a
test or a reader can tell these plots apart without looking at pixels. Matplotlib is the
``plots`` extra, imported only when something is drawn (:func:`pyplot`), with the Agg backend:
no display needed. This module is part of ``stream_ae`` (outside the pure core), so that
``stream_ae.cli`` and ``training`` both import it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream_ae.core.records import parse_ts
from stream_ae.errors import StreamAEError

SOFTWARE = "stream-ae score timeline"
MISSING_MATPLOTLIB = "plots need matplotlib: pip install 'stream-ae[plots]'"
# Named moments (vertical dotted lines): apart from the score lines' default colours.
MARK_COLOURS = ("0.25", "tab:olive", "tab:cyan", "tab:brown")
# More value lines than this are unreadable on one panel: the first ones are drawn.
MAX_VALUE_LINES = 8


@dataclass(frozen=True)
class Timeline:
    """What a score timeline shows; times in epoch milliseconds.

    ``scores`` maps a name to scores at ``score_ts_ms`` (default: ``ts_ms``; NaN where no
    window ended); the first entry is the score the alerts act on, drawn bold, against
    ``threshold``. ``levels``: other horizontal lines by name (a benchmark's own threshold).
    ``opened_ms``/``resolved_ms``: when alerts opened and resolved (their windows' end times).
    ``labelled_ms``: labelled anomaly windows ``(start_ms, end_ms)``. ``marks_ms``: named
    moments drawn as vertical lines. ``focus_ms``: one span to highlight, named ``focus_label``.
    """

    ts_ms: np.ndarray
    values: np.ndarray
    scores: Mapping[str, np.ndarray]
    score_ts_ms: np.ndarray | None = None
    threshold: float | None = None
    value_names: Sequence[str] = ("value",)
    levels: Mapping[str, float] = field(default_factory=dict)
    opened_ms: Sequence[int] = ()
    resolved_ms: Sequence[int] = ()
    labelled_ms: Sequence[tuple[int, int]] = ()
    marks_ms: Mapping[str, int] = field(default_factory=dict)
    focus_ms: tuple[int, int] | None = None
    focus_label: str = "highlighted"
    title: str = ""

    def __post_init__(self) -> None:
        if not self.scores:
            raise ValueError("a timeline needs at least one score")
        values = np.asarray(self.values)
        if len(values) != len(self.ts_ms):
            raise ValueError(f"{len(values)} values for {len(self.ts_ms)} times")
        times = self.ts_ms if self.score_ts_ms is None else self.score_ts_ms
        for name, scores in self.scores.items():
            if len(scores) != len(times):
                raise ValueError(f"score {name!r}: {len(scores)} scores for {len(times)} times")

    @property
    def score_times_ms(self) -> np.ndarray:
        return np.asarray(self.ts_ms if self.score_ts_ms is None else self.score_ts_ms)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or one clear error when the ``plots`` extra
    is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise StreamAEError(MISSING_MATPLOTLIB) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def describe(timeline: Timeline) -> str:
    """One line saying what the timeline shows (written into the PNG's ``Description``).

    >>> t = Timeline(np.arange(3), np.zeros(3), {"score": np.zeros(3)}, threshold=0.9,
    ...              opened_ms=[1], labelled_ms=[(0, 1)])
    >>> describe(t).split(", ")[-3:]
    ['1 labelled windows', '1 alerts opened', '0 resolved']
    """
    threshold = "none" if timeline.threshold is None else f"{timeline.threshold:.6g}"
    return (
        f"score timeline: {len(timeline.ts_ms)} values, {len(timeline.score_times_ms)} scores "
        f"({', '.join(timeline.scores)}), threshold {threshold}, "
        f"{len(timeline.labelled_ms)} labelled windows, {len(timeline.opened_ms)} alerts opened, "
        f"{len(timeline.resolved_ms)} resolved"
    )


def draw_timeline(figure: Any, slot: Any, timeline: Timeline) -> tuple[Any, Any]:
    """Draw ``timeline`` into ``slot`` (a subplot spec of ``figure``) as two panels sharing
    their time axis; returns the values' axis and the scores' axis."""
    grid = slot.subgridspec(2, 1, hspace=0.08)
    value_axis = figure.add_subplot(grid[0])
    score_axis = figure.add_subplot(grid[1], sharex=value_axis)
    times = _datetimes(timeline.ts_ms)
    score_times = _datetimes(timeline.score_times_ms)

    values = np.asarray(timeline.values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    names = list(timeline.value_names)[: values.shape[1]]
    names += [f"feature {i}" for i in range(len(names), values.shape[1])]
    shown = min(values.shape[1], MAX_VALUE_LINES)
    if values.shape[1] == 1:
        value_axis.plot(times, values[:, 0], lw=0.7, color="0.2", label=names[0])
        value_axis.set_ylabel(names[0])
    else:
        # Features in different units: each standardised so they share one axis.
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        scaled = (values - mean) / np.where(std > 0, std, 1.0)
        for f in range(shown):
            value_axis.plot(times, scaled[:, f], lw=0.7, label=names[f])
        value_axis.set_ylabel("values (standardised)")

    scores = list(timeline.scores.items())
    primary_name, primary = scores[0]
    for name, other in scores[1:]:
        score_axis.plot(score_times, other, lw=0.7, alpha=0.45, label=name)
    score_axis.plot(score_times, primary, lw=1.2, color="tab:purple", label=primary_name)
    if timeline.threshold is not None:
        score_axis.axhline(
            timeline.threshold,
            color="tab:red",
            ls="--",
            lw=0.9,
            label=f"alert threshold {timeline.threshold:.4g}",
        )
    for name, level in timeline.levels.items():
        score_axis.axhline(level, color="0.35", ls=":", lw=0.9, label=f"{name} {level:.4g}")
    _mark_alerts(score_axis, timeline, np.asarray(primary, dtype=np.float64))
    finite = np.concatenate([np.asarray(s, dtype=np.float64) for _, s in scores])
    finite = finite[np.isfinite(finite)]
    if len(finite) and finite.min() >= 0.0 and finite.max() <= 1.0:
        score_axis.set_ylim(-0.02, 1.05)
    score_axis.set_ylabel("anomaly score")

    for axis in (value_axis, score_axis):
        for k, (start, end) in enumerate(timeline.labelled_ms):
            axis.axvspan(
                *_datetimes([start, end]),
                color="tab:red",
                alpha=0.13,
                lw=0,
                label="labelled window" if k == 0 else None,
            )
        if timeline.focus_ms is not None:
            axis.axvspan(
                *_datetimes(timeline.focus_ms),
                color="0.5",
                alpha=0.2,
                lw=0,
                label=timeline.focus_label,
            )
        for k, (name, moment) in enumerate(timeline.marks_ms.items()):
            colour = MARK_COLOURS[k % len(MARK_COLOURS)]
            axis.axvline(_datetimes([moment])[0], color=colour, ls=":", lw=1.1, label=name)
        axis.grid(alpha=0.25)
    value_axis.tick_params(labelbottom=False)
    value_axis.legend(loc="best", fontsize=7, ncol=min(shown, 4))
    score_axis.legend(loc="best", fontsize=7, ncol=3)
    if timeline.title:
        value_axis.set_title(timeline.title, loc="left", fontsize=10)
    return value_axis, score_axis


def plot_timeline(timeline: Timeline, path: Path, *, dpi: int = 90) -> Path:
    """Draw ``timeline`` alone to the PNG ``path`` (its folder is created)."""
    plt = pyplot()
    figure = plt.figure(figsize=(12, 5.2), layout="constrained")
    draw_timeline(figure, figure.add_gridspec(1, 1)[0], timeline)
    return save_figure(figure, path, describe(timeline), dpi=dpi)


def save_figure(figure: Any, path: Path, description: str, *, dpi: int = 90) -> Path:
    """Write ``figure`` to the PNG ``path`` with ``description`` in its text chunks, and
    close it."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.savefig(path, dpi=dpi, metadata={"Software": SOFTWARE, "Description": description})
    finally:
        plt.close(figure)
    return path


def alert_marks(
    alerts: Iterable[Mapping[str, Any]], stream: str | None = None
) -> tuple[list[int], list[int]]:
    """The window end times (ms) of the alerts opened and of those resolved, from alert
    messages (of ``stream`` only, when given)."""
    opened: list[int] = []
    resolved: list[int] = []
    for alert in alerts:
        if stream is not None and alert.get("stream") != stream:
            continue
        end_ms = parse_ts(alert["window"]["end_ts"])
        (opened if alert.get("status") == "open" else resolved).append(end_ms)
    return opened, resolved


def flag_runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` row of each run of true flags (a 0/1 label or prediction column).

    >>> flag_runs(np.array([0, 1, 1, 0, 1]))
    [(1, 2), (4, 4)]
    """
    padded = np.r_[False, np.asarray(flags).astype(bool), False]
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def file_stem(stream: str) -> str:
    """``stream`` as the stem of its PNG's file name: runs of characters other than letters,
    digits, ``.``, ``_`` and ``-`` become ``_``.

    >>> file_stem("host-1/cpu load")
    'host-1_cpu_load'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stream)


def _datetimes(ts_ms: Iterable[int] | np.ndarray) -> np.ndarray:
    return np.asarray(ts_ms, dtype=np.int64).astype("datetime64[ms]")


def _mark_alerts(axis: Any, timeline: Timeline, primary: np.ndarray) -> None:
    """Triangles on the primary score where alerts opened (up) and resolved (down)."""
    times_ms = timeline.score_times_ms.astype(np.int64)
    for moments, marker, colour, label in (
        (timeline.opened_ms, "^", "tab:red", "alert opened"),
        (timeline.resolved_ms, "v", "tab:green", "alert resolved"),
    ):
        if not len(moments) or not len(times_ms):
            continue
        rows = np.clip(
            np.searchsorted(times_ms, np.asarray(moments, dtype=np.int64)), 0, len(times_ms) - 1
        )
        heights = np.nan_to_num(primary[rows], nan=0.0)
        axis.scatter(
            _datetimes(np.asarray(moments, dtype=np.int64)),
            heights,
            marker=marker,
            s=42,
            color=colour,
            edgecolors="black",
            linewidths=0.5,
            zorder=5,
            label=f"{label} ({len(moments)})",
        )
