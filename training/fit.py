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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stream_ae.core.scoring import ThresholdMethod, window_errors
from stream_ae.core.windowing import series_windows
from stream_ae.model.artifacts import CalibrationSet, Scaling, save_artifact
from stream_ae.model.network import PAD_VALUE, ModelSpec, as_output_list, build_model, split_window
from training.data import Series, as_series

log = logging.getLogger(__name__)

# The same floor as stream_ae.core.scoring.window_errors, so unpadded windows get identical errors.
_LOG_EPS = 1e-10
PadSide = Literal["pre", "post"]


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
    # With spec.masking: the shortest series still used (as one padded window).
    min_length: int = 8
    # Per-stream calibrations need this many validation windows of the stream.
    min_stream_windows: int = 50
    # Leave out windows overlapping a labelled anomaly range of their series (known anomalies
    # are neither training nor calibration data).
    exclude_labelled: bool = True


@dataclass
class Windows:
    """Windows of several series with what is known about each (arrays of length N).

    ``raw`` holds the raw values, padded steps set to ``PAD_VALUE``; ``lengths`` the real steps
    of each window (the window length unless padded); ``stat_*`` the running statistics at the
    window's last event (what per-stream scaling uses); ``start_ts_ms``/``end_ts_ms`` the times
    of its first and last real events and ``end_offsets`` the Kafka offset of its last event
    (-1 when the series did not come from Kafka).
    """

    raw: np.ndarray  # (N, W, F)
    stat_mean: np.ndarray  # (N, F)
    stat_std: np.ndarray  # (N, F)
    streams: list[str] = field(default_factory=list)
    start_ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    end_ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    end_offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        n = len(self.raw)
        # Windows built by hand (tests, older callers) get full lengths and unknown times.
        if len(self.lengths) != n:
            self.lengths = np.full(n, self.raw.shape[1], dtype=np.int64)
        for name in ("start_ts_ms", "end_ts_ms", "end_offsets"):
            if len(getattr(self, name)) != n:
                setattr(self, name, np.full(n, -1, dtype=np.int64))
        if len(self.streams) != n:
            self.streams = [""] * n

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def padded(self) -> bool:
        return bool(np.any(self.lengths < self.raw.shape[1]))

    def select(self, rows: np.ndarray) -> Windows:
        """The windows at ``rows`` (indices or a boolean mask), in their order."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        return Windows(
            raw=self.raw[rows],
            stat_mean=self.stat_mean[rows],
            stat_std=self.stat_std[rows],
            streams=[self.streams[i] for i in rows],
            start_ts_ms=self.start_ts_ms[rows],
            end_ts_ms=self.end_ts_ms[rows],
            end_offsets=self.end_offsets[rows],
            lengths=self.lengths[rows],
        )

    def overlapping(self, spans: Mapping[str, Sequence[tuple[int, int]]]) -> np.ndarray:
        """True for each window overlapping one of its stream's time ``spans`` (N,); spans
        include both ends."""
        out = np.zeros(len(self), dtype=bool)
        names = np.asarray(self.streams, dtype=object)
        for name, stream_spans in spans.items():
            rows = names == name
            for start, end in stream_spans:
                out |= rows & (self.start_ts_ms <= end) & (self.end_ts_ms >= start)
        return out

    def labels(self, series: Sequence[Series]) -> np.ndarray:
        """True for each window overlapping a labelled anomaly range of its series (N,)."""
        return self.overlapping({s.name: s.labels for s in series})


def pad_side(spec: ModelSpec) -> PadSide:
    """Where padding goes for ``spec`` (see the module docstring): wherever it keeps the real
    target steps at the decoder's first positions and the predicted horizon real."""
    return "post" if spec.kind == "reconstruct" and not spec.reverse else "pre"


def step_mask(lengths: np.ndarray, window: int, side: PadSide) -> np.ndarray:
    """(N, W) float32: 1 for real steps, 0 for padded ones."""
    steps = np.arange(window)[None, :]
    lengths = np.asarray(lengths)[:, None]
    real = steps < lengths if side == "post" else steps >= window - lengths
    return real.astype(np.float32)


