"""Scoring: from reconstruction error to a calibrated score in [0, 1]. Pure numpy.

Per window and feature the error is the log of the mean squared error over the target steps.
A :class:`Calibration`, fitted once on windows of normal data and stored in the artifact, holds
the mean and precision matrix of those error vectors (EncDec-AD's Gaussian error model). The
window's distance is a one-sided Mahalanobis distance (only errors *larger* than usual count:
a window the model reconstructs unusually well is not an anomaly); its score is the probability
that a normal window has a smaller distance: the empirical distribution in the body and a
generalised Pareto tail (peaks over threshold) beyond ``tail_start``, so scores keep their
resolution far out in the tail where alert thresholds live.

Nothing here depends on the batch a window arrived in: the calibration is fixed in the artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

_LOG_EPS = 1e-10
_N_QUANTILES = 1001
ThresholdMethod = Literal["quantile", "far", "pot"]


def window_errors(targets: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-window, per-feature error of the model's output against its target.

    ``targets`` and ``outputs`` are (N, T, F) in the model's (scaled) space. Returns the log mean
    squared error (N, F) and the residual ``target - output`` at the step of largest deviation
    (N, F), whose sign says whether the observed values lie above or below the reconstruction.
    """
    residual = np.asarray(targets, dtype=np.float64) - np.asarray(outputs, dtype=np.float64)
    mse = np.mean(residual**2, axis=1)
    # The direction is that of the largest deviation: a spike at one step says "above" even if
    # the model shifted the rest of its reconstruction up to meet it.
    worst = np.argmax(np.abs(residual), axis=1)  # (N, F)
    signed = np.take_along_axis(residual, worst[:, None, :], axis=1)[:, 0, :]
    return np.log(mse + _LOG_EPS), signed


