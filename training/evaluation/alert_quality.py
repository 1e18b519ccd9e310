"""Alert-level quality: what an operator sees, from the alerts a detector opened.

NAB and SKAB score per row; an on-call engineer counts alerts. For labelled anomaly windows
(``(start_ms, end_ms)`` per stream, both ends included, as NAB's), an alert *hits* a window when
it opens inside it, a window with no alert opened inside is *missed*, and an alert opened
outside every window is *false*. The *delay* of a hit window is the time from its start to the
first alert opened inside it (NAB rewards that first detection only; later alerts in the same
window are neither hits nor false).

:func:`match_alerts` gives the outcome of each labelled window and the false alerts (the data a
timeline draws); :func:`alert_quality` its figures, pooled; :func:`quality_per_stream` per
stream. ``evaluate nab``, ``evaluate csv``, ``report`` and the shadow gate all count with these.

>>> windows = {"cpu": [(1_000, 2_000)], "mem": [(5_000, 6_000)]}
>>> opened = {"cpu": [1_500, 1_700, 9_000], "mem": []}
>>> q = alert_quality(opened, windows, rows={"cpu": 100, "mem": 100})
>>> (q.windows, q.hits, q.misses, q.false_alerts, q.median_delay_ms)
(2, 1, 1, 1, 500.0)
>>> round(q.false_per_10k_rows, 1)
50.0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stream_ae.core.records import parse_ts

Windows = Mapping[str, Sequence[tuple[int, int]]]


@dataclass(frozen=True)
class AlertQuality:
    """Alert-level figures over a set of streams (see the module docstring)."""

    windows: int
    hits: int
    misses: int
    false_alerts: int
    alerts_opened: int
    rows: int
    median_delay_ms: float | None

    @property
    def false_per_10k_rows(self) -> float:
        return 1e4 * self.false_alerts / self.rows if self.rows else 0.0

    @property
    def recall(self) -> float:
        return self.hits / self.windows if self.windows else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "false_per_10k_rows": self.false_per_10k_rows,
            "recall": self.recall,
        }


def opened_times(alerts: Iterable[Mapping[str, Any]]) -> dict[str, list[int]]:
    """``{stream: [window end time (ms) of each alert opened]}`` from alert messages."""
    out: dict[str, list[int]] = {}
    for alert in alerts:
        if alert.get("status") == "open":
            out.setdefault(str(alert["stream"]), []).append(parse_ts(alert["window"]["end_ts"]))
    return out


@dataclass(frozen=True)
class WindowOutcome:
    """One labelled window and the first alert opened inside it (None: missed)."""

    stream: str
    start_ms: int
    end_ms: int
    first_alert_ms: int | None

    @property
    def hit(self) -> bool:
        return self.first_alert_ms is not None

    @property
    def delay_ms(self) -> int | None:
        return None if self.first_alert_ms is None else self.first_alert_ms - self.start_ms


@dataclass(frozen=True)
class AlertMatch:
    """Every labelled window with its outcome and every false alert, per stream: the data
    behind :class:`AlertQuality` (and what a timeline plot draws)."""

    windows: tuple[WindowOutcome, ...]
    false_alerts: Mapping[str, tuple[int, ...]]  # stream -> open times (ms), sorted
    alerts_opened: Mapping[str, int]  # stream -> alerts opened

    def quality(self, rows: Mapping[str, int]) -> AlertQuality:
        """The figures of this match; ``rows`` (scored rows per stream) gives the rate."""
        delays = [w.delay_ms for w in self.windows if w.delay_ms is not None]
        hits = len(delays)
        return AlertQuality(
            windows=len(self.windows),
            hits=hits,
            misses=len(self.windows) - hits,
            false_alerts=sum(len(times) for times in self.false_alerts.values()),
            alerts_opened=sum(self.alerts_opened.values()),
            rows=sum(rows.values()),
            median_delay_ms=float(np.median(delays)) if delays else None,
        )


def match_alerts(opened: Mapping[str, Sequence[int]], windows: Windows) -> AlertMatch:
    """Each labelled window of ``windows`` with the first alert of ``opened`` (times in ms, per
    stream) inside it, and the alerts opened outside every window (the rules of the module
    docstring). Windows are listed by stream, then in the order given."""
    outcomes: list[WindowOutcome] = []
    false_alerts: dict[str, tuple[int, ...]] = {}
    counts: dict[str, int] = {}
    for stream in sorted(set(opened) | set(windows)):
        times = np.sort(np.asarray(opened.get(stream, ()), dtype=np.int64))
        counts[stream] = len(times)
        inside = np.zeros(len(times), dtype=bool)
        for start, end in windows.get(stream, ()):
            within = (times >= start) & (times <= end)
            inside |= within
            first = int(times[within][0]) if within.any() else None
            outcomes.append(WindowOutcome(stream, int(start), int(end), first))
        false_alerts[stream] = tuple(int(t) for t in times[~inside])
    return AlertMatch(tuple(outcomes), false_alerts, counts)


def alert_quality(
    opened: Mapping[str, Sequence[int]], windows: Windows, *, rows: Mapping[str, int]
) -> AlertQuality:
    """Hits, misses, false alerts and delays of the alerts ``opened`` (times in ms, per stream)
    against labelled ``windows``; ``rows`` is the scored rows per stream (for the false-alert
    rate)."""
    return match_alerts(opened, windows).quality(rows)


def quality_per_stream(
    opened: Mapping[str, Sequence[int]], windows: Windows, *, rows: Mapping[str, int]
) -> dict[str, AlertQuality]:
    """:func:`alert_quality` of each stream of ``rows``, ``opened`` or ``windows`` alone."""
    streams = sorted(set(rows) | set(opened) | set(windows))
    return {
        s: alert_quality({s: opened.get(s, ())}, {s: windows.get(s, ())}, rows={s: rows.get(s, 0)})
        for s in streams
    }


def format_quality(per_stream: Mapping[str, AlertQuality], pooled: AlertQuality) -> str:
    """A table: one row per stream and the pooled one (delays in minutes).

    >>> q = AlertQuality(2, 1, 1, 3, 5, 10_000, 90_000.0)
    >>> print(format_quality({"cpu": q}, q))
    stream  windows  hits  misses  false alerts  per 10k rows  median delay (min)
    cpu           2     1       1             3           3.0                 1.5
    pooled        2     1       1             3           3.0                 1.5
    """
    header = (
        "stream",
        "windows",
        "hits",
        "misses",
        "false alerts",
        "per 10k rows",
        "median delay (min)",
    )
    rows = [
        (
            name,
            str(q.windows),
            str(q.hits),
            str(q.misses),
            str(q.false_alerts),
            f"{q.false_per_10k_rows:.1f}",
            "-" if q.median_delay_ms is None else f"{q.median_delay_ms / 60_000:.1f}",
        )
        for name, q in [*per_stream.items(), ("pooled", pooled)]
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *rows)
    )
