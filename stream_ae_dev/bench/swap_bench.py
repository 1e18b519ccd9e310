"""Hot-swap under load: poll-batch latency while the champion moves, memory after many swaps.

One worker, in this process and wired as ``stream-ae worker`` wires it (a
:class:`~stream_ae.worker.swap.ModelManager` following a registry, Kafka, Redis), works through a
backlog of events sent before it starts, so every poll batch is full (``batch_events``) from
the first to the last: the load is constant and batch latencies compare like with like. After a
warm-up and a baseline phase without swaps, the registry's champion is moved ``rss_swaps`` times
(promote + Redis notification, what ``training promote`` does); each time the bench waits until
the worker runs the new version and a few batches more. Measured:

- **poll-batch latency**: what :meth:`Worker.run_batch` spends after its poll returns
  (``BatchStats.seconds``) plus the batch boundary where a swap takes effect
  (:meth:`ModelManager.between_batches`); median and maximum over the batches during the first
  ``swaps`` swaps. Target: max <= 2 x median. The baseline's own max/median is printed beside
  it: on a shared machine it says how much of the figure is noise.
- **process RSS** after the first swap and after the ``rss_swaps``-th: the old models' memory
  must be released (a ratio close to 1).

Every version is published before the worker starts (weights perturbed per version, so each is
a distinct model), so the bench's own model building does not show up in the RSS figures.

Run it alone with ``python -m stream_ae_dev.bench.swap_bench``; ``stream-ae bench`` calls
:func:`run_swap_bench`.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "swapbench"
MAX_LATENCY_RATIO = 2.0  # the target: slowest batch during swaps <= 2 x the median


def process_rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            resident_pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class BatchRecord:
    """One non-empty poll batch of the run."""

    phase: str  # warmup | baseline | swaps | more_swaps
    swap: int  # the swap under way or last done (0: none yet)
    latency_s: float  # processing after the poll + the batch boundary before it
    boundary_s: float  # between_batches() alone: where a swap takes effect
    events: int
    version: str


def _publish_versions(registry: Any, count: int, window: int, hidden: int, seed: int) -> list[str]:
    """``count`` versions of one architecture, each with its weights perturbed (a retrain)."""
    from stream_ae.model.artifacts import write_artifact
    from stream_ae_dev.bench.workload import bench_artifact, bench_spec

    base = bench_artifact(bench_spec(window, 1, hidden), seed=seed)
    weights = base.model.get_weights()
    rng = np.random.default_rng(seed)
    versions = []
    for k in range(count):
        base.model.set_weights(
            [w + rng.normal(0.0, 0.01, w.shape).astype(w.dtype) for w in weights]
        )

        def write(directory: Path, version: str, k: int = k) -> None:
            write_artifact(
                replace(base, name=MODEL_NAME, metrics={"bench_version": k}),
                directory,
                version=version,
            )

        versions.append(
            registry.publish(MODEL_NAME, write, version=f"v{k:03d}-{uuid.uuid4().hex[:6]}")
        )
    return versions


def _produce_backlog(bootstrap: str, topic: str, streams: int, events: int) -> int:
    """Send ``events`` events of ``streams`` sine streams (one per stream per step) before the
    worker starts: it then polls full batches all along, so every batch has the same size and
    no producer competes with it for this process's GIL. Returns the events sent."""
    from kafka import KafkaProducer

    from stream_ae.core.records import encode_event
    from stream_ae_dev.bench.workload import sine_values

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 18)
    steps = -(-events // streams)
    keys = [f"s{i}" for i in range(streams)]
    chunk = 512  # steps of values drawn at once
    for first in range(0, steps, chunk):
        values = np.stack([sine_values(i, first, chunk, 1)[:, 0] for i in range(streams)])
        for step in range(first, min(first + chunk, steps)):
            ts_ms = 1_700_000_000_000 + step * 1000
            for i, key in enumerate(keys):
                body = encode_event(key, ts_ms, float(values[i, step - first]))
                producer.send(topic, key=key.encode(), value=body)
    producer.flush()
    producer.close()
    return steps * streams


def run_swap_bench(
    *,
    swaps: int = 10,
    rss_swaps: int = 20,
    bootstrap_servers: str | None = None,
    redis_url: str | None = None,
    streams: int = 40,
    backlog_events: int = 500_000,
    batch_events: int = 200,
    window: int = 16,
    hidden: int = 8,
    batch_buckets: Sequence[int] = (16, 128, 1024),
    baseline_s: float = 8.0,
    settle_batches: int = 8,
    reload_jitter_s: float = 0.2,
    recycle_models: bool = True,
    workdir: Path | None = None,
    seed: int = 0,
    out: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Measure poll-batch latency during ``swaps`` hot-swaps under load, and RSS after the
    first and the ``rss_swaps``-th swap. Starts a broker and Redis (dev stack) unless both
    ``bootstrap_servers`` and ``redis_url`` are given. Returns the figures and the raw series;
    ``out`` (None: silent) gets the printed summary lines."""
    from stream_ae.io.kafka import worker_consumer, worker_producer
    from stream_ae.io.window_store import RedisWindowStore
    from stream_ae.settings import Settings
    from stream_ae.worker.bootstrap import load_scorer
    from stream_ae.worker.loop import Worker
    from stream_ae.worker.metrics import WorkerMetrics
    from stream_ae.worker.swap import ModelManager
    from stream_ae_dev.devstack import DevStack, create_topics
    from training.registry import Registry, redis_notifier

    rss_swaps = max(rss_swaps, swaps)
    own_dir = workdir is None
    root = Path(workdir or tempfile.mkdtemp(prefix="stream-ae-swap-bench-"))
    stack = None
    if bootstrap_servers is None or redis_url is None:
        stack = DevStack(run_dir=root / "stack").start()
        bootstrap_servers, redis_url = stack.bootstrap_servers, stack.redis_url
    tag = uuid.uuid4().hex[:8]
    topics = {f"swapbench-in-{tag}": 2, f"swapbench-alerts-{tag}": 1, f"swapbench-dlq-{tag}": 1}
    create_topics(bootstrap_servers, topics)
    in_topic, alerts_topic, dlq_topic = topics
    worker: Any = None
    try:
        registry = Registry(root / "registry", notifier=redis_notifier(redis_url))
        versions = _publish_versions(registry, rss_swaps + 1, window, hidden, seed)
        registry.promote(MODEL_NAME, versions[0])
        sent = _produce_backlog(bootstrap_servers, in_topic, streams, backlog_events)
        gc.collect()
        config: dict[str, Any] = dict(
            bootstrap_servers=bootstrap_servers,
            redis_url=redis_url,
            input_topics=[in_topic],
            alerts_topic=alerts_topic,
            dlq_topic=dlq_topic,
            group_id=f"swapbench-{tag}",
            redis_key_prefix=f"swapbench{tag}",
            model_path=registry.root,
            model_name=MODEL_NAME,
            batch_buckets=list(batch_buckets),
            session_timeout_ms=6000,
            fetch_max_wait_ms=20,
            max_batch_wait_ms=100,
            max_poll_records=batch_events,
            worker_id=f"swap-bench-{tag}",
            metrics_port=0,
        )
        settings = Settings(**config)
        metrics = WorkerMetrics()
        scorer = load_scorer(settings)
        manager = ModelManager(
            settings,
            scorer,
            metrics,
            reload_jitter_s=reload_jitter_s,
            recycle_models=recycle_models,
        )
        worker = Worker(
            settings,
            consumer=worker_consumer(settings),
            producer=worker_producer(settings),
            store=RedisWindowStore.from_settings(settings, window, 1),
            model=manager,
            metrics=metrics,
        )
        worker.subscribe()
        result = _measure(worker, manager, registry, versions, swaps, baseline_s, settle_batches)
    finally:
        if worker is not None:
            worker.close()
        if stack is not None:
            stack.stop()
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)
    result["config"] = {
        "swaps": swaps,
        "rss_swaps": rss_swaps,
        "streams": streams,
        "backlog_events": sent,
        "batch_events": batch_events,
        "window": window,
        "hidden": hidden,
        "batch_buckets": list(batch_buckets),
        "recycle_models": recycle_models,
    }
    if out is not None:
        for line in summary_lines(result):
            out(line)
    return result


def _measure(
    worker: Any,
    manager: Any,
    registry: Any,
    versions: list[str],
    swaps: int,
    baseline_s: float,
    settle_batches: int,
) -> dict[str, Any]:
    """Run the worker on this thread while a conductor thread moves the champion."""
    state: dict[str, Any] = {"phase": "warmup", "batches": 0, "swap": 0}
    rss_after: dict[int, int] = {}
    swap_s: list[float] = []
    failure: list[BaseException] = []

    def wait(predicate: Callable[[], bool], timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if worker.stopping:
                raise RuntimeError("the worker stopped")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    "the swap bench waited too long: worker stuck, or the backlog drained "
                    "(raise backlog_events)"
                )
            time.sleep(0.01)

    def conduct() -> None:
        try:
            wait(lambda: worker.totals.windows > 0)
            # The spare model prepared at start-up would load during the baseline otherwise.
            wait(lambda: manager.spare_ready or not manager.prepare_spare)
            time.sleep(baseline_s)  # warm-up: caches, batch sizes, JIT settle
            state["phase"] = "baseline"
            time.sleep(baseline_s)
            state["phase"] = "swaps"
            for k, version in enumerate(versions[1:], start=1):
                state["swap"] = k
                started = time.monotonic()
                registry.promote(MODEL_NAME, version, reason="swap bench")
                wait(_version_is(manager, version))
                swap_s.append(time.monotonic() - started)
                wait(_batches_reach(state, state["batches"] + settle_batches))
                rss_after[k] = process_rss_bytes()
                if k == swaps:
                    state["phase"] = "more_swaps"
        except BaseException as exc:
            failure.append(exc)
        finally:
            worker.stop()

    conductor = threading.Thread(target=conduct, name="swap-bench-conductor", daemon=True)
    conductor.start()
    records: list[BatchRecord] = []
    while not worker.stopping:
        started = time.perf_counter()
        manager.between_batches()
        boundary_s = time.perf_counter() - started
        stats = worker.run_batch()
        if stats.consumed:
            state["batches"] += 1
            records.append(
                BatchRecord(
                    str(state["phase"]),
                    int(state["swap"]),
                    stats.seconds + boundary_s,
                    boundary_s,
                    stats.consumed,
                    manager.version,
                )
            )
    conductor.join(timeout=30)
    if failure:
        raise failure[0]
    return _figures(
        worker.settings.max_poll_records, records, rss_after, swap_s, swaps, worker.totals
    )


def _version_is(manager: Any, version: str) -> Callable[[], bool]:
    return lambda: bool(manager.version == version)


def _batches_reach(state: dict[str, Any], count: int) -> Callable[[], bool]:
    return lambda: bool(state["batches"] >= count)


def _figures(
    full: int,
    records: list[BatchRecord],
    rss_after: dict[int, int],
    swap_s: list[float],
    swaps: int,
    totals: Any,
) -> dict[str, Any]:
    baseline = [r.latency_s for r in records if r.phase == "baseline"]
    during = [r for r in records if r.phase == "swaps"]
    latencies = [r.latency_s for r in during]
    median = statistics.median(latencies)
    slowest = max(during, key=lambda r: r.latency_s)
    last = max(rss_after)
    mib = 1024 * 1024
    return {
        "batches_during_swaps": len(during),
        "events_during_swaps": sum(r.events for r in during),
        "median_events_per_batch": statistics.median(r.events for r in during),
        "full_batches_fraction": sum(r.events == full for r in during) / len(during),
        "batch_latency_median_s": median,
        "batch_latency_p95_s": float(np.percentile(latencies, 95)),
        "batch_latency_max_s": slowest.latency_s,
        "batch_latency_max_over_median": slowest.latency_s / median,
        "slowest_batch_events": slowest.events,
        "baseline_batches": len(baseline),
        "baseline_latency_median_s": statistics.median(baseline) if baseline else None,
        "baseline_latency_max_s": max(baseline) if baseline else None,
        "baseline_max_over_median": max(baseline) / statistics.median(baseline)
        if baseline
        else None,
        "swap_max_over_baseline_max": slowest.latency_s / max(baseline) if baseline else None,
        "boundary_max_s": max(r.boundary_s for r in during),
        "swap_to_live_median_s": statistics.median(swap_s[:swaps]),
        "swap_to_live_max_s": max(swap_s[:swaps]),
        "rss_after_first_swap_mib": rss_after[1] / mib,
        f"rss_after_{last}_swaps_mib": rss_after[last] / mib,
        "rss_last_swaps": last,
        "rss_ratio": rss_after[last] / rss_after[1],
        "rss_after_each_swap_mib": [round(rss_after[k] / mib, 1) for k in sorted(rss_after)],
        "events_applied": totals.applied,
        "max_latency_per_swap_ms": [
            round(1000 * max((r.latency_s for r in during if r.swap == k), default=0.0), 1)
            for k in range(1, swaps + 1)
        ],
        "batches": [
            (r.phase, r.swap, round(r.latency_s * 1000, 2), r.events, r.version) for r in records
        ],
        "latency_target_met": slowest.latency_s <= MAX_LATENCY_RATIO * median,
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The printed summary of :func:`run_swap_bench`'s result."""
    cfg = result["config"]
    ms = 1000.0
    baseline = result["baseline_latency_median_s"]
    last = result["rss_last_swaps"]
    verdict = "met" if result["latency_target_met"] else "NOT met"
    return [
        f"hot-swap: {cfg['swaps']} swaps under full load (a backlog of {cfg['backlog_events']} "
        f"events of {cfg['streams']} streams, batches of {cfg['batch_events']}; W={cfg['window']}, "
        f"hidden={cfg['hidden']}, recycle={cfg['recycle_models']}): "
        f"{result['batches_during_swaps']} batches, {result['full_batches_fraction']:.0%} full",
        f"  poll-batch latency during swaps: median {result['batch_latency_median_s'] * ms:.1f} "
        f"ms, p95 {result['batch_latency_p95_s'] * ms:.1f} ms, "
        f"max {result['batch_latency_max_s'] * ms:.1f} ms "
        f"({result['slowest_batch_events']} events); "
        f"max/median {result['batch_latency_max_over_median']:.2f} "
        f"(target <= {MAX_LATENCY_RATIO:.0f}: {verdict})",
        f"  baseline without swaps: median {(baseline or 0) * ms:.1f} ms, "
        f"max {(result['baseline_latency_max_s'] or 0) * ms:.1f} ms "
        f"(max/median {result['baseline_max_over_median'] or 0:.2f}: the machine's own noise); "
        f"slowest batch during swaps / slowest of baseline "
        f"{result['swap_max_over_baseline_max'] or 0:.2f}",
        f"  batch boundary (the swap itself) at most {result['boundary_max_s'] * ms:.2f} ms; "
        f"publish-to-live median {result['swap_to_live_median_s']:.2f} s, "
        f"max {result['swap_to_live_max_s']:.2f} s",
        f"  process RSS: after 1 swap {result['rss_after_first_swap_mib']:.0f} MiB, after {last} "
        f"swaps {result[f'rss_after_{last}_swaps_mib']:.0f} MiB, ratio {result['rss_ratio']:.3f}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stream_ae_dev.bench.swap_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--swaps", type=int, default=10, help="swaps the latency is taken over")
    parser.add_argument("--rss-swaps", type=int, default=20, help="swaps before the last RSS")
    parser.add_argument("--streams", type=int, default=40, help="input streams")
    parser.add_argument("--backlog", type=int, default=500_000, help="events sent upfront")
    parser.add_argument("--batch", type=int, default=200, help="events per poll batch")
    parser.add_argument("--no-recycle", action="store_true", help="trace every new model")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_swap_bench(
        swaps=args.swaps,
        rss_swaps=args.rss_swaps,
        streams=args.streams,
        backlog_events=args.backlog,
        batch_events=args.batch,
        recycle_models=not args.no_recycle,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
