"""The window store in Redis: events/s, round trips per poll batch, memory per stream.

Runs the state path of the worker's poll batch (:class:`StreamProcessor` load -> append ->
fenced save, on a real :class:`RedisWindowStore`) over many full windows held in Redis, with a
stride so long that no window completes: the model is out of the picture. Round trips are
counted three ways, which must agree:

- ``RedisWindowStore.round_trips`` (pipelines executed, counted by the store itself);
- request writes on the socket (a connection class that counts ``send_packed_command``);
- commands the server executed (``INFO commandstats`` deltas): one GET per loaded stream and
  one EVALSHA per batch (the fenced write of all its states), all inside those round trips.
  Commands a Lua script runs count in ``commandstats`` too, so the fenced write's own GET (one
  per state written) and SET are subtracted out.

Memory: ``MEMORY USAGE`` of stored states (key, value and Redis's per-key overhead) against
the raw window bytes ``W x F x 4`` (issue 13's budget: 1.5 x that + 250 B); and ``used_memory``
growth over all streams, which adds the keyspace's hash table. The states carry the
post-processing state of the shipped detector (``PostParams()``), as a worker's do.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from stream_ae.core.alerting import AlertPolicy
from stream_ae.core.postprocess import PostParams
from stream_ae.core.records import Event
from stream_ae.core.scoring import fit_calibration
from stream_ae.io.window_store import RedisWindowStore
from stream_ae.model.artifacts import Artifact, CalibrationSet, Scaling
from stream_ae.model.inference import Scorer
from stream_ae.worker.processor import StreamProcessor
from stream_ae_dev.bench.report import BenchResult, Figure
from stream_ae_dev.bench.workload import bench_spec, delete_prefix, load_states, sine_values

SECTION = "store"
MAX_ROUND_TRIPS = 2.0
MEMORY_FACTOR, MEMORY_EXTRA_BYTES = 1.5, 250
TARGET_STREAMS = 100_000
TOPIC = "bench.store"
NO_WINDOWS_STRIDE = 1 << 40  # with states already past W events, no window ever completes
SHIPPED_POST = PostParams()  # the post-processing whose state every stored state carries


class CountingConnection(redis.Connection):
    """A Redis connection that counts request writes: one per command or per pipeline."""

    writes = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.writes += 1
        super().send_packed_command(command, check_health)


def state_only_scorer(window: int, features: int) -> Scorer:
    """A Scorer whose model is never called (no window completes): the processor reads only
    its spec and version."""
    spec = bench_spec(window, features)
    calibration = fit_calibration(np.random.default_rng(0).normal(size=(64, features)))
    artifact = Artifact(
        name="bench",
        version="state-only",
        path=Path("<memory>"),
        spec=spec,
        scaling=Scaling("global", (0.0,) * features, (1.0,) * features),
        calibration=CalibrationSet(calibration),
        metrics={},
        model=None,
        manifest={},
    )
    return Scorer(artifact)


def _constant(scorer: Scorer) -> Callable[[], Scorer]:
    return lambda: scorer


def _command_calls(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _batches(
    streams: int, batch_events: int, batches: int, features: int, rng: random.Random
) -> list[list[Event]]:
    """Poll batches of one event each for ``batch_events`` random streams, offsets rising."""
    out: list[list[Event]] = []
    offset = 1
    for _ in range(batches):
        chosen = rng.sample(range(streams), min(batch_events, streams))
        values = sine_values(len(out), 0, len(chosen), features)
        events = []
        for k, s in enumerate(chosen):
            events.append(Event(f"s{s}", 1_700_000_000_000 + offset, values[k], TOPIC, 0, offset))
            offset += 1
        out.append(events)
    return out


def measure_batches(
    processor: StreamProcessor,
    store: RedisWindowStore,
    client: Any,
    batches: Sequence[Sequence[Event]],
) -> dict[str, float]:
    """Run poll batches through the processor and the store; events/s and per-batch counts."""
    calls_before = _command_calls(client)
    trips_before, writes_before = store.round_trips, CountingConnection.writes
    events = written = 0
    started = time.perf_counter()
    for batch in batches:
        outcome = processor.process(batch)
        refused = processor.save(outcome.touched)
        if refused:
            raise RuntimeError(f"{len(refused)} fenced writes refused in the store benchmark")
        events += len(batch)
        written += len(outcome.touched)
    seconds = time.perf_counter() - started
    writes = CountingConnection.writes - writes_before
    calls_after = _command_calls(client)
    delta = {
        name: calls_after.get(name, 0) - calls_before.get(name, 0)
        for name in calls_after
        if name != "info"
    }
    # The read script runs one GET per state loaded; the fencing script one GET and, where the
    # fence lets it, one SET per state written. Both are EVALSHA calls, one per batch each.
    sent = {
        "get": delta.get("get", 0) - written,
        "evalsha": delta.get("evalsha", 0),
        "other": sum(v for k, v in delta.items() if k not in ("get", "set", "evalsha")),
    }
    n = len(batches)
    return {
        "events_per_s": events / seconds,
        "round_trips_per_batch": (store.round_trips - trips_before) / n,
        "socket_writes_per_batch": writes / n,
        "commands_per_batch": sum(sent.values()) / n,
        "get_per_batch": sent["get"] / n,
        "evalsha_per_batch": sent["evalsha"] / n,
        "other_commands": sent["other"],
        "scripted_set_per_batch": delta.get("set", 0) / n,
        "states_written_per_batch": written / n,
        "events_per_batch": events / n,
    }


def run_store_bench(
    redis_url: str,
    *,
    window: int = 64,
    features: Sequence[int] = (1, 8),
    streams: int = TARGET_STREAMS,
    batch_events: int = 2_000,
    batches: int = 10,
    memory_sample: int = 200,
    prefix: str = "bench-store",
    seed: int = 0,
) -> BenchResult:
    """Hold ``streams`` full windows in the Redis at ``redis_url`` and measure the store.

    Only keys under ``prefix`` are written, and they are removed at the end.
    """
    result = BenchResult(SECTION)
    started = time.perf_counter()
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    rng = random.Random(seed)
    try:
        for f in features:
            key_prefix = f"{prefix}-f{f}"
            delete_prefix(client, key_prefix)
            used_before = int(client.info("memory")["used_memory"])
            load_s = load_states(
                client,
                key_prefix,
                streams,
                window,
                f,
                topic=TOPIC,
                partition=0,
                offset=0,
                post=SHIPPED_POST,
            )
            used_after = int(client.info("memory")["used_memory"])
            held = sum(1 for _ in client.scan_iter(match=f"{key_prefix}:*", count=10_000))
            sample = rng.sample(range(streams), min(memory_sample, streams))
            usage = [
                int(client.memory_usage(f"{key_prefix}:w:{{s{i}}}", samples=0) or 0) for i in sample
            ]
            value_bytes = int(client.strlen(f"{key_prefix}:w:{{s{sample[0]}}}"))
            raw = window * f * 4
            per_stream = float(np.mean(usage))
            budget = MEMORY_FACTOR * raw + MEMORY_EXTRA_BYTES
            post_bytes = 4 + 8 * SHIPPED_POST.state_size_of(f)  # count, then float64 values

            store = RedisWindowStore(client, window, f, prefix=key_prefix)
            scorer = state_only_scorer(window, f)
            policy = AlertPolicy()
            cold = StreamProcessor(
                store,
                _constant(scorer),
                stride=NO_WINDOWS_STRIDE,
                policy=policy,
                clock_ms=lambda: 0,
                max_cached_streams=0,  # cleared after every save: every batch loads
            )
            warm = StreamProcessor(
                store,
                _constant(scorer),
                stride=NO_WINDOWS_STRIDE,
                policy=policy,
                clock_ms=lambda: 0,
            )
            work = _batches(streams, batch_events, batches, f, rng)
            cold_stats = measure_batches(cold, store, client, work)
            # Warm: a first pass loads and caches the states (its events are replays of the
            # cold pass, skipped); then the same streams again with new offsets, all cached.
            measure_batches(warm, store, client, work)
            warm_work = [
                [
                    Event(e.stream, e.ts_ms, e.values, e.topic, e.partition, e.offset + 10**9)
                    for e in batch
                ]
                for batch in work
            ]
            warm_stats = measure_batches(warm, store, client, warm_work)

            label = f"W={window} F={f}"
            result.figures += [
                Figure.check(
                    SECTION, f"streams held, {label}", held, "streams", ">=", TARGET_STREAMS
                )
                if streams >= TARGET_STREAMS
                else Figure.info(SECTION, f"streams held, {label}", held, "streams", "quick"),
                Figure.check(
                    SECTION,
                    f"Redis memory per stream (MEMORY USAGE), {label}",
                    per_stream,
                    "bytes",
                    "<=",
                    budget,
                    note=f"raw window {raw} B, stored value {value_bytes} B, of which "
                    f"post-processing state {post_bytes} B",
                ),
                Figure.info(
                    SECTION,
                    f"used_memory growth per stream, {label}",
                    (used_after - used_before) / streams,
                    "bytes",
                    note="includes the keyspace hash table",
                ),
                Figure.check(
                    SECTION,
                    f"round trips per poll batch, cold cache, {label}",
                    cold_stats["round_trips_per_batch"],
                    "round trips",
                    "<=",
                    MAX_ROUND_TRIPS,
                    note=f"{cold_stats['socket_writes_per_batch']:.0f} socket writes; "
                    f"{cold_stats['get_per_batch']:.0f} states read + "
                    f"{cold_stats['evalsha_per_batch']:.0f} EVALSHA per batch",
                ),
                Figure.check(
                    SECTION,
                    f"round trips per poll batch, warm cache, {label}",
                    warm_stats["round_trips_per_batch"],
                    "round trips",
                    "<=",
                    MAX_ROUND_TRIPS,
                    note=f"{warm_stats['socket_writes_per_batch']:.0f} socket writes; "
                    f"{warm_stats['get_per_batch']:.0f} states read + "
                    f"{warm_stats['evalsha_per_batch']:.0f} EVALSHA per batch",
                ),
                Figure.info(
                    SECTION,
                    f"events/s through the store, cold cache, {label}",
                    cold_stats["events_per_s"],
                    "events/s",
                    note=f"{batch_events} streams per batch",
                ),
                Figure.info(
                    SECTION,
                    f"events/s through the store, warm cache, {label}",
                    warm_stats["events_per_s"],
                    "events/s",
                ),
            ]
            result.details[f"F={f}"] = {
                "streams": streams,
                "streams_held": held,
                "load_seconds": load_s,
                "load_states_per_s": streams / load_s,
                "raw_window_bytes": raw,
                "stored_value_bytes": value_bytes,
                "memory_usage_bytes_mean": per_stream,
                "memory_usage_bytes_min": min(usage),
                "memory_usage_bytes_max": max(usage),
                "memory_budget_bytes": budget,
                "post_state_bytes": post_bytes,
                "used_memory_growth_bytes": used_after - used_before,
                "cold": cold_stats,
                "warm": warm_stats,
            }
            delete_prefix(client, key_prefix)
    finally:
        client.close()
        pool.disconnect()
    result.seconds = time.perf_counter() - started
    return result
