"""``stream-ae bench``: throughput, latency and memory, as ratios measured side by side.

Sections (all by default, or ``--only``):

- ``model``: the naive per-window ``model.predict`` loop vs the batched Scorer;
- ``store``: events/s, Redis round trips per poll batch, Redis memory per stream;
- ``e2e``: broker -> worker -> alerts vs the raw consume rate (kafka-python, and confluent
  where installed) and the model alone, each pair interleaved and repeated; the event-to-alert
  latency at half load;
- ``scaling``: the e2e figure with 1, 2, 4 partitions/workers and 1k, 10k, 100k streams;
- ``swap``: model hot-swap latency;
- ``overlap``: the worker with ``STREAM_AE_OVERLAP`` on against off, interleaved and repeated:
  throughput and event-to-alert latency at half load.

The broker (Tansu) and Redis are started here, on free local ports, and stopped at the end.
Prints one table and writes every figure and measurement to ``<out>/bench-<time>.json``.
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stream_ae_dev.bench.report import (
    BenchResult,
    Figure,
    format_table,
    machine_info,
    write_json,
)

HELP = "benchmarks: throughput, latency, memory"

EXAMPLES = (
    "stream-ae bench",
    "stream-ae bench --quick --only model,e2e",
    "stream-ae bench --only e2e --profile --out bench-results",
)

SECTIONS = ("model", "store", "e2e", "scaling", "swap", "overlap")


@dataclass(frozen=True)
class Plan:
    """Sizes of one pass: the full one (~11 minutes on 2 cores, ~4 of them the overlap
    section) or ``--quick``."""

    model_features: tuple[int, ...] = (1, 8)
    model_naive_windows: int = 20
    model_min_seconds: float = 1.0
    store_streams: int = 100_000
    store_batches: int = 10
    cheap_events: int = 60_000  # a drain of ~3-4 s by either client here
    heavy_events: int = 12_000
    e2e_repeats: int = 3  # interleaved pairs per e2e ratio (issue 13: at least 3)
    latency_s: float = 6.0
    latency_loads: tuple[float, ...] = (0.25, 0.5)
    scaling_workers: tuple[int, ...] = (1, 2, 4)
    scaling_streams: tuple[int, ...] = (1_000, 10_000, 100_000)
    scaling_events: int = 20_000
    overlap_events: tuple[int, int] = (60_000, 12_000)  # cheap model, H=64 model
    overlap_repeats: int = 3
    overlap_latency_repeats: int = 2
    buckets: tuple[int, ...] | None = None  # None: Settings' default batch_buckets

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            model_features=(1,),
            model_naive_windows=8,
            model_min_seconds=0.3,
            store_streams=10_000,
            store_batches=3,
            cheap_events=6_000,
            heavy_events=1_500,
            latency_s=3.0,
            latency_loads=(0.5,),
            scaling_workers=(1, 2),
            scaling_streams=(1_000, 10_000),
            scaling_events=6_000,
            overlap_events=(6_000, 1_500),
            overlap_repeats=3,
            overlap_latency_repeats=1,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    parser.add_argument(
        "--quick", action="store_true", help="a shorter pass: fewer sizes, shorter runs"
    )
    parser.add_argument(
        "--only",
        type=parse_sections,
        default=SECTIONS,
        metavar="SECTIONS",
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="where the JSON file goes"
    )
    parser.add_argument(
        "--buckets",
        type=_buckets,
        metavar="SIZES",
        help="the model's batch buckets for the model, e2e and scaling sections, e.g. "
        "16,128,1024,2048 (default: the settings' default, as a worker runs out of the box)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the first worker of each e2e run under cProfile; the top functions go into "
        "the JSON file and the .prof files stay under --out",
    )


def parse_sections(text: str) -> tuple[str, ...]:
    """``"model,e2e"`` -> ``("model", "e2e")`` in the canonical order; unknown names rejected.

    >>> parse_sections("e2e, model")
    ('model', 'e2e')
    """
    wanted = {part.strip() for part in text.split(",") if part.strip()}
    unknown = sorted(wanted - set(SECTIONS))
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(SECTIONS)}"
        )
    return tuple(s for s in SECTIONS if s in wanted)


def _buckets(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of batch sizes: {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive: {text!r}")
    return sizes


def run(args: argparse.Namespace) -> int:
    plan = Plan.quick() if args.quick else Plan()
    if args.buckets:
        plan = replace(plan, buckets=args.buckets)
    sections: tuple[str, ...] = args.only
    machine = machine_info()
    started = time.perf_counter()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir: Path = args.out
    workdir = Path(tempfile.mkdtemp(prefix="stream-ae-bench-"))
    profile_dir = out_dir / f"profiles-{stamp}" if args.profile else None
    print(
        f"stream-ae bench: {', '.join(sections)}{' (quick)' if args.quick else ''} on "
        f"{machine['cpu']}, {machine['usable_cores']} usable cores, load "
        f"{', '.join(f'{x:.1f}' for x in machine['load_average'] or [])}",
        flush=True,
    )
    results: list[BenchResult] = []
    try:
        results = _run_sections(sections, plan, workdir, profile_dir)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures = [f for r in results for f in r.figures]
    print()
    print(format_table(figures))
    for r in results:
        if r.skipped:
            print(f"{r.section}: skipped: {r.skipped.splitlines()[0]}")
    missed = [f for f in figures if f.met is False]
    path = write_json(results, out_dir / f"bench-{stamp}.json", argv=sys.argv, machine=machine)
    print(
        f"\n{len(figures)} figures, {sum(f.met is True for f in figures)} targets met, "
        f"{len(missed)} missed; {time.perf_counter() - started:.0f} s; written to {path}"
    )
    return 0 if not any(r.skipped and r.section != "swap" for r in results) else 1


def _run_sections(
    sections: Sequence[str], plan: Plan, workdir: Path, profile_dir: Path | None
) -> list[BenchResult]:
    """Run the chosen sections in order, each guarded: a failure is recorded, not fatal."""
    results: list[BenchResult] = []
    progress = _progress
    if "model" in sections:
        results.append(_guard("model", lambda: _model(plan)))
    needs_broker = any(s in sections for s in ("e2e", "scaling", "swap", "overlap"))
    needs_redis = needs_broker or "store" in sections
    if not needs_redis:
        return results
    from stream_ae_dev.devstack import DevStack, RedisProcess

    stack: Any = (
        DevStack(run_dir=workdir / "stack") if needs_broker else RedisProcess(run_dir=workdir)
    )
    progress("starting the broker and Redis" if needs_broker else "starting Redis")
    stack.start()
    try:
        redis_url = stack.redis_url if needs_broker else stack.url
        if "store" in sections:
            results.append(_guard("store", lambda: _store(plan, redis_url)))
        models: dict[str, Path] = {}
        if any(s in sections for s in ("e2e", "scaling", "overlap")):
            models = _bench_models(workdir, with_heavy="e2e" in sections or "overlap" in sections)
        baseline: dict[str, Any] | None = None
        if "e2e" in sections:
            e2e = _guard(
                "e2e",
                lambda: _e2e(
                    plan,
                    stack.bootstrap_servers,
                    redis_url,
                    models,
                    workdir,
                    profile_dir,
                    {"broker": stack.broker.pid, "redis": stack.redis.pid},
                ),
            )
            results.append(e2e)
            baseline = e2e.details.get("cheap")
        if "scaling" in sections:
            results.append(
                _guard(
                    "scaling",
                    lambda: _scaling(
                        plan,
                        stack.bootstrap_servers,
                        redis_url,
                        models,
                        workdir,
                        baseline,
                        {"broker": stack.broker.pid, "redis": stack.redis.pid},
                    ),
                )
            )
        if "swap" in sections:
            results.append(_swap(plan, stack.bootstrap_servers, redis_url, workdir))
        if "overlap" in sections:
            servers = {"broker": stack.broker.pid, "redis": stack.redis.pid}
            results.append(
                _guard(
                    "overlap",
                    lambda: _overlap(
                        plan, stack.bootstrap_servers, redis_url, models, workdir, servers
                    ),
                )
            )
    finally:
        stack.stop()
    return results


def _progress(message: str) -> None:
    print(f"  {message}", flush=True)


def _guard(section: str, bench: Callable[[], BenchResult]) -> BenchResult:
    _progress(f"[{section}]")
    started = time.perf_counter()
    try:
        result = bench()
    except KeyboardInterrupt:
        raise
    except Exception:
        detail = traceback.format_exc()
        print(detail, file=sys.stderr, flush=True)
        result = BenchResult(section, skipped=detail.strip().splitlines()[-1] + "\n" + detail)
    result.seconds = time.perf_counter() - started
    _progress(f"[{section}] {result.seconds:.0f} s")
    return result


def _model(plan: Plan) -> BenchResult:
    from stream_ae.settings import Settings
    from stream_ae_dev.bench.model_bench import run_model_bench

    defaults = Settings.model_construct()  # not this shell's environment: the defaults
    return run_model_bench(
        features=plan.model_features,
        buckets=plan.buckets or tuple(defaults.batch_buckets),
        worker_batch=defaults.max_poll_records,
        naive_windows=plan.model_naive_windows,
        min_seconds=plan.model_min_seconds,
    )


def _store(plan: Plan, redis_url: str) -> BenchResult:
    from stream_ae_dev.bench.store_bench import run_store_bench

    return run_store_bench(redis_url, streams=plan.store_streams, batches=plan.store_batches)


def _bench_models(workdir: Path, *, with_heavy: bool) -> dict[str, Path]:
    """Artifacts for the worker processes: a cheap model (H=4) and the real size (H=64)."""
    from stream_ae_dev.bench.workload import bench_artifact, bench_spec, write_artifact

    _progress("building the benchmark models")
    models = {"cheap": write_artifact(bench_artifact(bench_spec(hidden=4)), workdir / "cheap")}
    if with_heavy:
        models["heavy"] = write_artifact(bench_artifact(bench_spec(hidden=64)), workdir / "h64")
    return models


def _e2e(
    plan: Plan,
    bootstrap: str,
    redis_url: str,
    models: dict[str, Path],
    workdir: Path,
    profile_dir: Path | None,
    servers: dict[str, int],
) -> BenchResult:
    from stream_ae_dev.bench.e2e_bench import run_e2e_bench

    result = run_e2e_bench(
        bootstrap=bootstrap,
        redis_url=redis_url,
        cheap_model_dir=models["cheap"],
        heavy_model_dir=models["heavy"],
        workdir=workdir,
        cheap_events=plan.cheap_events,
        heavy_events=plan.heavy_events,
        repeats=plan.e2e_repeats,
        latency_s=plan.latency_s,
        latency_loads=plan.latency_loads,
        profile=profile_dir is not None,
        buckets=plan.buckets,
        servers=servers,
        progress=_progress,
    )
    if profile_dir is not None:
        _keep_profiles(result, profile_dir)
    return result


def _overlap(
    plan: Plan,
    bootstrap: str,
    redis_url: str,
    models: dict[str, Path],
    workdir: Path,
    servers: dict[str, int],
) -> BenchResult:
    from stream_ae_dev.bench.overlap_bench import run_overlap_bench

    result = BenchResult("overlap")
    for (label, model), events in zip(
        (("cheap", models["cheap"]), ("H=64", models["heavy"])), plan.overlap_events, strict=True
    ):
        part = run_overlap_bench(
            bootstrap=bootstrap,
            redis_url=redis_url,
            models={label: model},
            workdir=workdir,
            events=events,
            repeats=plan.overlap_repeats,
            latency_s=plan.latency_s,
            latency_repeats=plan.overlap_latency_repeats,
            buckets=plan.buckets,
            servers=servers,
            progress=_progress,
        )
        result.figures += part.figures
        result.details.update(part.details)
    return result


def _keep_profiles(result: BenchResult, profile_dir: Path) -> None:
    """Copy the cProfile files out of the temporary work directory."""
    profile_dir.mkdir(parents=True, exist_ok=True)
    for name, run in result.details.items():
        source = run.get("profile_file") if isinstance(run, dict) else None
        if source and Path(source).exists():
            target = profile_dir / f"{name}-worker.prof"
            shutil.copy(source, target)
            run["profile_file"] = str(target)
            _progress(f"profile of the {name} worker: {target}")


def _scaling(
    plan: Plan,
    bootstrap: str,
    redis_url: str,
    models: dict[str, Path],
    workdir: Path,
    baseline: dict[str, Any] | None,
    servers: dict[str, int],
) -> BenchResult:
    from stream_ae_dev.bench.e2e_bench import run_scaling_bench

    usable = baseline if baseline and baseline["run"]["events"] == plan.scaling_events else None
    return run_scaling_bench(
        bootstrap=bootstrap,
        redis_url=redis_url,
        model_dir=models["cheap"],
        workdir=workdir,
        workers=plan.scaling_workers,
        streams=plan.scaling_streams,
        events=plan.scaling_events,
        repeats=plan.e2e_repeats,
        baseline=usable,
        buckets=plan.buckets,
        servers=servers,
        progress=_progress,
    )


def _swap(plan: Plan, bootstrap: str, redis_url: str, workdir: Path) -> BenchResult:
    """The hot-swap benchmark; its arguments are matched by name."""
    from stream_ae_dev.bench.swap_bench import run_swap_bench as bench

    offered: dict[str, Any] = {
        "quick": plan.cheap_events == Plan.quick().cheap_events,
        "bootstrap": bootstrap,
        "bootstrap_servers": bootstrap,
        "redis_url": redis_url,
        "workdir": workdir,
        "progress": _progress,
    }
    accepted = inspect.signature(bench).parameters
    kwargs = {k: v for k, v in offered.items() if k in accepted}
    result = _guard("swap", lambda: as_result("swap", bench(**kwargs)))
    if not result.figures and not result.skipped:
        result.figures = swap_figures(result.details)
    return result


def swap_figures(details: dict[str, Any]) -> list[Figure]:
    """Table lines for a swap result that brings only measurements (the keys it is known to
    report; absent ones are left out)."""
    figures: list[Figure] = []
    ratio = details.get("batch_latency_max_over_median")
    if isinstance(ratio, float | int):
        baseline = details.get("baseline_max_over_median")
        note = f"baseline without swaps {baseline:.2f}" if isinstance(baseline, float) else ""
        figures.append(
            Figure.check(
                "swap", "slowest / median poll batch during swaps", ratio, "x", "<=", 2.0, note=note
            )
        )
    for key, name, unit, scale in (
        ("batch_latency_median_s", "median poll batch during swaps", "ms", 1000.0),
        ("boundary_max_s", "batch boundary where a swap lands, max", "ms", 1000.0),
        ("swap_to_live_median_s", "publish to live, median", "s", 1.0),
        ("rss_ratio", "RSS after 20 swaps / after 1", "x", 1.0),
    ):
        value = details.get(key)
        if isinstance(value, float | int):
            figures.append(Figure.info("swap", name, value * scale, unit))
    return figures


def as_result(section: str, value: Any) -> BenchResult:
    """A benchmark's return value as a :class:`BenchResult` (it may be one already, or a dict
    with optional ``figures`` given as :class:`Figure` or dicts)."""
    if isinstance(value, BenchResult):
        return value
    if not isinstance(value, dict):
        return BenchResult(section, details={"result": value})
    details = dict(value)
    figures = []
    for item in details.pop("figures", []) or []:
        if isinstance(item, Figure):
            figures.append(item)
        elif isinstance(item, dict):
            figures.append(Figure(**{"section": section, **item}))
    return BenchResult(section, figures=figures, details=details)
