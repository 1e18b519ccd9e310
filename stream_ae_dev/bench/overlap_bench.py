"""The overlap (``STREAM_AE_OVERLAP``) on against off, side by side in one run.

Two ``stream-ae worker`` processes on the same model, one with the overlap and one without,
each on its own input topic, consumer group and Redis key prefix (window states held for every
stream, as in :mod:`stream_ae_dev.bench.e2e_bench`), both started once and left running. Then,
interleaved A B, B A, A B...:

1. **throughput**: a backlog of N events is written to one worker's topic while it is paused,
   and the rate at which it drains is measured (its ``/metrics``), then the same for the other;
   the ratio on/off of each pair, their median and spread;
2. **maximum sustained rate**, measured: events are produced to a worker at falling fractions
   of its median drain rate (:data:`SUSTAIN_FRACTIONS`), and the first rate it keeps up with
   is its maximum: over the last two thirds of the phase it consumed at least
   :data:`KEEP_UP` of what was offered, so its lag stayed bounded. The drain rate is not that
   maximum: while events are produced, the load generator takes a share of the same cores;
3. **latency**: events produced to one worker at half *its own* maximum sustained rate, then to
   the other, each alert's arrival minus its window's last event time: p50 and p99, per worker
   and phase.

The idle worker keeps polling its empty topic meanwhile, whichever is measured: the two share
the machine the same way. The CPU each worker, the broker and the load generator used is
reported with each figure.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stream_ae_dev.bench.e2e_bench import (
    P99_LATENCY_MS,
    Counters,
    PipelineRun,
    Side,
    _measure_latency,
    alternate,
    close_sides,
    drain_round,
    open_side,
    produce_paced,
    start_worker,
    wait_all_ready,
    warm_producer,
)
from stream_ae_dev.bench.report import BenchResult, Figure, describe, noise_flag

SECTION = "overlap"
MODES = ("on", "off")
# The rates tried for the maximum sustained rate, as fractions of the drain rate, highest first.
SUSTAIN_FRACTIONS = (0.8, 0.6, 0.45, 0.33, 0.25, 0.18, 0.12, 0.08)
KEEP_UP = 0.95  # consumed / offered over a phase's last two thirds: its lag stayed bounded
CATCH_UP_S = 30.0  # the longest wait for a worker to work off a probe's backlog


def run_overlap_bench(
    *,
    bootstrap: str,
    redis_url: str,
    models: dict[str, Path],
    workdir: Path,
    events: int = 10_000,
    streams: int = 1_000,
    repeats: int = 3,
    latency_s: float = 6.0,
    latency_repeats: int = 2,
    buckets: Sequence[int] | None = None,
    servers: dict[str, int] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """For each model (label -> artifact directory): the overlap on and off, interleaved
    ``repeats`` times for throughput and ``latency_repeats`` times for latency at half load."""
    result = BenchResult(SECTION)
    started = time.perf_counter()
    for label, model_dir in models.items():
        details = _compare(
            label,
            model_dir,
            bootstrap=bootstrap,
            redis_url=redis_url,
            workdir=workdir,
            events=events,
            streams=streams,
            repeats=repeats,
            latency_s=latency_s,
            latency_repeats=latency_repeats,
            buckets=buckets,
            servers=servers,
            progress=progress,
        )
        result.details[label] = details
        result.figures += _figures(label, details)
    result.seconds = time.perf_counter() - started
    return result


def _compare(
    label: str,
    model_dir: Path,
    *,
    bootstrap: str,
    redis_url: str,
    workdir: Path,
    events: int,
    streams: int,
    repeats: int,
    latency_s: float,
    latency_repeats: int,
    buckets: Sequence[int] | None,
    servers: dict[str, int] | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    sides: dict[str, Side] = {}
    for mode in MODES:
        slug = "".join(c if c.isalnum() else "-" for c in label.lower())  # a topic name part
        tag = f"ov{mode}-{slug}-{uuid.uuid4().hex[:8]}"
        run = PipelineRun(
            tag,
            model_dir,
            streams=streams,
            events=events,
            latency_s=latency_s,
            buckets=tuple(buckets) if buckets else None,
        )
        # The same events for both workers (the same seed).
        sides[mode] = open_side(run, bootstrap=bootstrap, client=client)
    out: dict[str, Any] = {"events": events, "streams": streams, "throughput": [], "latency": []}
    try:
        for mode, side in sides.items():
            start_worker(
                side,
                bootstrap=bootstrap,
                redis_url=redis_url,
                workdir=workdir,
                env={"STREAM_AE_OVERLAP": "true" if mode == "on" else "false"},
            )
        progress(f"overlap {label}: starting a worker with the overlap and one without")
        wait_all_ready(list(sides.values()))
        for k in range(repeats):
            out["throughput"].append(
                drain_round(k, sides, bootstrap, events, servers, progress, f"overlap {label}")
            )
        drain_rate = {
            mode: statistics.median(p[mode]["e2e_events_per_s"] for p in out["throughput"])
            for mode in MODES
        }
        out["drain_rate_per_s"] = drain_rate
        out["sustained"] = {}
        for mode in MODES:
            side = sides[mode]
            assert side.worker is not None
            probes = []
            for fraction in SUSTAIN_FRACTIONS:
                probe = _probe(bootstrap, side, fraction * drain_rate[mode], latency_s, servers)
                probes.append(probe)
                progress(
                    f"overlap {label}: {mode} at {probe['rate_per_s']:.0f} events/s consumed "
                    f"{probe['kept_up']:.0%} of it"
                )
                if probe["kept_up"] >= KEEP_UP:
                    break
            out["sustained"][mode] = {"rate_per_s": probes[-1]["rate_per_s"], "probes": probes}
        max_rate = {mode: out["sustained"][mode]["rate_per_s"] for mode in MODES}
        out["max_rate_per_s"] = max_rate
        for k in range(latency_repeats):
            phase: dict[str, Any] = {}
            for mode in alternate(k, MODES):
                side = sides[mode]
                assert side.worker is not None
                phase[mode] = _measure_latency(
                    side.run,
                    [side.worker],
                    side.source,
                    bootstrap,
                    side.topic,
                    side.alerts_topic,
                    side.dlq_topic,
                    0.5 * max_rate[mode],
                    servers,
                )
                phase[mode]["max_sustained_per_s"] = max_rate[mode]
                progress(
                    f"overlap {label}: latency {k + 1}, {mode} at "
                    f"{phase[mode]['rate_per_s']:.0f} events/s: p99 {phase[mode]['p99_ms']:.0f} ms"
                )
            out["latency"].append(phase)
    finally:
        close_sides(sides.values(), client)
        client.close()
    return out


def _probe(
    bootstrap: str,
    side: Side,
    rate_per_s: float,
    seconds: float,
    servers: dict[str, int] | None,
) -> dict[str, Any]:
    """Produce to ``side`` at ``rate_per_s`` for ``seconds`` while reading its consumed count;
    ``kept_up``: what it consumed over the last two thirds of the phase / what was offered
    meanwhile. Then wait until it has worked off what is left."""
    assert side.worker is not None
    worker = side.worker
    producer = warm_producer(bootstrap, warm_up_topic=side.dlq_topic)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            counters = Counters.read([worker])
            samples.append((counters.at, counters.events))
            done.wait(0.25)

    before = Counters.read([worker], servers)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        sent = produce_paced(producer, side.topic, side.source, rate_per_s, seconds, 0.0)
    finally:
        done.set()
        sampler.join(5)
        producer.close()
    after = Counters.read([worker], servers)
    third = started + seconds / 3
    tail = [(at, events) for at, events in samples if at >= third]
    kept_up = float("nan")
    if len(tail) >= 2 and tail[-1][0] > tail[0][0]:
        consumed = (tail[-1][1] - tail[0][1]) / (tail[-1][0] - tail[0][0])
        kept_up = consumed / rate_per_s
    deadline = time.perf_counter() + CATCH_UP_S
    while Counters.read([worker]).events < before.events + sent:
        if time.perf_counter() > deadline:
            break
        time.sleep(0.1)
    span = after.at - before.at
    return {
        "rate_per_s": rate_per_s,
        "sent": sent,
        "kept_up": kept_up,
        "behind_at_end": sent - (after.events - before.events),
        "worker_cores": (after.worker_cpu_s - before.worker_cpu_s) / span,
        "generator_cores": (after.own_cpu_s - before.own_cpu_s) / span,
    }


def _figures(label: str, details: dict[str, Any]) -> list[Figure]:
    pairs = details["throughput"]
    rates = {mode: [p[mode]["e2e_events_per_s"] for p in pairs] for mode in MODES}
    ratios = [p["on"]["e2e_events_per_s"] / p["off"]["e2e_events_per_s"] for p in pairs]
    cores = {mode: statistics.median(p[mode]["worker_cores"] for p in pairs) for mode in MODES}
    model_share = {mode: statistics.median(p[mode]["model_share"] for p in pairs) for mode in MODES}
    figures = [
        Figure.info(
            SECTION,
            f"e2e overlap on / off, {label} model",
            statistics.median(ratios),
            "x",
            note=f"{describe(ratios)} of pairs A B interleaved{noise_flag(ratios)}",
        )
    ]
    for mode in MODES:
        figures.append(
            Figure.info(
                SECTION,
                f"e2e overlap {mode}, {label} model",
                statistics.median(rates[mode]),
                "events/s",
                note=f"{describe(rates[mode], 'events/s')}; worker {cores[mode]:.2f} cores, "
                f"model {model_share[mode]:.0%} of its wall time",
            )
        )
    for mode in MODES:
        sustained = details["sustained"][mode]
        drain = details["drain_rate_per_s"][mode]
        tried = ", ".join(f"{p['rate_per_s']:.0f}: {p['kept_up']:.0%}" for p in sustained["probes"])
        figures.append(
            Figure.info(
                SECTION,
                f"max sustained rate, overlap {mode}, {label} model",
                sustained["rate_per_s"],
                "events/s",
                note=f"{sustained['rate_per_s'] / drain:.2f}x its drain rate; consumed/offered "
                f"at each rate tried: {tried}",
            )
        )
    for mode in MODES:
        phases = [phase[mode] for phase in details["latency"]]
        p99 = [lat["p99_ms"] for lat in phases]
        p50 = [lat["p50_ms"] for lat in phases]
        last = phases[-1]
        note = (
            f"{describe(p99, 'ms')}; p50 {statistics.median(p50):.0f} ms; at "
            f"{last['rate_per_s']:.0f} events/s (half the max sustained rate); batches of "
            f"{last['events_per_batch']:.0f} events in {last['batch_ms']:.0f} ms; "
            f"{last['behind_at_end']:.0f} behind at the end; CPU worker "
            f"{last['worker_cores']:.2f}, load generator {last['generator_cores']:.2f}"
            + (f", broker {last['broker_cores']:.2f}" if "broker_cores" in last else "")
            + " cores"
        )
        figures.append(
            Figure.check(
                SECTION,
                f"event-to-alert p99 at half load, overlap {mode}, {label} model",
                statistics.median(p99),
                "ms",
                "<=",
                P99_LATENCY_MS,
                note,
            )
        )
    return figures
