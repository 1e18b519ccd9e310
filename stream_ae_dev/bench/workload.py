"""The benchmarks' workload: untrained but calibrated models, sine streams, full window states.

Speed does not depend on what a model has learned, so the benchmarks use untrained models
(seconds to build instead of minutes to train). Each is calibrated on its own errors over
normal sine windows, so its scores behave like a trained model's: normal windows rarely cross
the threshold and a spike always does, which is what the latency benchmark needs.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from stream_ae.core.postprocess import PostParams, new_post_state
from stream_ae.core.scoring import fit_calibration, window_errors
from stream_ae.core.state import StreamState, new_state
from stream_ae.core.state_codec import encode_state

# write_artifact is imported by the bench commands from here, next to bench_artifact.
from stream_ae.model.artifacts import Artifact, CalibrationSet, Scaling
from stream_ae.model.artifacts import write_artifact as write_artifact
from stream_ae.model.network import ModelSpec, as_output_list, build_model, split_window

PERIOD = 32  # steps per sine period: a 64-step window spans two
SPIKE_SIGMAS = 25.0  # a spike this many standard deviations high always alerts
NOISE = 0.1


def bench_spec(window: int = 64, features: int = 1, hidden: int = 64) -> ModelSpec:
    """The reconstruct autoencoder the benchmarks time (features named f0, f1, ...)."""
    names = ("value",) if features == 1 else tuple(f"f{i}" for i in range(features))
    return ModelSpec(window=window, features=features, feature_names=names, hidden=hidden)


def sine_values(stream: int, start: int, steps: int, features: int) -> np.ndarray:
    """Values (steps, F) of stream number ``stream`` from step ``start``: a sine per feature
    with the stream's own phase, plus noise. Deterministic in (stream, start)."""
    rng = np.random.default_rng((stream, start + (1 << 32)))  # seeds must be >= 0
    return sine_at(np.full(steps, stream), np.arange(start, start + steps), features, rng)


def sine_at(
    streams: np.ndarray, steps: np.ndarray, features: int, rng: np.random.Generator
) -> np.ndarray:
    """Values (N, F) of many (stream number, step) pairs at once: the same sines as
    :func:`sine_values`, with fresh noise from ``rng``."""
    phase = (streams[:, None] * 0.618 + np.arange(features) * 0.37) % 1.0 * 2 * np.pi
    clean = np.sin(2 * np.pi * steps[:, None] / PERIOD + phase)
    return (clean + NOISE * rng.standard_normal((len(steps), features))).astype(np.float32)


def spike(values: np.ndarray) -> np.ndarray:
    """The same values with every feature raised by :data:`SPIKE_SIGMAS` standard deviations."""
    return (values + np.float32(SPIKE_SIGMAS * np.sqrt(0.5 + NOISE**2))).astype(np.float32)


def bench_artifact(spec: ModelSpec, *, seed: int = 0, calibration_windows: int = 512) -> Artifact:
    """An untrained model of ``spec``, calibrated on its own errors over normal windows."""
    model = build_model(spec, seed=seed)
    windows = np.stack(
        [sine_values(i, i % PERIOD, spec.window, spec.features) for i in range(calibration_windows)]
    )
    # Sine plus noise: mean 0, variance 1/2 + noise^2 per feature.
    std = float(np.sqrt(0.5 + NOISE**2))
    scaling = Scaling("global", (0.0,) * spec.features, (std,) * spec.features)
    inputs, targets = split_window(spec, scaling.apply(windows))
    outputs = as_output_list(model.predict_on_batch(inputs))
    errors, _ = window_errors(np.concatenate(targets, axis=1), np.concatenate(outputs, axis=1))
    calibration = fit_calibration(errors, method="quantile", level=0.999)
    return Artifact(
        name="bench",
        version=f"bench-h{spec.hidden}-f{spec.features}",
        path=Path("<memory>"),
        spec=spec,
        scaling=scaling,
        calibration=CalibrationSet(calibration),
        metrics={},
        model=model,
        manifest={},
    )


def full_state(
    stream: int,
    window: int,
    features: int,
    *,
    topic: str = "",
    partition: int = -1,
    offset: int = -1,
    last_ts_ms: int = 1_700_000_000_000,
    post: PostParams | None = None,
) -> StreamState:
    """The state of a stream that has seen one full window (steps -W..-1 of its sine), with
    the fresh post-processing state of ``post`` where given (what a stream of a detector with
    that post-processing keeps: its size, not its values, is what the store bench measures).

    With the default position (no topic, partition -1, offset -1) no event is skipped as a
    replay and every fenced write lands, whatever topic the events come from.
    """
    values = sine_values(stream, -window, window, features)
    x = values.astype(np.float64)
    state = new_state(window, features)
    return replace(
        state,
        values=values,
        ts_ms=last_ts_ms - 1000 * np.arange(window - 1, -1, -1, dtype=np.int64),
        count=window,
        topic=topic,
        partition=partition,
        offset=offset,
        stat_mean=x.mean(axis=0),
        stat_m2=((x - x.mean(axis=0)) ** 2).sum(axis=0),
        post=state.post if post is None else new_post_state(post, features),
    )


def load_states(
    client: Any,
    prefix: str,
    streams: int,
    window: int,
    features: int,
    *,
    topic: str = "",
    partition: int = -1,
    offset: int = -1,
    batch: int = 5_000,
    post: PostParams | None = None,
) -> float:
    """SET ``streams`` full window states under ``<prefix>:w:{s<i>}`` (the keys of
    :class:`RedisWindowStore` for streams ``s0``, ``s1``...) in pipelined batches; returns the
    seconds it took. A few hundred distinct states are reused as values: their bytes differ,
    their sizes do not, and encoding 100k of them would dominate the run."""
    templates = [
        encode_state(
            full_state(
                i, window, features, topic=topic, partition=partition, offset=offset, post=post
            )
        )
        for i in range(min(streams, 256))
    ]
    started = time.perf_counter()
    for start in range(0, streams, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + batch, streams)):
            pipe.set(f"{prefix}:w:{{s{i}}}", templates[i % len(templates)])
        pipe.execute()
    return time.perf_counter() - started


def delete_prefix(client: Any, prefix: str) -> int:
    """Remove every key under ``prefix`` (UNLINK in batches); returns how many."""
    removed = 0
    keys: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
        keys.append(key)
        if len(keys) >= 10_000:
            removed += client.unlink(*keys)
            keys = []
    if keys:
        removed += client.unlink(*keys)
    return removed
