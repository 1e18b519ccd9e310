"""Running a model over windows offline: scale as trained, predict, and the per-window error.

The error is the worker's (:func:`stream_ae.core.scoring.window_errors`, a per-feature log-MSE)
restricted to real steps when windows are padded, so offline scoring, calibration, the gate and
reports all see the number the worker would compute.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_ae.core.scoring import window_errors
from stream_ae.model.artifacts import Scaling
from stream_ae.model.network import ModelSpec, as_output_list, split_window
from training.windows import Windows, pad_side, scale_windows, target_weights

# The same floor as stream_ae.core.scoring.window_errors, so unpadded windows get identical errors.
_LOG_EPS = 1e-10


def predict(
    model: Any, spec: ModelSpec, scaled: np.ndarray, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Targets and outputs of the model on scaled windows, all outputs concatenated along
    time: (N, T, F) each (T = reconstructed steps + predicted steps)."""
    inputs, targets = split_window(spec, scaled)
    if not len(inputs):
        empty = np.zeros((0, sum(t.shape[1] for t in targets), spec.features), np.float32)
        return empty, empty
    outputs = as_output_list(
        model.predict(inputs, batch_size=batch_size, verbose=predict_verbosity(len(inputs)))
    )
    return np.concatenate(targets, axis=1), np.concatenate(outputs, axis=1)


# Scoring this many windows takes long enough on a CPU to deserve a progress bar.
_PROGRESS_MIN_WINDOWS = 20_000


def predict_verbosity(windows: int) -> int:
    """Keras's progress bar for long predictions on a terminal, silence otherwise."""
    return 1 if windows >= _PROGRESS_MIN_WINDOWS and sys.stderr.isatty() else 0


def masked_window_errors(
    targets: np.ndarray, outputs: np.ndarray, weights: np.ndarray | None
) -> np.ndarray:
    """Per-window, per-feature log-MSE over the real steps only (N, F); without weights this
    is exactly :func:`stream_ae.core.scoring.window_errors`."""
    if weights is None:
        return window_errors(targets, outputs)[0]
    residual = np.asarray(targets, np.float64) - np.asarray(outputs, np.float64)
    w = np.asarray(weights, np.float64)[:, :, None]
    mse = np.sum(w * residual**2, axis=1) / np.maximum(np.sum(w, axis=1), 1.0)
    return np.log(mse + _LOG_EPS)


def model_errors(
    model: Any,
    spec: ModelSpec,
    scaled: np.ndarray,
    batch_size: int = 1024,
    lengths: np.ndarray | None = None,
) -> np.ndarray:
    """Per-window, per-feature log-MSE of the model on scaled windows (N, F); ``lengths``
    (of padded windows) restrict it to the real steps."""
    targets, outputs = predict(model, spec, scaled, batch_size)
    weights = None
    if lengths is not None and np.any(np.asarray(lengths) < spec.window):
        dummy = Windows(scaled, np.zeros((len(scaled), 1)), np.zeros((len(scaled), 1)))
        dummy.lengths = np.asarray(lengths, dtype=np.int64)
        per_output = target_weights(spec, dummy)
        weights = np.concatenate(per_output, axis=1) if per_output else None
    return masked_window_errors(targets, outputs, weights)


@dataclass(frozen=True)
class ModelView:
    """What a model makes of a set of windows: scaled inputs, targets and outputs (outputs
    concatenated along time), per-step weights (None when nothing is padded) and the
    per-window, per-feature log-MSE over real steps."""

    scaled: np.ndarray  # (N, W, F)
    targets: np.ndarray  # (N, T, F)
    outputs: np.ndarray  # (N, T, F)
    weights: np.ndarray | None  # (N, T)
    errors: np.ndarray  # (N, F)


def run_model(
    model: Any, spec: ModelSpec, scaling: Scaling, windows: Windows, batch_size: int = 1024
) -> ModelView:
    """Scale raw windows as the model was trained, run it, and compute the errors."""
    scaled = scale_windows(scaling, windows, pad_side(spec))
    targets, outputs = predict(model, spec, scaled, batch_size)
    per_output = target_weights(spec, windows)
    weights = np.concatenate(per_output, axis=1) if per_output else None
    return ModelView(
        scaled, targets, outputs, weights, masked_window_errors(targets, outputs, weights)
    )


def devices() -> list[str]:
    """The devices Keras computes on (a GPU is used automatically when one is present)."""
    import keras

    try:
        return [str(d) for d in keras.distribution.list_devices()]
    except Exception:  # backends without the distribution API
        return ["unknown"]
