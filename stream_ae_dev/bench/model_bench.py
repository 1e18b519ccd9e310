"""Model throughput: the naive per-window ``model.predict`` loop against the batched Scorer.

The naive way is how most tutorials score a stream: one ``model.predict(window[None])`` call
per window, then the window's error. Ours is :meth:`Scorer.score`: scaling, one model call per
bucket-sized batch and vectorised scoring. Both run on the same windows, in the same process,
one after the other, so the ratio holds however loaded the machine is.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

import numpy as np

from stream_ae.model.inference import Scorer
from stream_ae_dev.bench.report import BenchResult, Figure
from stream_ae_dev.bench.workload import bench_artifact, bench_spec, sine_values

SECTION = "model"
TARGET_SPEEDUP = 500.0
WORKER_BATCH = 2000  # Settings.max_poll_records: a full poll batch of a stride-1 stream


def windows_per_s(
    call: Callable[[], object], n_windows: int, min_seconds: float, min_calls: int = 2
) -> float:
    """Windows/s of ``call()`` (which scores ``n_windows``), repeated for ``min_seconds``."""
    calls = 0
    started = time.perf_counter()
    while calls < min_calls or time.perf_counter() - started < min_seconds:
        call()
        calls += 1
    return calls * n_windows / (time.perf_counter() - started)


def naive_windows_per_s(model: object, windows: np.ndarray) -> float:
    """The tutorial loop: ``model.predict`` on one window at a time, then its error."""
    predict = model.predict  # type: ignore[attr-defined]
    predict(windows[:1], verbose=0)  # the first call traces the graph: not part of the loop
    started = time.perf_counter()
    for window in windows:
        output = predict(window[None], verbose=0)
        float(np.mean((np.asarray(output)[0] - window) ** 2))
    return len(windows) / (time.perf_counter() - started)


def run_model_bench(
    *,
    window: int = 64,
    features: Sequence[int] = (1, 8),
    hidden: int = 64,
    buckets: Sequence[int] = (16, 128, 1024, 8192),
    worker_batch: int = WORKER_BATCH,
    naive_windows: int = 20,
    min_seconds: float = 1.0,
) -> BenchResult:
    """Windows/s of the naive loop and of the Scorer at every bucket size, per feature count.

    The headline ratio is at the best bucket; the ratio at ``worker_batch`` windows (a full
    poll batch, padded up to its bucket) is what the worker gets from a full batch.
    """
    result = BenchResult(SECTION)
    started = time.perf_counter()
    for f in features:
        spec = bench_spec(window, f, hidden)
        artifact = bench_artifact(spec, calibration_windows=64)
        scorer = Scorer(artifact, buckets)
        largest = max(max(buckets), worker_batch)
        windows = np.stack([sine_values(i, i % 32, window, f) for i in range(min(largest, 1024))])
        windows = np.resize(windows, (largest, window, f))  # repeats: the model's cost is the same
        streams = [f"s{i}" for i in range(largest)]

        naive = naive_windows_per_s(artifact.model, artifact.scaling.apply(windows[:naive_windows]))
        per_bucket: dict[int, float] = {}
        for size in scorer.buckets:
            batch, names = windows[:size], streams[:size]
            scorer.score(batch, names)  # first call at this size: graph tracing, not timed
            per_bucket[size] = windows_per_s(
                functools.partial(scorer.score, batch, names), size, min_seconds, min_calls=1
            )
        # A full poll batch costs one call at its padded bucket size (the padding is all that
        # differs), so its rate follows from that bucket's without another long measurement.
        padded = scorer.bucket_for(worker_batch)
        full_batch = per_bucket[padded] * min(worker_batch, padded) / padded
        best_size = max(scorer.buckets, key=lambda s: per_bucket[s])
        best = per_bucket[best_size]
        label = f"W={window} F={f} H={hidden}"
        result.figures += [
            Figure.info(SECTION, f"naive predict loop, {label}", naive, "windows/s"),
            Figure.info(
                SECTION, f"Scorer at best bucket ({best_size}), {label}", best, "windows/s"
            ),
            Figure.check(
                SECTION,
                f"Scorer / naive, best bucket, {label}",
                best / naive,
                "x",
                ">=",
                TARGET_SPEEDUP,
            ),
            Figure.info(
                SECTION,
                f"Scorer / naive, full poll batch ({worker_batch} padded to {padded}), {label}",
                full_batch / naive,
                "x",
                note="derived from the padded bucket's rate",
            ),
        ]
        result.details[f"F={f}"] = {
            "spec": spec.to_dict(),
            "naive_windows": naive_windows,
            "naive_windows_per_s": naive,
            "scorer_windows_per_s": {str(k): v for k, v in per_bucket.items()},
            "full_poll_batch": {
                "windows": worker_batch,
                "padded_to": padded,
                "windows_per_s": full_batch,
            },
            "speedup": {str(k): v / naive for k, v in per_bucket.items()},
        }
    result.seconds = time.perf_counter() - started
    return result
