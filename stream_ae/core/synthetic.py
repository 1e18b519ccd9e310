"""Synthetic metric streams with labelled anomalies, for the demo, the tests and benchmarks.

Each stream is a daily-like sine with its own level, amplitude and phase plus noise. Anomalies
are injected as spikes, level shifts or flat-lines over a few steps, and returned as labels so
tests can check that alerts land on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANOMALY_KINDS = ("spike", "shift", "flatline")


@dataclass(frozen=True)
class SyntheticStream:
    name: str
    values: np.ndarray  # (T, F) float32
    ts_ms: np.ndarray  # (T,) int64
    anomalies: list[tuple[int, int, str]]  # [start, end) step ranges and their kind


def make_stream(
    name: str,
    steps: int,
    *,
    features: int = 1,
    period: int = 48,
    noise: float = 0.05,
    anomalies: int = 0,
    anomaly_len: int = 6,
    start_ts_ms: int = 1_700_000_000_000,
    interval_ms: int = 60_000,
    seed: int = 0,
    min_anomaly_step: int | None = None,
) -> SyntheticStream:
    """One stream of ``steps`` events; ``anomalies`` injected after ``min_anomaly_step``
    (default: the second half), never overlapping."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[:, None]
    level = rng.uniform(-5, 5, size=features)
    amplitude = rng.uniform(0.5, 2.0, size=features)
    phase = rng.uniform(0, 2 * np.pi, size=features)
    values = level + amplitude * np.sin(2 * np.pi * t / period + phase)
    values += noise * amplitude * rng.standard_normal((steps, features))
    labels: list[tuple[int, int, str]] = []
    lowest = steps // 2 if min_anomaly_step is None else min_anomaly_step
    if anomalies:
        slots = np.linspace(lowest, steps - anomaly_len - 1, anomalies + 1).astype(int)[:-1]
        for i, start in enumerate(slots):
            start = int(start + rng.integers(0, max(1, (steps - lowest) // (anomalies * 4))))
            end = min(start + anomaly_len, steps)
            kind = ANOMALY_KINDS[i % len(ANOMALY_KINDS)]
            feature = int(rng.integers(features))
            if kind == "spike":
                values[start:end, feature] += 6 * amplitude[feature]
            elif kind == "shift":
                values[start:end, feature] -= 4 * amplitude[feature]
            else:
                values[start:end, feature] = values[start, feature]
            labels.append((start, end, kind))
    ts = start_ts_ms + interval_ms * np.arange(steps, dtype=np.int64)
    return SyntheticStream(name, values.astype(np.float32), ts, labels)


def make_streams(
    count: int,
    steps: int,
    *,
    anomalous: int = 0,
    features: int = 1,
    seed: int = 0,
    **kwargs: object,
) -> list[SyntheticStream]:
    """``count`` streams named ``stream-000``...; the first ``anomalous`` get 2 anomalies each."""
    return [
        make_stream(
            f"stream-{i:03d}",
            steps,
            features=features,
            anomalies=2 if i < anomalous else 0,
            seed=seed * 10_007 + i,
            **kwargs,  # type: ignore[arg-type]
        )
        for i in range(count)
    ]