@dataclass(frozen=True)
class Calibration:
    """The error distribution of normal windows and the alert threshold derived from it."""

    error_mean: np.ndarray  # (F,)
    precision: np.ndarray  # (F, F), inverse of the (shrunk) error covariance
    ref_distances: np.ndarray  # (K,) distance quantiles on normal data, at linspace(0, 1, K)
    tail_start: float  # u: the distance above which the tail model applies
    tail_prob: float  # P(distance > u) on normal data
    tail_shape: float  # generalised Pareto xi
    tail_scale: float  # generalised Pareto sigma
    threshold: float  # alert threshold on the score
    method: str = "quantile"
    details: dict[str, Any] = field(default_factory=dict)

    def distance(self, errors: np.ndarray) -> np.ndarray:
        """One-sided Mahalanobis distance of error vectors (N, F)."""
        excess = np.maximum(np.asarray(errors, dtype=np.float64) - self.error_mean, 0.0)
        return np.sqrt(np.einsum("nf,fg,ng->n", excess, self.precision, excess))

    def score(self, distances: np.ndarray) -> np.ndarray:
        """Calibrated score in [0, 1]: the share of normal windows with a smaller distance."""
        d = np.asarray(distances, dtype=np.float64)
        levels = np.linspace(0.0, 1.0, len(self.ref_distances))
        body = np.interp(d, self.ref_distances, levels)
        over = np.maximum(d - self.tail_start, 0.0)
        tail = 1.0 - self.tail_prob * _gpd_survival(over, self.tail_shape, self.tail_scale)
        return np.clip(np.where(d > self.tail_start, tail, body), 0.0, 1.0)

    def contributions(self, errors: np.ndarray) -> np.ndarray:
        """Share of each feature in the excess error of each window (N, F), rows sum to 1."""
        scale = np.sqrt(np.maximum(np.diag(self.precision), 0.0))
        excess = np.maximum(np.asarray(errors, dtype=np.float64) - self.error_mean, 0.0) * scale
        total = excess.sum(axis=1, keepdims=True)
        uniform = np.full_like(excess, 1.0 / excess.shape[1])
        return np.where(total > 0, excess / np.where(total > 0, total, 1.0), uniform)

    def threshold_distance(self) -> float:
        """The distance at which the score reaches the threshold."""
        return float(self.inverse_score(self.threshold))

    def inverse_score(self, score: float) -> float:
        p_exceed = 1.0 - score
        if p_exceed >= self.tail_prob:
            levels = np.linspace(0.0, 1.0, len(self.ref_distances))
            return float(np.interp(score, levels, self.ref_distances))
        ratio = p_exceed / self.tail_prob
        if abs(self.tail_shape) < 1e-9:
            return self.tail_start - self.tail_scale * float(np.log(ratio))
        return self.tail_start + self.tail_scale / self.tail_shape * (
            ratio ** (-self.tail_shape) - 1.0
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "error_mean": self.error_mean.tolist(),
            "precision": self.precision.tolist(),
            "ref_distances": self.ref_distances.tolist(),
            "tail_start": self.tail_start,
            "tail_prob": self.tail_prob,
            "tail_shape": self.tail_shape,
            "tail_scale": self.tail_scale,
            "threshold": self.threshold,
            "method": self.method,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(
            error_mean=np.asarray(data["error_mean"], dtype=np.float64),
            precision=np.asarray(data["precision"], dtype=np.float64),
            ref_distances=np.asarray(data["ref_distances"], dtype=np.float64),
            tail_start=float(data["tail_start"]),
            tail_prob=float(data["tail_prob"]),
            tail_shape=float(data["tail_shape"]),
            tail_scale=float(data["tail_scale"]),
            threshold=float(data["threshold"]),
            method=str(data.get("method", "quantile")),
            details=dict(data.get("details", {})),
        )


def _gpd_survival(excess: np.ndarray, shape: float, scale: float) -> np.ndarray:
    if abs(shape) < 1e-9:
        return np.exp(-excess / scale)
    base = np.maximum(1.0 + shape * excess / scale, 0.0)
    with np.errstate(divide="ignore"):
        return np.where(base > 0, base ** (-1.0 / shape), 0.0)


def fit_gpd(excess: np.ndarray) -> tuple[float, float]:
    """Generalised Pareto (shape, scale) of exceedances by probability-weighted moments
    (Hosking & Wallis 1987): closed form, stable on the few hundred points a tail has."""
    y = np.sort(np.asarray(excess, dtype=np.float64))
    n = len(y)
    if n < 10 or y.mean() <= 0:
        return 0.0, max(float(y.mean()) if n else 1.0, 1e-6)
    b0 = y.mean()
    b1 = float(np.sum(y * (np.arange(n) / (n - 1))) / n)  # E[X F(X)] estimate
    # Hosking's k = -shape; with t = 2 b1 - b0: shape = 2 - b0 / t, scale = 2 b0 (b0 - b1) / t.
    t = 2.0 * b1 - b0
    if t <= 0:
        return 0.0, float(b0)
    shape = 2.0 - b0 / t
    scale = 2.0 * b0 * (b0 - b1) / t
    # Heavier tails than xi = 0.5 are not credible from a few hundred points; cap for stability.
    shape = float(np.clip(shape, -0.5, 0.5))
    return shape, max(float(scale), 1e-9)


def fit_calibration(
    errors: np.ndarray,
    *,
    method: ThresholdMethod = "far",
    level: float = 0.999,
    tail_fraction: float = 0.05,
    shrinkage: float = 0.05,
) -> Calibration:
    """Fit the error model on windows of normal data and derive the alert threshold.

    ``errors`` is (N, F) from :func:`window_errors`. ``method`` says how ``level`` is read:
    ``quantile`` - the empirical ``level`` quantile of normal distances; ``far`` - a target
    false-alert rate of ``1 - level`` per window under the fitted tail; ``pot`` - peaks over
    threshold: the distance the generalised Pareto tail exceeds with probability ``1 - level``.
    All three end as a threshold on the score; ``details`` records how it was derived.
    """
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 2 or len(errors) < 20:
        raise ValueError(
            f"need at least 20 windows of shape (N, F) to calibrate, got {errors.shape}"
        )
    if not 0.5 < level < 1.0:
        raise ValueError(f"level must be in (0.5, 1), got {level}")
    n, f = errors.shape
    mean = errors.mean(axis=0)
    cov = np.atleast_2d(np.cov(errors, rowvar=False))
    # Shrink towards the diagonal so few windows or correlated features give a usable inverse.
    diag = np.diag(np.maximum(np.diag(cov), 1e-8))
    precision = np.linalg.pinv((1 - shrinkage) * cov + shrinkage * diag)
    provisional = Calibration(mean, precision, np.zeros(2), 0.0, 1.0, 0.0, 1.0, level)
    distances = provisional.distance(errors)
    ref = np.quantile(distances, np.linspace(0.0, 1.0, _N_QUANTILES))
    tail_start = float(np.quantile(distances, 1.0 - tail_fraction))
    excess = distances[distances > tail_start] - tail_start
    shape, scale = fit_gpd(excess)
    calibration = Calibration(
        error_mean=mean,
        precision=precision,
        ref_distances=ref,
        tail_start=tail_start,
        # P(distance > u) read off the body's own curve, not counted afresh: a count can
        # differ by 1/N and make the score drop where the tail takes over (non-monotone).
        tail_prob=1.0 - float(np.interp(tail_start, ref, np.linspace(0.0, 1.0, len(ref)))),
        tail_shape=shape,
        tail_scale=scale,
        threshold=level,
        method=method,
    )
    if method == "quantile":
        d_thr = float(np.quantile(distances, level))
        threshold = float(calibration.score(np.array([d_thr]))[0])
    else:
        threshold = level
        d_thr = calibration.inverse_score(level)
    details = {
        "windows": n,
        "features": f,
        "level": level,
        "threshold_distance": d_thr,
        "normal_alert_rate": float(np.mean(distances > d_thr)),
        "how": {
            "quantile": f"empirical {level:.4%} quantile of {n} normal window distances",
            "far": f"target false-alert rate {1 - level:.2e} per window under the fitted tail",
            "pot": f"peaks over threshold: GPD(xi={shape:.3f}, sigma={scale:.3g}) above "
            f"u={tail_start:.3g} exceeded with probability {1 - level:.2e}",
        }[method],
    }
    return Calibration(
        error_mean=mean,
        precision=precision,
        ref_distances=ref,
        tail_start=tail_start,
        tail_prob=calibration.tail_prob,
        tail_shape=shape,
        tail_scale=scale,
        threshold=threshold,
        method=method,
        details=details,
    )


@dataclass(frozen=True)
class WindowScores:
    """Everything scoring says about a batch of windows (arrays of length N)."""

    distances: np.ndarray
    scores: np.ndarray
    contributions: np.ndarray  # (N, F)
    directions: np.ndarray  # (N, F): +1 above the reconstruction, -1 below


@dataclass(frozen=True)
class Deviations:
    """Per window and feature, the step where the observed value is farthest from the model's
    expected value, and both values there, in original units (arrays of shape (N, F))."""

    steps: np.ndarray  # index in the window, 0 = oldest event
    observed: np.ndarray
    expected: np.ndarray


def largest_deviations(windows: np.ndarray, expected: np.ndarray) -> Deviations:
    """The step of largest ``|observed - expected|`` per window and feature, over the steps the
    model has an expected value for (``expected`` is NaN elsewhere); ``windows`` and
    ``expected`` are (N, W, F) in the same units.

    >>> w = np.array([[[1.0], [5.0], [2.0]]])
    >>> d = largest_deviations(w, np.array([[[np.nan], [1.5], [2.5]]]))
    >>> d.steps.tolist(), d.observed.tolist(), d.expected.tolist()
    ([[1]], [[5.0]], [[1.5]])
    """
    observed = np.asarray(windows, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    gap = np.abs(observed - expected)
    steps = np.argmax(np.where(np.isnan(gap), -np.inf, gap), axis=1)  # (N, F)
    at = steps[:, None, :]
    return Deviations(
        steps=steps,
        observed=np.take_along_axis(observed, at, axis=1)[:, 0, :],
        expected=np.take_along_axis(expected, at, axis=1)[:, 0, :],
    )


def score_windows(
    calibration: Calibration, targets: np.ndarray, outputs: np.ndarray
) -> WindowScores:
    """From model targets and outputs to calibrated scores, contributions and directions."""
    errors, signed = window_errors(targets, outputs)
    distances = calibration.distance(errors)
    return WindowScores(
        distances=distances,
        scores=calibration.score(distances),
        contributions=calibration.contributions(errors),
        directions=np.where(signed >= 0, 1, -1),
    )