def pad_sequences(
    sequences: Sequence[np.ndarray], window: int, side: PadSide = "post"
) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of up to ``window`` steps, each (L, F), as one (N, W, F) array padded with
    ``PAD_VALUE``, and their lengths (N,)."""
    features = np.asarray(sequences[0]).reshape(len(sequences[0]), -1).shape[1]
    out = np.full((len(sequences), window, features), PAD_VALUE, dtype=np.float32)
    lengths = np.zeros(len(sequences), dtype=np.int64)
    for i, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.float32).reshape(len(seq), features)
        if len(seq) > window:
            raise ValueError(f"sequence {i} has {len(seq)} steps, more than the window {window}")
        lengths[i] = len(seq)
        if side == "post":
            out[i, : len(seq)] = seq
        else:
            out[i, window - len(seq) :] = seq
    return out, lengths


def series_to_windows(
    series: Series,
    window: int,
    stride: int,
    *,
    pad: PadSide | None = None,
    min_length: int = 8,
) -> Windows:
    """The windows of one series, through the worker's windowing.

    With ``pad`` set, a series shorter than ``window`` (but at least ``min_length`` events) is
    one padded window whose statistics are those the worker would have at its last event.
    """
    n = len(series)
    if n >= window or pad is None or n < max(min_length, 2):
        result = series_windows(series.values, window, stride, ts_ms=series.ts_ms)
        ends = np.asarray(result.end_offsets, dtype=np.int64)  # positions in the series
        starts = ends - (window - 1)
        lengths = np.full(len(ends), window, dtype=np.int64)
        raw = result.windows
    else:
        result = series_windows(series.values, n, 1, ts_ms=series.ts_ms)
        ends, starts = np.array([n - 1]), np.array([0])
        lengths = np.array([n], dtype=np.int64)
        raw, _ = pad_sequences([result.windows[0]], window, pad)
    offsets = series.offsets[ends] if len(series.offsets) else np.full(len(ends), -1)
    return Windows(
        raw=raw,
        stat_mean=result.stat_mean,
        stat_std=result.stat_std,
        streams=[series.name] * len(ends),
        start_ts_ms=series.ts_ms[starts] if len(ends) else np.zeros(0, dtype=np.int64),
        end_ts_ms=series.ts_ms[ends] if len(ends) else np.zeros(0, dtype=np.int64),
        end_offsets=np.asarray(offsets, dtype=np.int64),
        lengths=lengths,
    )


def split_series_windows(
    series: Sequence[Series | tuple[str, np.ndarray]],
    window: int,
    stride: int,
    val_fraction: float,
    *,
    pad: PadSide | None = None,
    min_length: int = 8,
) -> tuple[Windows, Windows]:
    """Per series: windows in time order, the first part for training, the rest validating."""
    train: list[Windows] = []
    val: list[Windows] = []
    for item in series:
        windows = series_to_windows(as_series(item), window, stride, pad=pad, min_length=min_length)
        n = len(windows)
        if n == 0:
            continue
        cut = max(1, round(n * (1 - val_fraction))) if n > 1 else n
        train.append(windows.select(np.arange(0, cut)))
        val.append(windows.select(np.arange(cut, n)))
    return concat_windows(train, window), concat_windows(val, window)


def all_windows(
    series: Sequence[Series],
    window: int,
    stride: int = 1,
    *,
    pad: PadSide | None = None,
    min_length: int = 8,
) -> Windows:
    """Every window of every series (no split): for scoring, reports and embeddings."""
    return concat_windows(
        [series_to_windows(s, window, stride, pad=pad, min_length=min_length) for s in series],
        window,
    )


def concat_windows(parts: Sequence[Windows], window: int = 1, features: int = 1) -> Windows:
    """Windows of several parts, in order."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return Windows(
            np.zeros((0, window, features), np.float32),
            np.zeros((0, features)),
            np.zeros((0, features)),
        )
    return Windows(
        raw=np.concatenate([p.raw for p in parts]),
        stat_mean=np.concatenate([p.stat_mean for p in parts]),
        stat_std=np.concatenate([p.stat_std for p in parts]),
        streams=[name for p in parts for name in p.streams],
        start_ts_ms=np.concatenate([p.start_ts_ms for p in parts]),
        end_ts_ms=np.concatenate([p.end_ts_ms for p in parts]),
        end_offsets=np.concatenate([p.end_offsets for p in parts]),
        lengths=np.concatenate([p.lengths for p in parts]),
    )


def scale_windows(scaling: Scaling, windows: Windows, side: PadSide = "post") -> np.ndarray:
    """Scaled windows (N, W, F) with padded steps put back to ``PAD_VALUE`` (the Masking
    layer's marker must survive the scaling)."""
    scaled = scaling.apply(windows.raw, windows.stat_mean, windows.stat_std)
    if windows.padded:
        mask = step_mask(windows.lengths, windows.raw.shape[1], side)
        scaled[mask == 0] = PAD_VALUE
    return scaled


def real_values(windows: Windows, side: PadSide = "post") -> np.ndarray:
    """The values of every real (unpadded) step, (M, F): what scaling is fitted on."""
    if not windows.padded:
        return windows.raw.reshape(-1, windows.raw.shape[2])
    mask = step_mask(windows.lengths, windows.raw.shape[1], side)
    return windows.raw[mask == 1]


def target_weights(spec: ModelSpec, windows: Windows) -> list[np.ndarray] | None:
    """Per-timestep loss weights of each model output, (N, T) each, or None when no window is
    padded. The mask goes through :func:`split_window` like the windows do, so every target
    step (reversed or not, reconstruction or horizon) gets the weight of its own step."""
    if not windows.padded:
        return None
    mask = step_mask(windows.lengths, spec.window, pad_side(spec))[:, :, None]
    _, weights = split_window(spec, mask)
    return [np.ascontiguousarray(w[:, :, 0]) for w in weights]


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
    from training.calibrate import fit_calibration_set

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
        raise ValueError(
            f"too little data: {len(train)} training and {len(val)} validation windows "
            f"(need >= 2 and >= 20); give longer series or a smaller window"
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
    calibration = fit_calibration_set(
        errors,
        val.streams,
        method=config.threshold_method,
        level=config.threshold_level,
        per_stream=config.per_stream_calibration,
        min_windows=config.min_stream_windows,
    )
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
) -> Path:
    """Write a fit as an artifact directory (see :mod:`stream_ae.model.artifacts`)."""
    return save_artifact(
        out_dir,
        model=result.model,
        spec=result.spec,
        scaling=result.scaling,
        calibration=result.calibration,
        name=name,
        version=version,
        metrics={**result.metrics, **(extra_metrics or {})},
    )


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
