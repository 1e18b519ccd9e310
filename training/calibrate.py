"""Thresholds: fitting the error model globally or per stream, and saying how each was derived.

The fitting itself is :func:`stream_ae.core.scoring.fit_calibration` (EncDec-AD's Gaussian error
model, a one-sided Mahalanobis distance, an empirical body and a generalised Pareto tail);
this module decides *which* windows each calibration is fitted on and explains the result.

- ``global``: one calibration from every validation window.
- per stream: streams have different baselines (a noisy stream's normal error is another's
  anomaly), so every stream with at least ``min_windows`` validation windows gets its own; the
  others fall back to the global one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_ae.core.scoring import Calibration, ThresholdMethod, fit_calibration
from stream_ae.model.artifacts import CalibrationSet

DEFAULT_MIN_STREAM_WINDOWS = 50


def fit_calibration_set(
    errors: np.ndarray,
    streams: Sequence[str],
    *,
    method: ThresholdMethod = "far",
    level: float = 0.999,
    per_stream: bool = False,
    min_windows: int = DEFAULT_MIN_STREAM_WINDOWS,
) -> CalibrationSet:
    """The global calibration of ``errors`` (N, F) and, with ``per_stream``, one per stream
    that has at least ``min_windows`` windows (``streams`` names each row's stream)."""
    default = fit_calibration(errors, method=method, level=level)
    overrides: dict[str, Calibration] = {}
    if per_stream:
        names = np.asarray(streams, dtype=object)
        for stream in sorted(set(streams)):
            rows = names == stream
            if rows.sum() >= max(min_windows, 20):
                overrides[stream] = fit_calibration(errors[rows], method=method, level=level)
    return CalibrationSet(default, overrides)


def scores_and_thresholds(
    calibration: CalibrationSet, errors: np.ndarray, streams: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance, score and the applicable threshold of every window (N,) each, each window
    scored by its own stream's calibration (the global one when it has none)."""
    n = len(errors)
    distances, scores, thresholds = np.zeros(n), np.zeros(n), np.zeros(n)
    for cal, rows in calibration.route(streams):
        distances[rows] = cal.distance(errors[rows])
        scores[rows] = cal.score(distances[rows])
        thresholds[rows] = cal.threshold
    return distances, scores, thresholds


def alert_rate(calibration: CalibrationSet, errors: np.ndarray, streams: Sequence[str]) -> float:
    """Share of windows whose score reaches their threshold: on normal data, the false-alert
    rate per window."""
    if not len(errors):
        return 0.0
    _, scores, thresholds = scores_and_thresholds(calibration, errors, streams)
    return float(np.mean(scores >= thresholds))


@dataclass(frozen=True)
class ThresholdRow:
    """How one threshold was derived (one row of the ``thresholds`` command)."""

    scope: str  # "global" or the stream's name
    method: str
    level: float
    threshold_score: float
    threshold_distance: float
    windows: int
    normal_alert_rate: float
    tail: str
    how: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "method": self.method,
            "level": self.level,
            "threshold_score": self.threshold_score,
            "threshold_distance": self.threshold_distance,
            "windows": self.windows,
            "normal_alert_rate": self.normal_alert_rate,
            "tail": self.tail,
            "how": self.how,
        }


def describe_calibration(scope: str, calibration: Calibration) -> ThresholdRow:
    """A :class:`ThresholdRow` from the ``details`` a calibration recorded when it was fitted."""
    details = calibration.details
    return ThresholdRow(
        scope=scope,
        method=calibration.method,
        level=float(details.get("level", calibration.threshold)),
        threshold_score=calibration.threshold,
        threshold_distance=float(
            details.get("threshold_distance", calibration.threshold_distance())
        ),
        windows=int(details.get("windows", 0)),
        normal_alert_rate=float(details.get("normal_alert_rate", float("nan"))),
        tail=(
            f"GPD xi={calibration.tail_shape:.3f} sigma={calibration.tail_scale:.3g} "
            f"above u={calibration.tail_start:.3g} (P={calibration.tail_prob:.3f})"
        ),
        how=str(details.get("how", "not recorded")),
    )


def describe_thresholds(calibration: CalibrationSet) -> list[ThresholdRow]:
    """The global threshold first, then each stream's override, by stream name."""
    return [describe_calibration("global", calibration.default)] + [
        describe_calibration(stream, cal) for stream, cal in sorted(calibration.per_stream.items())
    ]


def format_thresholds(rows: Sequence[ThresholdRow]) -> str:
    """A plain-text table of the rows, then each row's derivation in words."""
    header = ("scope", "method", "level", "score thr", "distance thr", "windows", "normal rate")
    table = [header] + [
        (
            row.scope,
            row.method,
            f"{row.level:.6g}",
            f"{row.threshold_score:.6f}",
            f"{row.threshold_distance:.4g}",
            str(row.windows),
            f"{row.normal_alert_rate:.4%}",
        )
        for row in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    for row in rows:
        lines.append(f"{row.scope}: {row.how}; tail {row.tail}")
    return "\n".join(lines)
