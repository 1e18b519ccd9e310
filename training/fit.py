"""Fitting an autoencoder and calibrating its error: series in, artifact out.

Windows come from :func:`stream_ae.core.windowing.series_windows` (the worker's own windowing), the
train/validation split is by time within each series (the last ``val_fraction`` of its windows
validate; nothing is shuffled across the split), scaling is fitted on training data only, and
the calibration on the held-out validation windows, which the model never trained on.

Variable-length sequences: with ``spec.masking`` a series shorter than the window (but at least
``config.min_length`` events) becomes one window padded with
:data:`stream_ae.model.network.PAD_VALUE`.
The Masking layer makes the encoder skip padded steps, and every padded target step gets weight
0 in the loss (per-timestep sample weights with the ``mean_with_sample_weight`` reduction), so
the loss is the mean squared error over real steps only. Padding goes where the real target
steps stay at the decoder's first positions, so a padded sequence has exactly the loss it
would have unpadded: at the end for a plain reconstruction; at the start for a reversed one
(reversal brings the real steps first) and for prediction (the horizon stays real). A
composite model should therefore reconstruct reversed when it masks (warned otherwise).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stream_ae.core.alerting import AlertPolicy
from stream_ae.core.postprocess import PostParams
from stream_ae.core.scoring import ThresholdMethod
from stream_ae.model.artifacts import Artifact, CalibrationSet, Scaling, write_artifact
from stream_ae.model.network import ModelSpec, build_model, split_window
from training.data import Series, as_series
from training.model_runner import devices, model_errors
from training.windows import (
    PadSide,
    Windows,
    pad_side,
    real_values,
    scale_windows,
    split_series_windows,
    target_weights,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """How to fit: everything besides the model spec.

    Each field's ``metadata["help"]`` is its command-line help (``stream-ae-train train``
    generates its options from these fields, so each default is written here only).
    """

    epochs: int = field(default=30, metadata={"help": "most epochs", "metavar": "N"})
    batch_size: int = field(default=64, metadata={"help": "windows per batch", "metavar": "N"})
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Adam learning rate", "metavar": "RATE"}
    )
    patience: int = field(
        default=5,
        metadata={
            "help": "early stopping: epochs without a better validation loss (the best weights "
            "are restored)",
            "metavar": "N",
        },
    )
    val_fraction: float = field(
        default=0.2,
        metadata={
            "help": "last fraction of every series' windows held out for validation and "
            "calibration (time-ordered, never shuffled)",
            "metavar": "F",
        },
    )
    train_stride: int = field(
        default=1,
        metadata={
            "help": "one training window every N events",
            "option": "--stride",
            "metavar": "N",
        },
    )
    seed: int = field(default=0, metadata={"help": "random seed: same data and seed, same model"})
    scaling: Literal["global", "stream"] = field(
        default="global",
        metadata={
            "help": "global: constants fitted on the training data; stream: each stream by its "
            "own running mean/std (series of different levels)"
        },
    )
    threshold_method: ThresholdMethod = field(
        default="far",
        metadata={
            "help": "quantile: empirical quantile of normal distances; far: target false-alert "
            "rate 1 - level per window; pot: peaks over threshold (generalised Pareto tail)"
        },
    )
    threshold_level: float = field(
        default=0.999,
        metadata={"help": "the quantile / 1 - false-alert rate, in (0.5, 1)", "metavar": "L"},
    )
    per_stream_calibration: bool = field(
        default=False,
        metadata={
            "help": "calibrate every stream with enough validation windows on its own",
            "option": "--per-stream-thresholds",
        },
    )
    # Keras's verbosity; the command line sets it from --quiet and the terminal.
    verbose: int = field(default=1, metadata={"cli": False})
    min_length: int = field(
        default=8,
        metadata={
            "help": "with --masking, the shortest series used as a padded window",
            "metavar": "N",
        },
    )
    min_stream_windows: int = field(
        default=50,
        metadata={
            "help": "validation windows a stream needs for its own threshold",
            "metavar": "N",
        },
    )
    # Leave out windows overlapping a labelled anomaly range of their series (known anomalies
    # are neither training nor calibration data).
    exclude_labelled: bool = field(default=True, metadata={"cli": False})

    def calibrate(self, errors: np.ndarray, streams: Sequence[str]) -> CalibrationSet:
        """The calibration these settings fit on normal windows' ``errors`` (N, F) of
        ``streams`` (one name per window)."""
        from training.calibrate import fit_calibration_set

        return fit_calibration_set(
            errors,
            streams,
            method=self.threshold_method,
            level=self.threshold_level,
            per_stream=self.per_stream_calibration,
            min_windows=self.min_stream_windows,
        )

    def __post_init__(self) -> None:
        if not 0.5 < self.threshold_level < 1.0:
            raise ValueError(f"threshold level must be in (0.5, 1), got {self.threshold_level}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val fraction must be in [0, 1), got {self.val_fraction}")
        if min(self.epochs, self.batch_size, self.train_stride) < 1:
            raise ValueError("epochs, batch size and stride must be >= 1")


def masked_loss() -> Any:
    """MSE averaged over the steps with a non-zero weight only (all steps when unweighted)."""
    import keras

    return keras.losses.MeanSquaredError(reduction="mean_with_sample_weight")


def _one_or_list(items: list[np.ndarray]) -> Any:
    return items if len(items) > 1 else items[0]


def fit_model(
    spec: ModelSpec,
    train_scaled: np.ndarray,
    val_scaled: np.ndarray,
    config: FitConfig,
    initial_weights: list[np.ndarray] | None = None,
    *,
    train_weights: list[np.ndarray] | None = None,
    val_weights: list[np.ndarray] | None = None,
) -> tuple[Any, dict[str, list[float]]]:
    """Train a model of ``spec``: Adam, MSE, early stopping with the best weights restored.

    ``initial_weights``: warm start (a champion's weights, same spec). ``*_weights``: per-step
    loss weights from :func:`target_weights` for padded windows.
    """
    import keras

    model = build_model(spec, seed=config.seed)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    x_train, y_train = split_window(spec, train_scaled)
    x_val, y_val = split_window(spec, val_scaled)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=[masked_loss() for _ in y_train] if len(y_train) > 1 else masked_loss(),
    )
    validation: tuple[Any, ...] | None = None
    if len(x_val):
        validation = (x_val, _one_or_list(y_val))
        if val_weights is not None:
            validation = (*validation, _one_or_list(val_weights))
    history = model.fit(
        x_train,
        _one_or_list(y_train),
        sample_weight=_one_or_list(train_weights) if train_weights is not None else None,
        validation_data=validation,
        epochs=config.epochs,
        batch_size=config.batch_size,
        shuffle=True,  # within the training part only
        verbose=config.verbose,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_loss" if len(x_val) else "loss",
                patience=config.patience,
                restore_best_weights=True,
            )
        ],
    )
    return model, {k: [float(v) for v in vals] for k, vals in history.history.items()}


@dataclass
class FitResult:
    """Everything a fit produced: the model and its preprocessing, calibration and history,
    the windows it trained and validated on, and the validation errors."""

    spec: ModelSpec
    model: Any
    scaling: Scaling
    calibration: CalibrationSet
    history: dict[str, list[float]]
    train: Windows
    val: Windows
    val_errors: np.ndarray
    train_seconds: float
    excluded_windows: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_artifact(
        self,
        name: str,
        version: str | None = None,
        extra_metrics: dict[str, Any] | None = None,
        post: PostParams | None = None,
        policy: AlertPolicy | None = None,
    ) -> Artifact:
        """The fit as an in-memory artifact, ready for
        :func:`stream_ae.model.artifacts.write_artifact` (an empty version: a new one), with
        the detector's post-processing ``post`` (None: the calibrated score is final) and
        alert ``policy`` (None: none of its own, the built-in one)."""
        return Artifact(
            name=name,
            version=version or "",
            path=Path("<memory>"),
            spec=self.spec,
            scaling=self.scaling,
            calibration=self.calibration,
            metrics={**self.metrics, **(extra_metrics or {})},
            model=self.model,
            manifest={},
            post=post,
            policy=policy or AlertPolicy(),
        )


WindowFilter = Callable[[Windows], np.ndarray]


def fit_series(
    series: Sequence[Series | tuple[str, np.ndarray]],
    spec: ModelSpec,
    config: FitConfig | None = None,
    *,
    initial_weights: list[np.ndarray] | None = None,
    keep: WindowFilter | None = None,
) -> FitResult:
    """Window, split, scale, fit and calibrate.

    ``keep`` returns a boolean mask of the windows to use (refits leave out windows that raised
    alerts); it applies after the time split, so the split itself is unaffected. Windows that
    overlap a labelled anomaly range are left out as well (``config.exclude_labelled``).
    """
    config = config or FitConfig()
    side = pad_side(spec) if spec.masking else None
    if spec.masking and spec.kind == "composite" and not spec.reverse:
        log.warning(
            "a masked composite model is padded at the start for its horizon; without "
            "--reverse its decoder must learn where the real steps begin"
        )
    train, val = split_series_windows(
        series,
        spec.window,
        config.train_stride,
        config.val_fraction,
        pad=side,
        min_length=config.min_length,
    )
    excluded = 0
    labelled = {s.name: s.labels for s in map(as_series, series) if s.labels}
    if config.exclude_labelled and labelled:
        outer = keep

        def keep(windows: Windows) -> np.ndarray:
            normal = ~windows.overlapping(labelled)
            return normal if outer is None else normal & np.asarray(outer(windows), bool)

    if keep is not None:
        keep_train, keep_val = np.asarray(keep(train), bool), np.asarray(keep(val), bool)
        excluded = int((~keep_train).sum() + (~keep_val).sum())
        train, val = train.select(keep_train), val.select(keep_val)
    if len(train) < 2 or len(val) < 20:
        left_out = f", {excluded} more left out as labelled or alerted" if excluded else ""
        raise ValueError(
            f"too little data: {len(train)} training and {len(val)} validation windows"
            f"{left_out} (need >= 2 and >= 20); give longer series or a smaller window"
        )
    side_or_post: PadSide = side or "post"
    scaling = Scaling.fit(real_values(train, side_or_post), mode=config.scaling)
    train_scaled = scale_windows(scaling, train, side_or_post)
    val_scaled = scale_windows(scaling, val, side_or_post)
    log.info(
        "fitting %s on %d windows (validating on %d) with %s",
        spec.kind,
        len(train),
        len(val),
        ", ".join(devices()),
    )
    started = time.perf_counter()
    model, history = fit_model(
        spec,
        train_scaled,
        val_scaled,
        config,
        initial_weights,
        train_weights=target_weights(spec, train),
        val_weights=target_weights(spec, val),
    )
    train_seconds = time.perf_counter() - started
    errors = model_errors(model, spec, val_scaled, lengths=val.lengths)
    calibration = config.calibrate(errors, val.streams)
    losses = history.get("val_loss") or history.get("loss") or [float("nan")]
    metrics: dict[str, Any] = {
        "train_windows": len(train),
        "val_windows": len(val),
        "excluded_windows": excluded,
        "padded_windows": int(
            np.sum(train.lengths < spec.window) + np.sum(val.lengths < spec.window)
        ),
        "streams": len(set(train.streams) | set(val.streams)),
        "val_loss": float(min(losses)),
        "epochs_run": len(history.get("loss", [])),
        "train_seconds": round(train_seconds, 3),
        "warm_start": initial_weights is not None,
        "devices": devices(),
        "config": asdict(config),
        "history": history,
    }
    return FitResult(
        spec=spec,
        model=model,
        scaling=scaling,
        calibration=calibration,
        history=history,
        train=train,
        val=val,
        val_errors=errors,
        train_seconds=train_seconds,
        excluded_windows=excluded,
        metrics=metrics,
    )


def save_fit(
    result: FitResult,
    out_dir: Path,
    *,
    name: str,
    version: str | None = None,
    extra_metrics: dict[str, Any] | None = None,
    post: PostParams | None = None,
    policy: AlertPolicy | None = None,
) -> Path:
    """Write a fit as an artifact directory (see :mod:`stream_ae.model.artifacts`), with the
    detector's post-processing ``post`` and alert ``policy`` (``detector.json``) when given."""
    artifact = result.to_artifact(name, version, extra_metrics, post, policy)
    return write_artifact(artifact, out_dir)


def train_artifact(
    series: Sequence[Series | tuple[str, np.ndarray]],
    spec: ModelSpec,
    out_dir: Path,
    *,
    name: str = "default",
    version: str | None = None,
    config: FitConfig | None = None,
) -> Path:
    """Fit, calibrate and write an artifact from named series of shape (T, F)."""
    result = fit_series(series, spec, config)
    return save_fit(result, out_dir, name=name, version=version)


def default_verbosity() -> int:
    """Keras's progress bar on a terminal, one line per epoch otherwise (logs, CI)."""
    return 1 if sys.stderr.isatty() else 2
