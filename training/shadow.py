"""Shadow runs: what a model would have alerted on, replayed through the worker's own processor.

A gate that compares validation losses or calibrated false-alert rates does not predict live
alerts: a challenger can pass with "0.0000 % vs 0.0000 %" and then open five times the
champion's alerts. So before a promotion both models score the same recent traffic (a topic
replay, or files) through :class:`~stream_ae.worker.processor.StreamProcessor` and the alert
policy, exactly as a worker would, and :func:`compare` decides on the alerts they open:

- alerts opened per stream-day on the same traffic: a challenger opening more than
  ``max_alert_ratio`` times the champion's (and at least ``min_excess_alerts`` more) is refused;
- alerts opened inside the challenger's own training period (normal data by construction:
  every such alert is a false one), reported;
- where labels exist, labelled windows hit and missed: a challenger that misses windows the
  champion hits is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_ae.core.alerting import AlertPolicy
from stream_ae.core.records import Event
from stream_ae.io.window_store import InMemoryWindowStore
from stream_ae.model.artifacts import Artifact
from stream_ae.model.inference import Scorer
from stream_ae.worker.processor import StreamProcessor, WindowRecords
from training.data import Series, labelled_windows
from training.evaluation.alert_quality import AlertQuality, alert_quality, opened_times

DAY_MS = 86_400_000
# Events fed to the processor per call: the size of a worker's poll batch.
BATCH_EVENTS = 2_000


@dataclass(frozen=True)
class ScoreTrack:
    """One stream's scored windows in a shadow run, in time order: each window's end time, the
    model's calibrated score and the final score the alert policy acted on."""

    end_ts_ms: np.ndarray
    model_scores: np.ndarray
    final_scores: np.ndarray


@dataclass(frozen=True)
class ShadowResult:
    """One model's alerts on the shadow traffic, and every stream's scores (for plots)."""

    version: str
    alerts: list[dict[str, Any]]
    rows: dict[str, int]  # scored windows per stream
    stream_days: float
    opened_in_training: int
    quality: AlertQuality | None  # when the traffic has labelled windows
    tracks: dict[str, ScoreTrack] = field(default_factory=dict)

    @property
    def alerts_opened(self) -> int:
        return sum(1 for a in self.alerts if a["status"] == "open")

    @property
    def alerts_per_stream_day(self) -> float:
        return self.alerts_opened / self.stream_days if self.stream_days else 0.0


@dataclass(frozen=True)
class ShadowVerdict:
    passed: bool
    reason: str
    champion: ShadowResult | None
    challenger: ShadowResult
    figures: dict[str, Any] = field(default_factory=dict)


def series_events(series: Sequence[Series]) -> list[Event]:
    """The events of ``series`` in time order across streams, as a topic replay gives them
    (offsets from the series when it came from a topic, else row numbers)."""
    events: list[Event] = []
    for s in series:
        offsets = s.offsets if len(s.offsets) else np.arange(len(s), dtype=np.int64)
        partition = max(s.partition, 0)
        events.extend(
            Event(s.name, int(t), v, "shadow", partition, int(o))
            for t, v, o in zip(s.ts_ms, s.values, offsets, strict=True)
        )
    events.sort(key=lambda e: e.ts_ms)
    return events


def shadow_run(
    artifact: Artifact,
    series: Sequence[Series],
    *,
    policy: AlertPolicy | None = None,
    training_span_ms: tuple[int, int] | None = None,
) -> ShadowResult:
    """Replay ``series`` through a fresh processor on ``artifact``; count what it alerts on.

    ``policy``: the operator's alert policy (the fields set); the artifact's own policy, else
    the built-in one, fills the rest, as in a worker.

    ``training_span_ms`` defaults to the span the trainer recorded in the artifact's metrics
    (``train_span_ms``), when it did.
    """
    spec = artifact.spec
    scorer = Scorer(artifact)
    processor = StreamProcessor(
        InMemoryWindowStore(spec.window, spec.features),
        lambda: scorer,
        stride=1,
        policy=policy or AlertPolicy(),
        clock_ms=lambda: 0,
    )
    events = series_events(series)
    alerts: list[dict[str, Any]] = []
    scored: list[WindowRecords] = []
    for start in range(0, len(events), BATCH_EVENTS):
        outcome = processor.process(events[start : start + BATCH_EVENTS])
        processor.save(outcome.touched)
        alerts.extend(outcome.alerts)
        scored.append(outcome.windows)
    tracks = _tracks(scored)
    rows = {stream: len(track.end_ts_ms) for stream, track in tracks.items()}
    span = training_span_ms or artifact.metrics.get("train_span_ms")
    opened = opened_times(alerts)
    in_training = 0
    if span:
        low, high = int(span[0]), int(span[1])
        in_training = sum(low <= t <= high for times in opened.values() for t in times)
    labelled = labelled_windows(series)
    labelled_rows = {name: rows.get(name, 0) for name in labelled}
    return ShadowResult(
        version=artifact.version,
        alerts=alerts,
        rows=rows,
        stream_days=sum(
            max(int(s.ts_ms[-1]) - int(s.ts_ms[0]), 0) / DAY_MS for s in series if len(s)
        ),
        opened_in_training=in_training,
        quality=alert_quality(
            {name: opened.get(name, []) for name in labelled}, labelled, rows=labelled_rows
        )
        if labelled
        else None,
        tracks=tracks,
    )


