"""Fitting an autoencoder and calibrating its error: series in, artifact out.

Windows come from :func:`stream_ae.windowing.series_windows` (the worker's own windowing), the
train/validation split is by time within each series (the last ``val_fraction`` of its windows
validate; nothing is shuffled across the split), scaling is fitted on training data only, and
the calibration on the held-out validation windows, which the model never trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stream_ae.artifacts import CalibrationSet, Scaling, save_artifact
from stream_ae.model import ModelSpec, build_model, split_window
from stream_ae.scoring import Calibration, ThresholdMethod, fit_calibration, window_errors
from stream_ae.windowing import series_windows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """How to fit: everything besides the model spec."""

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    patience: int = 5
    val_fraction: float = 0.2
    train_stride: int = 1
    seed: int = 0
    scaling: Literal["global", "stream"] = "global"
    threshold_method: ThresholdMethod = "far"
    threshold_level: float = 0.999
    per_stream_calibration: bool = False
    verbose: int = 1


@dataclass
class Windows:
    """Windows of several series with the running stats at their last event."""

    raw: np.ndarray  # (N, W, F)
    stat_mean: np.ndarray  # (N, F)
    stat_std: np.ndarray  # (N, F)
    streams: list[str] = field(default_factory=list)


def split_series_windows(
    series: Sequence[tuple[str, np.ndarray]], window: int, stride: int, val_fraction: float
) -> tuple[Windows, Windows]:
    """Per series: windows in time order, the first part for training, the rest validating."""
    train: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    val: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    for name, values in series:
        result = series_windows(values, window, stride)
        n = len(result.windows)
        if n == 0:
            continue
        cut = max(1, round(n * (1 - val_fraction))) if n > 1 else n
        for part, rows in ((train, slice(0, cut)), (val, slice(cut, n))):
            part.append((name, result.windows[rows], result.stat_mean[rows], result.stat_std[rows]))
    return _stack(train), _stack(val)


def _stack(parts: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> Windows:
    parts = [p for p in parts if len(p[1])]
    if not parts:
        return Windows(np.zeros((0, 1, 1), np.float32), np.zeros((0, 1)), np.zeros((0, 1)))
    return Windows(
        raw=np.concatenate([p[1] for p in parts]),
        stat_mean=np.concatenate([p[2] for p in parts]),
        stat_std=np.concatenate([p[3] for p in parts]),
        streams=[p[0] for p in parts for _ in range(len(p[1]))],
    )


def fit_model(
    spec: ModelSpec,
    train_scaled: np.ndarray,
    val_scaled: np.ndarray,
    config: FitConfig,
    initial_weights: list[np.ndarray] | None = None,
) -> tuple[Any, dict[str, list[float]]]:
    """Train a model of ``spec``: Adam, MSE, early stopping with the best weights restored."""
    import keras

    model = build_model(spec, seed=config.seed)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    x_train, y_train = split_window(spec, train_scaled)
    x_val, y_val = split_window(spec, val_scaled)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="mse")
    history = model.fit(
        x_train,
        y_train if len(y_train) > 1 else y_train[0],
        validation_data=(x_val, y_val if len(y_val) > 1 else y_val[0]) if len(x_val) else None,
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


def model_errors(
    model: Any, spec: ModelSpec, scaled: np.ndarray, batch_size: int = 1024
) -> np.ndarray:
    """Per-window, per-feature log-MSE of the model on scaled windows (N, F)."""
    from stream_ae.model import as_output_list

    inputs, targets = split_window(spec, scaled)
    outputs = as_output_list(model.predict(inputs, batch_size=batch_size, verbose=0))
    errors, _ = window_errors(np.concatenate(targets, axis=1), np.concatenate(outputs, axis=1))
    return errors


def train_artifact(
    series: Sequence[tuple[str, np.ndarray]],
    spec: ModelSpec,
    out_dir: Path,
    *,
    name: str = "default",
    version: str | None = None,
    config: FitConfig | None = None,
) -> Path:
    """Fit, calibrate and write an artifact from named series of shape (T, F)."""
    config = config or FitConfig()
    train, val = split_series_windows(series, spec.window, config.train_stride, config.val_fraction)
    if len(train.raw) < 2 or len(val.raw) < 20:
        raise ValueError(
            f"too little data: {len(train.raw)} training and {len(val.raw)} validation windows "
            f"(need >= 2 and >= 20); give longer series or a smaller window"
        )
    scaling = Scaling.fit(train.raw.reshape(-1, spec.features), mode=config.scaling)
    train_scaled = scaling.apply(train.raw, train.stat_mean, train.stat_std)
    val_scaled = scaling.apply(val.raw, val.stat_mean, val.stat_std)
    model, history = fit_model(spec, train_scaled, val_scaled, config)
    errors = model_errors(model, spec, val_scaled)
    calibration = fit_calibration(
        errors, method=config.threshold_method, level=config.threshold_level
    )
    per_stream: dict[str, Calibration] = {}
    if config.per_stream_calibration:
        names = np.asarray(val.streams, dtype=object)
        for stream in sorted(set(val.streams)):
            rows = names == stream
            if rows.sum() >= 50:
                per_stream[stream] = fit_calibration(
                    errors[rows], method=config.threshold_method, level=config.threshold_level
                )
    metrics = {
        "train_windows": len(train.raw),
        "val_windows": len(val.raw),
        "val_loss": min(history.get("val_loss", history.get("loss", [float("nan")]))),
        "epochs_run": len(history.get("loss", [])),
        "history": history,
    }
    return save_artifact(
        out_dir,
        model=model,
        spec=spec,
        scaling=scaling,
        calibration=CalibrationSet(calibration, per_stream),
        name=name,
        version=version,
        metrics=metrics,
    )
