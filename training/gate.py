"""The champion/challenger gate: a new model replaces the champion only if it is not worse.

Both models are evaluated on the same recent normal data (windows that raised alerts left
out), on two measures:

- the **error**: mean squared reconstruction/prediction error, with residuals divided by each
  window's running standard deviation (the worker's per-stream statistics). That makes the
  error comparable between models whatever scaling each chose, and between streams of
  different levels;
- the **false-alert rate**: the share of those (normal) windows whose calibrated score reaches
  the model's own threshold.

The challenger passes if its error is at most ``(1 + error_tolerance)`` times the champion's
and its false-alert rate at most the champion's plus ``far_tolerance``. Without a champion it
passes. Neither measure predicts the alerts a worker would open: where traffic can be replayed,
the shadow gate (:mod:`training.shadow`, ``max_alert_ratio``, ``min_excess_alerts``) runs first.
:func:`decide` is pure; :func:`evaluate_artifact` runs the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from stream_ae.model.artifacts import Artifact
from training.calibrate import alert_rate
from training.data import Series
from training.model_runner import run_model
from training.windows import Windows, all_windows, pad_side


@dataclass(frozen=True)
class GateConfig:
    """How much worse than the champion a challenger may be and still replace it."""

    error_tolerance: float = field(
        default=0.10,
        metadata={
            "help": "the challenger's error may exceed the champion's by this fraction",
            "metavar": "F",
        },
    )
    far_tolerance: float = field(
        default=0.002,
        metadata={
            "help": "its false-alert rate per window may exceed the champion's by this much",
            "metavar": "RATE",
        },
    )

    # The shadow gate (:mod:`training.shadow`), when there is traffic to replay.
    max_alert_ratio: float = field(
        default=3.0,
        metadata={
            "help": "shadow replay: refuse a challenger that opens more than this many times "
            "the champion's alerts on the same traffic",
            "metavar": "X",
        },
    )
    min_excess_alerts: int = field(
        default=3,
        metadata={
            "help": "shadow replay: ... and at least this many alerts more than the champion",
            "metavar": "N",
        },
    )

    def __post_init__(self) -> None:
        if self.error_tolerance < 0 or self.far_tolerance < 0:
            raise ValueError("gate tolerances must be >= 0")
        if self.max_alert_ratio < 1 or self.min_excess_alerts < 0:
            raise ValueError("max_alert_ratio must be >= 1 and min_excess_alerts >= 0")


@dataclass(frozen=True)
class GateMetrics:
    """What one model scored on the gate data."""

    error: float
    false_alert_rate: float
    windows: int


@dataclass(frozen=True)
class GateDecision:
    accepted: bool
    reason: str
    challenger: GateMetrics
    champion: GateMetrics | None
    config: GateConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "challenger": asdict(self.challenger),
            "champion": asdict(self.champion) if self.champion else None,
            "config": asdict(self.config),
        }


def decide(
    challenger: GateMetrics, champion: GateMetrics | None, config: GateConfig
) -> GateDecision:
    """Accept or refuse the challenger, with the reason in words."""
    if champion is None:
        return GateDecision(True, "no champion yet", challenger, None, config)
    problems = []
    error_limit = champion.error * (1.0 + config.error_tolerance)
    if not challenger.error <= error_limit:  # also refuses a NaN error
        problems.append(
            f"error {challenger.error:.4g} > champion's {champion.error:.4g} "
            f"x (1 + {config.error_tolerance:g}) = {error_limit:.4g}"
        )
    far_limit = champion.false_alert_rate + config.far_tolerance
    if not challenger.false_alert_rate <= far_limit:
        problems.append(
            f"false-alert rate {challenger.false_alert_rate:.4%} > champion's "
            f"{champion.false_alert_rate:.4%} + {config.far_tolerance:.4%}"
        )
    if problems:
        return GateDecision(False, "; ".join(problems), challenger, champion, config)
    return GateDecision(
        True,
        f"error {challenger.error:.4g} vs {champion.error:.4g}, false-alert rate "
        f"{challenger.false_alert_rate:.4%} vs {champion.false_alert_rate:.4%}: within tolerance",
        challenger,
        champion,
        config,
    )


def evaluate_artifact(
    artifact: Artifact,
    series: list[Series],
    *,
    stride: int = 1,
    keep: Any = None,
) -> GateMetrics:
    """The gate metrics of ``artifact`` on ``series`` (``keep``: as in
    :func:`training.fit.fit_series`, e.g. leaving out windows that raised alerts)."""
    spec = artifact.spec
    side = pad_side(spec)
    windows = all_windows(series, spec.window, stride, pad=side if spec.masking else None)
    total = len(windows)
    if keep is not None:
        windows = windows.select(np.asarray(keep(windows), bool))
    if not len(windows):
        raise ValueError(
            f"no windows to evaluate the gate on: {len(series)} series gave {total} windows of "
            f"{spec.window} events, {total - len(windows)} left out as alerted or labelled"
        )
    view = run_model(artifact.model, spec, artifact.scaling, windows)
    return GateMetrics(
        error=normalised_error(artifact, windows, view.targets, view.outputs, view.weights),
        false_alert_rate=alert_rate(artifact.calibration, view.errors, windows.streams),
        windows=len(windows),
    )


def normalised_error(
    artifact: Artifact,
    windows: Windows,
    targets: np.ndarray,
    outputs: np.ndarray,
    weights: np.ndarray | None,
) -> float:
    """Mean squared residual in units of each window's running standard deviation."""
    scaling = artifact.scaling
    # Back from the model's scaled space to raw units: x_raw = x_scaled * std + mean.
    if scaling.mode == "stream":
        unit = windows.stat_std[:, None, :]
    else:
        unit = np.asarray(scaling.std)[None, None, :]
    residual = (targets.astype(np.float64) - outputs) * unit / windows.stat_std[:, None, :]
    squared = residual**2
    if weights is None:
        return float(np.mean(squared))
    w = weights[:, :, None] * np.ones_like(squared)
    return float(np.sum(w * squared) / max(np.sum(w), 1.0))
