"""The state of one stream between poll batches. Pure.

A :class:`StreamState` holds the last ``W`` values of one stream (a float32 ring of ``W x F``),
their timestamps, the last applied Kafka position (the fencing token), running normalisation
statistics (Welford), the alert policy's state and the post-processing state.
:mod:`stream_ae.core.windowing` advances it, :mod:`stream_ae.core.state_codec` is its stored
binary form.

>>> state = new_state(window=4, features=2)
>>> state.values.shape, state.count, state.offset == NO_OFFSET
((4, 2), 0, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stream_ae.core.alerting import NO_OFFSET, AlertState


@dataclass
class StreamState:
    """The window state of one stream. ``values``/``ts_ms`` are in time order (oldest first);
    only the last ``min(count, window)`` rows are real."""

    window: int
    features: int
    values: np.ndarray  # (W, F) float32
    ts_ms: np.ndarray  # (W,) int64
    count: int = 0
    topic: str = ""
    partition: int = -1
    offset: int = NO_OFFSET
    stat_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (F,) float64
    stat_m2: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (F,) float64
    alert: AlertState = field(default_factory=AlertState)
    # The post-processing state (stream_ae.core.postprocess), float64; empty until the stream's
    # first window is post-processed, or when the detector has no post-processing.
    post: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def last_ts_ms(self) -> int:
        return int(self.ts_ms[-1]) if self.count else 0

    def position(self) -> tuple[str, int, int]:
        """The last applied (topic, partition, offset): the fencing token."""
        return self.topic, self.partition, self.offset

    def stat_std(self, floor: float = 1e-6) -> np.ndarray:
        """Standard deviation of every value applied so far (running, per feature)."""
        if self.count < 2:
            return np.ones(self.features)
        return np.maximum(np.sqrt(self.stat_m2 / (self.count - 1)), floor)

    def same_as(self, other: StreamState) -> bool:
        """Field-by-field equality (arrays compared exactly)."""
        return (
            self.window == other.window
            and self.features == other.features
            and self.count == other.count
            and self.position() == other.position()
            and self.alert == other.alert
            and np.array_equal(self.values, other.values)
            and np.array_equal(self.ts_ms, other.ts_ms)
            and np.array_equal(self.stat_mean, other.stat_mean)
            and np.array_equal(self.stat_m2, other.stat_m2)
            and np.array_equal(self.post, other.post)
        )


def new_state(window: int, features: int) -> StreamState:
    """An empty state for a stream never seen before."""
    return StreamState(
        window=window,
        features=features,
        values=np.zeros((window, features), dtype=np.float32),
        ts_ms=np.zeros(window, dtype=np.int64),
        stat_mean=np.zeros(features),
        stat_m2=np.zeros(features),
    )
