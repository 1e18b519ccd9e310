"""Windows of series for training and offline scoring: the worker's windowing plus padding.

Windows come from :func:`stream_ae.core.windowing.series_windows` (the worker's own windowing),
never built here by hand. Variable-length sequences: with ``spec.masking`` a series shorter than
the window (but at least ``min_length`` events) becomes one window padded with
:data:`stream_ae.model.network.PAD_VALUE`. Padding goes where the real target steps stay at the
decoder's first positions, so a padded sequence has exactly the loss it would have unpadded: at
the end for a plain reconstruction; at the start for a reversed one (reversal brings the real
steps first) and for prediction (the horizon stays real).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from stream_ae.core.windowing import series_windows
from stream_ae.model.artifacts import Scaling
from stream_ae.model.network import PAD_VALUE, ModelSpec, split_window
from training.data import Series, as_series

PadSide = Literal["pre", "post"]


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