def _tracks(batches: Sequence[WindowRecords]) -> dict[str, ScoreTrack]:
    """The windows of every batch, per stream, in time order."""
    if not batches:
        return {}
    streams = np.asarray([s for b in batches for s in b.streams], dtype=object)
    end_ts_ms = np.concatenate([b.end_ts_ms for b in batches])
    model_scores = np.concatenate([b.scores for b in batches])
    final_scores = np.concatenate([b.final_scores for b in batches])
    names, codes = np.unique(streams, return_inverse=True)
    order = np.lexsort((end_ts_ms, codes))  # by stream, then time
    bounds = np.cumsum(np.bincount(codes, minlength=len(names)))[:-1]
    tracks = {}
    for name, rows in zip(names.tolist(), np.split(order, bounds), strict=True):
        tracks[str(name)] = ScoreTrack(end_ts_ms[rows], model_scores[rows], final_scores[rows])
    return tracks


def compare(
    champion: ShadowResult | None,
    challenger: ShadowResult,
    *,
    max_alert_ratio: float = 3.0,
    min_excess_alerts: int = 3,
) -> ShadowVerdict:
    """The shadow gate's rule on two results over the same traffic (see the module doc)."""
    figures: dict[str, Any] = {
        "challenger_alerts": challenger.alerts_opened,
        "challenger_alerts_per_stream_day": round(challenger.alerts_per_stream_day, 3),
        "challenger_alerts_in_training": challenger.opened_in_training,
    }
    if champion is None:
        return ShadowVerdict(True, "no champion to compare with", None, challenger, figures)
    figures |= {
        "champion_alerts": champion.alerts_opened,
        "champion_alerts_per_stream_day": round(champion.alerts_per_stream_day, 3),
        "champion_alerts_in_training": champion.opened_in_training,
    }
    excess = challenger.alerts_opened - champion.alerts_opened
    # The champion's count is floored at one alert so "0 vs 3" is judged by the excess rule.
    allowed = max_alert_ratio * max(champion.alerts_opened, 1)
    if challenger.alerts_opened > allowed and excess >= min_excess_alerts:
        return ShadowVerdict(
            False,
            f"would open {challenger.alerts_opened} alerts against the champion's "
            f"{champion.alerts_opened} on the same traffic "
            f"({challenger.alerts_per_stream_day:.2f} vs {champion.alerts_per_stream_day:.2f} "
            f"per stream-day; at most {max_alert_ratio:g}x allowed)",
            champion,
            challenger,
            figures,
        )
    if challenger.quality and champion.quality:
        figures |= {
            "challenger_hits": challenger.quality.hits,
            "champion_hits": champion.quality.hits,
        }
        if challenger.quality.hits < champion.quality.hits:
            return ShadowVerdict(
                False,
                f"hits {challenger.quality.hits} of {challenger.quality.windows} labelled "
                f"windows, the champion {champion.quality.hits}",
                champion,
                challenger,
                figures,
            )
    return ShadowVerdict(
        True,
        f"{challenger.alerts_opened} alerts against the champion's {champion.alerts_opened} "
        "on the same traffic",
        champion,
        challenger,
        figures,
    )


def shadow_gate(
    champion: Artifact | None,
    challenger: Artifact,
    series: Sequence[Series],
    *,
    policy: AlertPolicy | None = None,
    max_alert_ratio: float = 3.0,
    min_excess_alerts: int = 3,
) -> ShadowVerdict:
    """Both models on the same traffic, alerts in the challenger's training span counted for
    both, and :func:`compare`'s verdict."""
    span = challenger.metrics.get("train_span_ms")
    span_ms = (int(span[0]), int(span[1])) if span else None
    challenged = shadow_run(challenger, series, policy=policy, training_span_ms=span_ms)
    held = (
        shadow_run(champion, series, policy=policy, training_span_ms=span_ms)
        if champion is not None
        else None
    )
    return compare(
        held, challenged, max_alert_ratio=max_alert_ratio, min_excess_alerts=min_excess_alerts
    )


def format_verdict(verdict: ShadowVerdict) -> str:
    """A short table of the shadow comparison, for ``stream-ae-train shadow`` and the gate."""
    lines = [f"{'':<32}{'champion':>12}{'challenger':>12}"]
    champ, chall = verdict.champion, verdict.challenger

    def row(label: str, a: Any, b: Any) -> None:
        lines.append(f"{label:<32}{a!s:>12}{b!s:>12}")

    row("version", champ.version if champ else "-", chall.version)
    row("alerts opened", champ.alerts_opened if champ else "-", chall.alerts_opened)
    row(
        "alerts per stream-day",
        f"{champ.alerts_per_stream_day:.2f}" if champ else "-",
        f"{chall.alerts_per_stream_day:.2f}",
    )
    row(
        "alerts in challenger's training",
        champ.opened_in_training if champ else "-",
        chall.opened_in_training,
    )
    if chall.quality:
        q = chall.quality
        cq = champ.quality if champ else None
        row(
            "labelled windows hit",
            f"{cq.hits}/{cq.windows}" if cq else "-",
            f"{q.hits}/{q.windows}",
        )
        row("false alerts", cq.false_alerts if cq else "-", q.false_alerts)
    lines.append(("PASS: " if verdict.passed else "REJECT: ") + verdict.reason)
    return "\n".join(lines)
