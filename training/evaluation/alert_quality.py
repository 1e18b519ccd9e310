"""Alert-level quality: what an operator sees, from the alerts a detector opened.

NAB and SKAB score per row; an on-call engineer counts alerts. For labelled anomaly windows
(``(start_ms, end_ms)`` per stream, both ends included, as NAB's), an alert *hits* a window when
it opens inside it, a window with no alert opened inside is *missed*, and an alert opened
outside every window is *false*. The *delay* of a hit window is the time from its start to the
first alert opened inside it (NAB rewards that first detection only; later alerts in the same
window are neither hits nor false).

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


def alert_quality(
    opened: Mapping[str, Sequence[int]], windows: Windows, *, rows: Mapping[str, int]
) -> AlertQuality:
    """Hits, misses, false alerts and delays of the alerts ``opened`` (times in ms, per stream)
    against labelled ``windows``; ``rows`` is the scored rows per stream (for the false-alert
    rate)."""
    hits = misses = false_alerts = total = 0
    delays: list[int] = []
    for stream in set(opened) | set(windows):
        times = np.sort(np.asarray(opened.get(stream, ()), dtype=np.int64))
        total += len(times)
        inside = np.zeros(len(times), dtype=bool)
        for start, end in windows.get(stream, ()):
            within = (times >= start) & (times <= end)
            inside |= within
            if within.any():
                hits += 1
                delays.append(int(times[within][0]) - start)
            else:
                misses += 1
        false_alerts += int((~inside).sum())
    return AlertQuality(
        windows=hits + misses,
        hits=hits,
        misses=misses,
        false_alerts=false_alerts,
        alerts_opened=total,
        rows=sum(rows.values()),
        median_delay_ms=float(np.median(delays)) if delays else None,
    )
