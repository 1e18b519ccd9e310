"""Refits: fit a challenger on recent data, gate it against the champion, publish.

One refit (:func:`refit_once`), in order:

1. load the recent data (a replay of the input topic, bounded per stream);
2. load the champion, if any; the challenger warm-starts from its weights when the spec is
   unchanged (a refit then only adapts the model to drift instead of learning from scratch);
3. decide which windows are anomalous and leave them out of training: those covered by alerts
   on the alerts topic, and/or those the champion scores above its threshold (so the model
   does not learn the anomalies as normal), and any labelled anomaly ranges the data carries.
   The gate's "normal data" leaves out the alert-covered and labelled windows too, but not the
   ones only the champion's scores flagged: that would make its false-alert rate zero by
   construction;
4. hold out the most recent ``gate_fraction`` of every series for the gate, fit on the rest;
5. publish the challenger (atomically, its training span recorded as ``train_span_ms``),
   replay the refit data through both models as a worker would (the shadow gate: refused if
   it would open several times the champion's alerts), evaluate both on the held-out recent
   windows, and promote it or keep it as a rejected candidate with the reason
   (:func:`publish_gated`, shared with ``train --registry``).

:func:`run_every` repeats a refit on a fixed period until asked to stop (SIGTERM/SIGINT).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np

from stream_ae.core.alerting import AlertPolicy
from stream_ae.core.postprocess import PostParams
from stream_ae.errors import StreamAEError
from stream_ae.model.artifacts import Artifact, load_artifact
from stream_ae.model.network import ModelSpec
from training.calibrate import scores_and_thresholds
from training.data import Series, alert_spans, describe, split_recent, time_span
from training.fit import FitConfig, FitResult, fit_series, save_fit
from training.gate import GateConfig, GateDecision, decide, evaluate_artifact
from training.model_runner import run_model
from training.registry import Registry
from training.shadow import ShadowVerdict, format_verdict, shadow_gate
from training.windows import Windows

log = logging.getLogger(__name__)

ExcludeMode = Literal["alerts", "scores", "both", "none"]
WindowFilter = Callable[[Windows], np.ndarray]


def spans_filter(spans: Mapping[str, Sequence[tuple[int, int]]]) -> WindowFilter:
    """Keep the windows that overlap no span of their stream."""

    def keep(windows: Windows) -> np.ndarray:
        return ~windows.overlapping(spans)

    return keep


def labels_filter(series: Sequence[Series]) -> WindowFilter | None:
    """Keep the windows that overlap no labelled anomaly range (None when nothing is
    labelled): known anomalies are neither training data nor "normal" data for the gate."""
    spans = {s.name: list(s.labels) for s in series if s.labels}
    return spans_filter(spans) if spans else None


def champion_filter(champion: Artifact) -> WindowFilter:
    """Keep the windows the champion scores below its threshold (its windows must have the
    champion's length; the worker never changes the window length under a running model)."""

    def keep(windows: Windows) -> np.ndarray:
        spec = champion.spec
        if not len(windows):
            return np.ones(0, dtype=bool)
        if windows.raw.shape[1] != spec.window:
            log.warning("champion window %d differs: no score-based exclusion", spec.window)
            return np.ones(len(windows), dtype=bool)
        view = run_model(champion.model, spec, champion.scaling, windows)
        _, scores, thresholds = scores_and_thresholds(
            champion.calibration, view.errors, windows.streams
        )
        return np.asarray(scores < thresholds)

    return keep


def all_of(filters: Sequence[WindowFilter]) -> WindowFilter | None:
    """A filter keeping what every one of ``filters`` keeps (None when there are none)."""
    if not filters:
        return None

    def keep(windows: Windows) -> np.ndarray:
        out = np.ones(len(windows), dtype=bool)
        for f in filters:
            out &= f(windows)
        return out

    return keep


def load_champion(registry: Registry, name: str) -> Artifact | None:
    """The champion artifact, verified, or None when the model has none yet."""
    version = registry.champion(name)
    return None if version is None else load_artifact(registry.path(name, version))


@dataclass(frozen=True)
class GatedPublish:
    """The outcome of :func:`publish_gated`: promoted, rejected (by the shadow replay or the
    loss gate, with why), or neither (kept as a candidate)."""

    version: str
    promoted: bool
    decision: GateDecision | None
    reason: str
    shadow: ShadowVerdict | None = None

    @property
    def rejected(self) -> bool:
        shadow_refused = self.shadow is not None and not self.shadow.passed
        return shadow_refused or (self.decision is not None and not self.decision.accepted)


def publish_gated(
    registry: Registry,
    name: str,
    result: FitResult,
    *,
    gate_series: Sequence[Series],
    gate: GateConfig,
    keep: WindowFilter | None = None,
    champion: Artifact | None = None,
    force: bool = False,
    extra_metrics: dict[str, Any] | None = None,
    shadow_series: Sequence[Series] = (),
    policy: AlertPolicy | None = None,
    post: PostParams | None = None,
    detector_policy: AlertPolicy | None = None,
) -> GatedPublish:
    """Publish ``result`` with the post-processing ``post`` and the detector's alert policy
    ``detector_policy`` (its ``detector.json``), then :func:`gate_and_promote` it; ``policy``
    is the operator's, for the shadow replay."""
    version = registry.publish(
        name,
        lambda directory, v: save_fit(
            result,
            directory,
            name=name,
            version=v,
            extra_metrics=extra_metrics,
            post=post,
            policy=detector_policy,
        ),
    )
    if champion is None:
        champion = load_champion(registry, name)
    return gate_and_promote(
        registry,
        name,
        version,
        champion,
        gate_series=gate_series,
        gate=gate,
        keep=keep,
        force=force,
        shadow_series=shadow_series,
        policy=policy,
    )


def shadow_record(verdict: ShadowVerdict) -> dict[str, Any]:
    """The shadow comparison as the registry records it with the decision."""
    return {"passed": verdict.passed, "reason": verdict.reason, **verdict.figures}


def gate_and_promote(
    registry: Registry,
    name: str,
    version: str,
    champion: Artifact | None,
    *,
    gate_series: Sequence[Series],
    gate: GateConfig,
    keep: WindowFilter | None = None,
    force: bool = False,
    shadow_series: Sequence[Series] = (),
    policy: AlertPolicy | None = None,
) -> GatedPublish:
    """Promote the published ``version`` if it passes the gates against ``champion``
    (``force``: promote anyway); otherwise record it as rejected, with why.

    1. With ``shadow_series`` (recent traffic), both models replay it through the worker's
       processor and alert ``policy`` (:func:`training.shadow.shadow_gate`): a challenger that
       would open more than ``gate.max_alert_ratio`` times the champion's alerts is refused.
       This runs first because it is what the on-call engineer would see.
    2. On ``gate_series``, the error and false-alert rate of :func:`training.gate.decide`.

    With no gate data a challenger is promoted only when there is no champion or with
    ``force``; otherwise it stays a candidate for a manual ``promote``.
    """
    if force:
        registry.promote(name, version, reason="forced (gate skipped)")
        return GatedPublish(version, True, None, "forced (gate skipped)")
    if champion is None:
        registry.promote(name, version, reason="first champion")
        return GatedPublish(version, True, None, "first champion")
    if not gate_series and not shadow_series:
        reason = "no gate data: kept as a candidate (promote it by hand)"
        log.warning("%s/%s: %s", name, version, reason)
        return GatedPublish(version, False, None, reason)
    challenger = load_artifact(registry.path(name, version))
    verdict: ShadowVerdict | None = None
    record: dict[str, Any] = {}
    if shadow_series:
        verdict = shadow_gate(
            champion,
            challenger,
            shadow_series,
            policy=policy,
            max_alert_ratio=gate.max_alert_ratio,
            min_excess_alerts=gate.min_excess_alerts,
        )
        log.info("%s/%s shadow replay:\n%s", name, version, format_verdict(verdict))
        record["shadow"] = shadow_record(verdict)
        if not verdict.passed:
            reason = f"shadow replay: {verdict.reason}"
            registry.reject(name, version, reason, gate=record)
            return GatedPublish(version, False, None, reason, verdict)
    if not gate_series:
        assert verdict is not None
        reason = f"shadow replay: {verdict.reason}"
        registry.promote(name, version, reason=reason, gate=record)
        return GatedPublish(version, True, None, reason, verdict)
    decision = decide(
        evaluate_artifact(challenger, list(gate_series), keep=keep),
        evaluate_artifact(champion, list(gate_series), keep=keep),
        gate,
    )
    reason = decision.reason + (f"; shadow replay: {verdict.reason}" if verdict else "")
    record = decision.to_dict() | record
    if decision.accepted:
        registry.promote(name, version, reason=reason, gate=record)
    else:
        registry.reject(name, version, reason, gate=record)
    return GatedPublish(version, decision.accepted, decision, reason, verdict)


@dataclass(frozen=True)
class RefitPlan:
    """What a refit does besides loading data (see the module docstring)."""

    name: str = field(default="default", metadata={"cli": False})
    # The challenger's definition: ``spec`` and ``fit`` as given (a first fit, ``train``), or,
    # with ``spec`` None, the champion's own spec and fit configuration with ``spec_changes``
    # and ``fit_changes`` applied (a refit changes only what it is told to, and says so).
    spec: ModelSpec | None = field(default=None, metadata={"cli": False})
    fit: FitConfig = field(default_factory=FitConfig, metadata={"cli": False})
    spec_changes: Mapping[str, Any] = field(default_factory=dict, metadata={"cli": False})
    fit_changes: Mapping[str, Any] = field(default_factory=dict, metadata={"cli": False})
    gate: GateConfig = field(default_factory=GateConfig, metadata={"cli": False})
    # A first fit's post-processing and alert policy (detector.json; None: none); a refit
    # keeps the champion's.
    post: PostParams | None = field(default=None, metadata={"cli": False})
    detector_policy: AlertPolicy | None = field(default=None, metadata={"cli": False})
    gate_fraction: float = field(
        default=0.2,
        metadata={
            "help": "most recent fraction of every series held out to compare the challenger "
            "with the champion (unused while there is no champion)",
            "metavar": "F",
        },
    )
    exclude: ExcludeMode = field(
        default="both",
        metadata={
            "help": "leave out of training the windows covered by alerts on the alerts topic, "
            "those the champion scores above its threshold, both, or none"
        },
    )
    warm_start: bool = field(
        default=True,
        metadata={"help": "start from the champion's weights when the spec is unchanged"},
    )
    shadow: bool = field(
        default=True,
        metadata={
            "help": "replay the data through both models as a worker would and refuse a "
            "challenger that opens several times the champion's alerts (--max-alert-ratio)"
        },
    )
    # The operator's alert policy (the settings' open/resolve/cooldown rules, those set) for
    # the shadow replay; each model's detector policy fills the rest.
    policy: AlertPolicy | None = field(default=None, metadata={"cli": False})

    def __post_init__(self) -> None:
        if not 0.0 <= self.gate_fraction < 1.0:
            raise ValueError(f"gate_fraction must be in [0, 1), got {self.gate_fraction}")

    def definition(self, champion: Artifact | None) -> tuple[ModelSpec, FitConfig, list[str]]:
        """The challenger's spec and fit configuration, and what differs from the champion's
        (``field old -> new``; empty without a champion)."""
        if self.spec is not None:
            spec, fit = self.spec, replace(self.fit, **self.fit_changes)
        elif champion is None:
            raise RefitError(
                f"model {self.name!r} has no champion yet: give the model spec for its first fit"
            )
        else:
            spec = replace(champion.spec, **self.spec_changes)
            fit = replace(fit_config_of(champion), **self.fit_changes)
        if champion is None:
            return spec, fit, []
        return spec, fit, _changes(champion.spec, spec) + _changes(fit_config_of(champion), fit)


class RefitError(StreamAEError):
    """A refit cannot run: no champion and no spec, no data in the time range, too little data.
    The message is one line with the counts behind it."""


# Fields that say how a fit ran rather than what the model is: not worth announcing.
_QUIET_FIELDS = frozenset({"verbose", "epochs", "patience", "seed"})


def _changes(before: Any, after: Any) -> list[str]:
    out = []
    for f in fields(before):
        old, new = getattr(before, f.name), getattr(after, f.name)
        if old != new and f.name not in _QUIET_FIELDS:
            out.append(f"{f.name} {old} -> {new}")
    return out


def fit_config_of(artifact: Artifact) -> FitConfig:
    """The fit configuration ``artifact`` was made with: what its metrics recorded, and, above
    that, what the artifact itself shows (its scaling mode, its calibration's method, level and
    per-stream overrides), so an artifact from before the record still refits as it was."""
    known = {f.name for f in fields(FitConfig)}
    recorded = artifact.metrics.get("config") or {}
    config = FitConfig(**{k: v for k, v in recorded.items() if k in known})
    default = artifact.calibration.default
    level = default.details.get("level") if isinstance(default.details, dict) else None
    return replace(
        config,
        scaling=artifact.scaling.mode,
        threshold_method=default.method,  # type: ignore[arg-type]
        threshold_level=float(level) if level is not None else config.threshold_level,
        per_stream_calibration=bool(artifact.calibration.per_stream)
        or config.per_stream_calibration,
    )


@dataclass(frozen=True)
class RefitOutcome:
    version: str
    promoted: bool
    reason: str
    warm_start: bool
    excluded_windows: int
    train_seconds: float
    changes: tuple[str, ...] = ()

    def summary(self, name: str) -> str:
        """One line for the log: what happened and what changed from the champion."""
        changed = "; ".join(self.changes) if self.changes else "none"
        return (
            f"refit {name}: {self.version} {'promoted' if self.promoted else 'not promoted'} "
            f"({self.reason}); changes from the champion: {changed}; warm start: "
            f"{self.warm_start}, excluded windows: {self.excluded_windows}, fit "
            f"{self.train_seconds:.1f}s"
        )


def refit_once(
    registry: Registry,
    plan: RefitPlan,
    load_series: Callable[[], list[Series]],
    load_alerts: Callable[[], list[dict[str, Any]]] | None = None,
) -> RefitOutcome:
    """One refit: load, exclude, fit (warm), publish, gate (see the module docstring)."""
    series = [s for s in load_series() if len(s)]
    champion = load_champion(registry, plan.name)
    spec, fit, changes = plan.definition(champion)
    for change in changes:
        log.info("%s: the challenger changes %s", plan.name, change)
    # Weights carry over only to the same architecture fed the same scaling: weights learnt on
    # globally scaled inputs are no start for per-stream scaled ones.
    warm = (
        champion.model.get_weights()
        if plan.warm_start
        and champion is not None
        and champion.spec == spec
        and fit_config_of(champion).scaling == fit.scaling
        else None
    )
    alert_keep: WindowFilter | None = None
    if plan.exclude in ("alerts", "both") and load_alerts is not None:
        spans = alert_spans(load_alerts())
        log.info(
            "alerts cover %d span(s) in %d stream(s)", sum(map(len, spans.values())), len(spans)
        )
        alert_keep = spans_filter(spans)
    score_keep = (
        champion_filter(champion)
        if plan.exclude in ("scores", "both") and champion is not None
        else None
    )
    # (fit_series itself leaves out labelled windows from training.)
    train_keep = all_of([f for f in (alert_keep, score_keep) if f is not None])
    gate_keep = all_of([f for f in (alert_keep, labels_filter(series)) if f is not None])
    # Without a champion there is nothing to gate against: every event goes into the fit.
    older, recent = (
        split_recent(series, plan.gate_fraction, spec.window)
        if plan.gate_fraction and champion is not None
        else (series, [])
    )
    try:
        result = fit_series(older, spec, fit, initial_weights=warm, keep=train_keep)
    except ValueError as exc:
        held = f", {plan.gate_fraction:g} of each series held out for the gate" if recent else ""
        raise RefitError(f"refit of {plan.name!r}: {exc}; data: {describe(series)}{held}") from None
    # What comes after the model (detector.json): a first fit's is the plan's, a refit keeps
    # the champion's.
    after_model: tuple[PostParams | None, AlertPolicy | None] = (
        (plan.post, plan.detector_policy)
        if plan.spec is not None
        else (champion.post, champion.policy)
        if champion
        else (None, None)
    )
    published = publish_gated(
        registry,
        plan.name,
        result,
        gate_series=recent,
        gate=plan.gate,
        # The gate leaves out only what alerts flagged: windows dropped because the champion
        # scored them high would make the champion's false-alert rate zero by construction.
        keep=gate_keep,
        champion=champion,
        # The whole refit range, training period included: alerts a challenger opens on its
        # own training data are false by construction, and the shadow verdict counts them.
        shadow_series=series if plan.shadow and champion is not None else (),
        policy=plan.policy,
        post=after_model[0],
        detector_policy=after_model[1],
        extra_metrics={
            "train_span_ms": time_span(older),
            "refit": {
                "warm_start_from": champion.version if warm is not None and champion else None,
                "exclude": plan.exclude,
                "gate_fraction": plan.gate_fraction,
                "changes": changes,
            },
        },
    )
    return RefitOutcome(
        version=published.version,
        promoted=published.promoted,
        reason=published.reason,
        warm_start=warm is not None,
        excluded_windows=result.excluded_windows,
        train_seconds=result.train_seconds,
        changes=tuple(changes),
    )


def run_every(
    interval_s: float,
    job: Callable[[], Any],
    stop: threading.Event,
    *,
    max_runs: int | None = None,
) -> int:
    """Run ``job`` now and then every ``interval_s`` (start to start) until ``stop`` is set;
    returns the number of failed runs. A failing run is logged and the loop goes on: the next
    period may find the broker back."""
    failures = runs = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            job()
        except StreamAEError as exc:  # a reason in words: no traceback needed
            failures += 1
            log.error("refit failed: %s (will try again in %.0fs)", exc, interval_s)
        except Exception:
            failures += 1
            log.exception("refit failed (will try again in %.0fs)", interval_s)
        runs += 1
        if max_runs is not None and runs >= max_runs:
            break
        stop.wait(max(interval_s - (time.monotonic() - started), 0.0))
    return failures
