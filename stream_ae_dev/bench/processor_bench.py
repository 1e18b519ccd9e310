"""The poll-batch core alone: events/s of :meth:`StreamProcessor.process`, no Kafka, no Redis.

The worker's steady state: every stream's state is cached (no store round trip), batches of
``batch`` events spread over ``streams`` streams, in offset order per partition. Two modes:

- ``state``: a stride so long that no window completes, so the model is never called: what is
  timed is grouping the batch by stream and appending each stream's run (the per-event Python
  work of issue 13);
- ``scored``: stride 1 with a cheap model (H=4), so every event completes a window: adds
  gathering the windows, one model call, the post-processing and the alert policy;
- ``decode``: decoding the messages (per message against per batch, side by side);
- ``buckets``: one model call per padded batch size (what choosing ``batch_buckets`` trades).

Run as a script so that the same file can time another tree (``PYTHONPATH=<tree> python
stream_ae_dev/bench/processor_bench.py``): that is how before/after ratios are measured
interleaved (A B A B A B) on this noisy machine. It prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from stream_ae.core.alerting import AlertPolicy
from stream_ae.core.records import Event
from stream_ae.io.window_store import InMemoryWindowStore
from stream_ae.model.inference import Scorer
from stream_ae.worker.processor import StreamProcessor
from stream_ae_dev.bench.store_bench import state_only_scorer
from stream_ae_dev.bench.workload import bench_artifact, bench_spec, full_state, sine_at

WINDOW, FEATURES = 64, 1
TOPIC = "bench.processor"
NO_WINDOWS_STRIDE = 1 << 40
START_TS_MS = 1_700_000_000_000


def make_batches(streams: int, batch: int, batches: int, seed: int = 0) -> list[list[Event]]:
    """``batches`` poll batches of ``batch`` events, streams drawn uniformly, on 4 partitions
    (stream i on partition i % 4), offsets increasing per partition."""
    rng = np.random.default_rng(seed)
    stream_of = rng.integers(0, streams, size=(batches, batch))
    values = sine_at(stream_of.reshape(-1), np.arange(stream_of.size), FEATURES, rng)
    next_offset = [0, 0, 0, 0]
    out: list[list[Event]] = []
    row = 0
    for b in range(batches):
        events = []
        for i in stream_of[b].tolist():
            partition = i % 4
            events.append(
                Event(
                    f"s{i}",
                    START_TS_MS + 1000 * row,
                    values[row],
                    TOPIC,
                    partition,
                    next_offset[partition],
                )
            )
            next_offset[partition] += 1
            row += 1
        out.append(events)
    return out


def run(mode: str, streams: int, batch: int, batches: int) -> dict[str, Any]:
    """Time ``batches`` calls of ``process`` after one warm-up batch; events/s and µs."""
    if mode == "scored":
        artifact = bench_artifact(bench_spec(WINDOW, FEATURES, hidden=4), calibration_windows=64)
        scorer = Scorer(artifact, buckets=(32, 128, 512, 2048))
        scorer.warm_up()
    else:
        # No Keras model at all: its runtime's idle threads would blur the CPU time.
        scorer = state_only_scorer(WINDOW, FEATURES)
    stride = 1 if mode == "scored" else NO_WINDOWS_STRIDE
    processor = StreamProcessor(
        InMemoryWindowStore(WINDOW, FEATURES),
        lambda: scorer,
        stride=stride,
        policy=AlertPolicy(),
        clock_ms=lambda: START_TS_MS,
    )
    # A warm cache: every stream has seen a full window (shared templates: append never
    # modifies its input state).
    templates = [full_state(i, WINDOW, FEATURES) for i in range(min(streams, 256))]
    processor.cache = {f"s{i}": templates[i % len(templates)] for i in range(streams)}
    all_batches = make_batches(streams, batch, batches + 1)
    processor.process(all_batches[0])
    timings, cpu = [], 0.0
    for events in all_batches[1:]:
        started, cpu_started = time.perf_counter(), time.process_time()
        processor.process(events)
        timings.append(time.perf_counter() - started)
        cpu += time.process_time() - cpu_started
    total = sum(timings)
    distinct = np.mean([len({e.stream for e in events}) for events in all_batches[1:]])
    return {
        "mode": mode,
        "streams": streams,
        "batch": batch,
        "events_per_s": batch * batches / total,
        "us_per_event": 1e6 * total / (batch * batches),
        "us_per_stream_batch": float(1e6 * total / (distinct * batches)),
        "median_batch_ms": 1e3 * float(np.median(timings)),
        # CPU time of this process: on a shared machine, less disturbed than wall time.
        "cpu_us_per_event": 1e6 * cpu / (batch * batches),
    }


def run_decode(batch: int, batches: int) -> dict[str, Any]:
    """Messages/s of decoding poll batches of ``batch`` keyed messages: one
    :func:`decode_event` call per message against one :func:`decode_batch` call, interleaved
    batch by batch in this process (CPU time)."""
    from collections import namedtuple

    from stream_ae.core import records

    record = namedtuple("record", "key value topic partition offset")
    rng = np.random.default_rng(0)
    messages = [
        [
            record(
                f"s{i % 1000}".encode(),
                records.encode_event(f"s{i % 1000}", START_TS_MS + i, float(rng.normal())),
                TOPIC,
                0,
                b * batch + i,
            )
            for i in range(batch)
        ]
        for b in range(batches)
    ]
    names, limit = ("value",), 65_536
    per_message = whole = 0.0
    for batch_messages in messages:
        started = time.process_time()
        for m in batch_messages:
            records.decode_event(
                m.key,
                m.value,
                topic=m.topic,
                partition=m.partition,
                offset=m.offset,
                feature_names=names,
                max_bytes=limit,
            )
        per_message += time.process_time() - started
        if hasattr(records, "decode_batch"):
            started = time.process_time()
            records.decode_batch(batch_messages, feature_names=names, max_bytes=limit)
            whole += time.process_time() - started
    total = batch * batches
    return {
        "mode": "decode",
        "batch": batch,
        "decode_event_cpu_us_per_message": 1e6 * per_message / total,
        "decode_batch_cpu_us_per_message": 1e6 * whole / total if whole else None,
    }


def run_buckets(hidden: int, repeats: int = 5) -> dict[str, Any]:
    """Milliseconds of one model call (W=64, F=1) per padded batch size, median of
    ``repeats`` calls after a warm-up call each: what a bucket costs whatever it holds."""
    artifact = bench_artifact(bench_spec(WINDOW, FEATURES, hidden), calibration_windows=64)
    spec, model = artifact.spec, artifact.model
    assert model is not None
    ms: dict[str, float] = {}
    for size in (8, 16, 32, 64, 128, 256, 512, 1024, 2048):
        inputs = np.zeros((size, spec.input_steps, spec.features), dtype=np.float32)
        model.predict_on_batch(inputs)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.predict_on_batch(inputs)
            times.append(time.perf_counter() - started)
        ms[str(size)] = round(1e3 * float(np.median(times)), 2)
    return {"mode": "buckets", "hidden": hidden, "ms_per_call": ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("state", "scored", "decode", "buckets"), default="state")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64, help="LSTM size (buckets mode)")
    args = parser.parse_args()
    if args.mode == "buckets":
        print(json.dumps(run_buckets(args.hidden)))
    elif args.mode == "decode":
        print(json.dumps(run_decode(args.batch, args.batches)))
    else:
        print(json.dumps(run(args.mode, args.streams, args.batch, args.batches)))


if __name__ == "__main__":
    main()
