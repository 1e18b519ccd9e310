"""Smoke tests of the benchmarks: the smallest configuration of each benchmark function runs and
returns figures of the documented structure. No assertion is on time: speed is what the
``stream-ae bench`` command reports, not what tests check. What is asserted is what must hold
on any machine: the store makes exactly its round trips, holds every stream, and counts agree.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stream_ae_dev.bench.e2e_bench import parse_metrics
from stream_ae_dev.bench.report import (
    BenchResult,
    Figure,
    format_markdown,
    format_table,
    write_json,
)
from stream_ae_dev.cli.bench import SECTIONS, as_result, parse_sections
from stream_ae_dev.devstack import BrokerProcess, RedisProcess
from tests.support.paths import REPO_ROOT


def assert_well_formed(result: BenchResult, section: str) -> None:
    assert result.section == section
    assert result.skipped is None
    assert result.figures, "a benchmark without figures"
    for f in result.figures:
        assert f.section == section
        assert isinstance(f.value, float) and math.isfinite(f.value), f
        assert f.unit
        if f.target is None:
            assert f.met is None
        else:
            assert f.target.split()[0] in (">=", "<=")
            assert isinstance(f.met, bool)
    json.dumps(result.to_dict(), default=str)  # the JSON file can hold it


# --- report and command line ------------------------------------------------------------------


def test_a_checked_figure_knows_whether_it_met_its_target() -> None:
    assert Figure.check("s", "n", 3.0, "x", ">=", 2.0).met is True
    assert Figure.check("s", "n", 1.0, "x", ">=", 2.0).met is False
    assert Figure.check("s", "n", 250.0, "ms", "<=", 200.0).met is False
    assert Figure.info("s", "n", 1.0, "x").met is None


def test_table_markdown_and_json_hold_every_figure(tmp_path: Path) -> None:
    figures = [
        Figure.check("model", "speedup", 612.4, "x", ">=", 500),
        Figure.check("e2e", "p99", 250.0, "ms", "<=", 200, note="40 alerts"),
        Figure.info("store", "memory", 520.0, "bytes"),
    ]
    table = format_table(figures)
    assert "612" in table and "NO" in table and "yes" in table
    markdown = format_markdown(figures)
    assert markdown.count("\n") == len(figures) + 1 and "**no**" in markdown
    path = write_json(
        [BenchResult("model", figures=figures, details={"n": 1})],
        tmp_path / "out" / "bench.json",
        argv=["bench"],
        machine={"cpu": "x"},
    )
    document = json.loads(path.read_text())
    assert document["sections"][0]["figures"][0]["value"] == pytest.approx(612.4)
    assert document["sections"][0]["figures"][1]["met"] is False


def test_sections_are_parsed_in_canonical_order_and_unknown_ones_refused() -> None:
    assert parse_sections("scaling,model") == ("model", "scaling")
    assert parse_sections(",".join(SECTIONS)) == SECTIONS
    with pytest.raises(argparse.ArgumentTypeError):
        parse_sections("model,gpu")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_sections(" , ")


def test_a_plain_dict_result_becomes_a_bench_result() -> None:
    result = as_result(
        "swap",
        {"figures": [{"name": "swap p99", "value": 1.5, "unit": "s"}], "runs": 3},
    )
    assert result.figures[0].section == "swap" and result.figures[0].name == "swap p99"
    assert result.details == {"runs": 3}


def test_swap_measurements_become_table_lines() -> None:
    from stream_ae_dev.cli.bench import swap_figures

    figures = swap_figures(
        {"batch_latency_max_over_median": 2.5, "rss_ratio": 0.99, "unrelated": "x"}
    )
    assert [(f.name, f.met) for f in figures] == [
        ("slowest / median poll batch during swaps", False),
        ("RSS after 20 swaps / after 1", None),
    ]
    assert swap_figures({}) == []


def test_prometheus_text_is_parsed_into_named_series() -> None:
    text = (
        "# HELP stream_ae_events_total Input events\n"
        "# TYPE stream_ae_events_total counter\n"
        'stream_ae_events_total{outcome="applied"} 1500.0\n'
        'stream_ae_events_total{outcome="skipped"} 2.0\n'
        "stream_ae_batch_size_count 7.0\n"
    )
    metrics = parse_metrics(text)
    assert metrics['stream_ae_events_total{outcome="applied"}'] == 1500.0
    assert metrics["stream_ae_batch_size_count"] == 7.0
    assert len(metrics) == 3


# --- the GPU script ----------------------------------------------------------------------------


def test_the_gpu_script_never_imports_tensorflow() -> None:
    source = (REPO_ROOT / "stream_ae_dev" / "bench" / "gpu_bench.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "tensorflow" not in imported
    # Its help and its environment check run without Keras or a backend at all.
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    code = (
        "import sys, stream_ae_dev.bench.gpu_bench as g\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "print(g.parse_args(['--batches', '1024,4096']).batches)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1024, 4096]"


# --- model ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_model_bench_smallest_configuration() -> None:
    from stream_ae_dev.bench.model_bench import run_model_bench

    result = run_model_bench(
        window=8,
        features=(1, 2),
        hidden=4,
        buckets=(4, 16),
        worker_batch=10,
        naive_windows=2,
        min_seconds=0.0,
    )
    assert_well_formed(result, "model")
    names = [f.name for f in result.figures]
    assert len(names) == 8  # four figures per feature count
    speedups = [f for f in result.figures if f.target is not None]
    assert [f.target for f in speedups] == [">= 500", ">= 500"]
    for key in ("F=1", "F=2"):
        details = result.details[key]
        assert set(details["scorer_windows_per_s"]) == {"4", "16"}
        assert details["full_poll_batch"]["padded_to"] == 16


# --- store ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_store_bench_counts_round_trips_and_holds_every_stream(
    redis_server: RedisProcess,
) -> None:
    import redis

    from stream_ae_dev.bench.store_bench import run_store_bench

    result = run_store_bench(
        redis_server.url,
        window=8,
        features=(1, 3),
        streams=50,
        batch_events=10,
        batches=2,
        memory_sample=5,
        prefix="test-bench-store",
    )
    assert_well_formed(result, "store")
    for f, key in ((1, "F=1"), (3, "F=3")):
        details = result.details[key]
        assert details["streams_held"] == 50
        assert details["raw_window_bytes"] == 8 * f * 4
        # Redis holds the whole value and its own overhead on top.
        assert details["memory_usage_bytes_mean"] > details["stored_value_bytes"]
        cold, warm = details["cold"], details["warm"]
        # Cold cache: one read script call, one fenced write. Warm: the write only.
        assert cold["round_trips_per_batch"] == 2.0 == cold["socket_writes_per_batch"]
        assert warm["round_trips_per_batch"] == 1.0 == warm["socket_writes_per_batch"]
        # One GET per stream loaded (in the read script), one EVALSHA per batch each way (all
        # its states), nothing else.
        assert cold["get_per_batch"] == 10 and cold["evalsha_per_batch"] == 2
        assert warm["get_per_batch"] == 0 and warm["evalsha_per_batch"] == 1
        assert cold["states_written_per_batch"] == 10 == warm["states_written_per_batch"]
        assert cold["other_commands"] == 0 == warm["other_commands"]
        assert cold["scripted_set_per_batch"] == 10  # every fenced write landed
    # Its keys are gone afterwards.
    client = redis.Redis.from_url(redis_server.url)
    assert not list(client.scan_iter(match="test-bench-store*"))
    client.close()


# --- end to end and scaling --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cheap_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stream_ae_dev.bench.workload import bench_artifact, bench_spec, write_artifact

    directory = tmp_path_factory.mktemp("bench-model") / "cheap"
    return write_artifact(bench_artifact(bench_spec(window=8, hidden=4)), directory)


@pytest.mark.integration
@pytest.mark.slow
def test_e2e_bench_smallest_configuration(
    broker: BrokerProcess, redis_server: RedisProcess, cheap_model: Path, tmp_path: Path
) -> None:
    from stream_ae_dev.bench.e2e_bench import run_e2e_bench

    result = run_e2e_bench(
        bootstrap=broker.bootstrap_servers,
        redis_url=redis_server.url,
        cheap_model_dir=cheap_model,
        heavy_model_dir=cheap_model,
        workdir=tmp_path,
        cheap_events=300,
        heavy_events=300,
        streams=20,
        repeats=2,
        latency_s=2.0,
        latency_loads=(0.5,),
    )
    assert_well_formed(result, "e2e")
    targets = {f.name: f.target for f in result.figures if f.target}
    assert targets == {
        "e2e / raw kafka-python consume, cheap model": ">= 0.8",
        "e2e / raw confluent consume, cheap model": ">= 0.6",
        "e2e confluent / e2e kafka-python, cheap model": ">= 3",
        "e2e / model alone, H=64 model": ">= 0.9",
        "event-to-alert p99, 50% load, cheap": "<= 100",
        "event-to-alert p99, 50% load, H=64": "<= 100",
    }
    for f in result.figures:
        if f.unit == "x":  # every ratio: a median of interleaved pairs, its range and spread
            assert "median of " in f.note and "spread" in f.note, f
        if f.name.startswith(("e2e,", "raw ", "model alone")):
            assert "CPU" in f.note and "broker" not in f.note, f  # no broker pid given here
    cheap, heavy = result.details["cheap"], result.details["h64"]
    assert cheap["clients"] == ["kafka-python", "confluent"]
    # Two rounds, and up to two more where a ratio's spread was over 25%.
    assert 2 <= len(cheap["rounds"]) <= 4 and 2 <= len(heavy["rounds"]) <= 4
    for measured in cheap["rounds"]:
        for client in ("kafka-python", "confluent"):
            drained = measured[client]["e2e"]
            # Every event of the backlog was consumed, and every one completed a window.
            assert drained["events_measured"] + drained["consumed_before_measuring"] >= 300
            assert drained["windows_measured"] == drained["events_measured"]
            assert measured[client]["raw"]["per_s"] > 0
    for measured in heavy["rounds"]:
        assert measured["e2e"]["windows_measured"] == measured["e2e"]["events_measured"]
        assert measured["model"]["per_s"] > 0 and measured["model"]["batch"] >= 1
    for run in (cheap, heavy):
        latency = run["latency"]
        assert latency is run["latency_by_load"]["0.5"]
        assert latency["alerts"] > 0  # the spikes alerted: the latency has samples
        assert latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
        assert latency["sent"] > 0 and latency["batches"] > 0


def test_pairs_alternate_which_side_goes_first() -> None:
    from stream_ae_dev.bench.e2e_bench import alternate
    from stream_ae_dev.bench.report import noise_flag, spread

    assert [alternate(k, ("A", "B")) for k in range(3)] == [["A", "B"], ["B", "A"], ["A", "B"]]
    assert spread([1.0, 1.0, 1.0]) == 0.0
    assert noise_flag([0.9, 1.0, 1.1]) == ""
    assert "noise" in noise_flag([0.7, 1.0, 1.1])


@pytest.mark.integration
@pytest.mark.slow
def test_scaling_bench_smallest_configuration(
    broker: BrokerProcess, redis_server: RedisProcess, cheap_model: Path, tmp_path: Path
) -> None:
    from stream_ae_dev.bench.e2e_bench import run_scaling_bench

    result = run_scaling_bench(
        bootstrap=broker.bootstrap_servers,
        redis_url=redis_server.url,
        model_dir=cheap_model,
        workdir=tmp_path,
        workers=(2,),
        streams=(),
        base_streams=20,
        events=300,
    )
    assert_well_formed(result, "scaling")
    assert [f.name for f in result.figures] == ["e2e, workers 2 streams 20"]
    run = result.details["workers=2 streams=20"]
    assert run["run"]["partitions"] == 2 and run["run"]["workers"] == 2
    assert run["raw_consume_per_s"] > 0


@pytest.mark.integration
@pytest.mark.slow
def test_scaling_bench_compares_stream_counts_side_by_side(
    broker: BrokerProcess, redis_server: RedisProcess, cheap_model: Path, tmp_path: Path
) -> None:
    """Two stream counts, each on its own worker: a cold drain of the larger, every state
    cached, then interleaved drains; the ratio is checked against the target."""
    from stream_ae_dev.bench.e2e_bench import run_scaling_bench

    result = run_scaling_bench(
        bootstrap=broker.bootstrap_servers,
        redis_url=redis_server.url,
        model_dir=cheap_model,
        workdir=tmp_path,
        workers=(),
        streams=(40, 10),
        events=200,
        repeats=1,
    )
    assert_well_formed(result, "scaling")
    assert [f.name for f in result.figures] == [
        "e2e, workers 1 streams 10, states cached",
        "e2e, workers 1 streams 40, states cached",
        "e2e 40 / 10 streams, states cached",
        "e2e, workers 1 streams 40, cold cache (after a restart)",
    ]
    ratio = result.figures[2]
    assert ratio.target == ">= 0.8" and ratio.met is not None
    compared = result.details["streams"]
    assert compared["streams"] == [10, 40] and len(compared["rounds"]) >= 1

    def drained(m: dict[str, Any]) -> float:
        return m["consumed_before_measuring"] + m["events_measured"]

    for measured in compared["rounds"]:
        assert {k: drained(m) for k, m in measured.items()} == {"10": 200, "40": 200}
    assert drained(compared["cold"]) == 200


@pytest.mark.integration
@pytest.mark.slow
def test_overlap_bench_smallest_configuration(
    broker: BrokerProcess, redis_server: RedisProcess, cheap_model: Path, tmp_path: Path
) -> None:
    """Two workers, the overlap on and off, each pair of drains and latency phases measured."""
    from stream_ae_dev.bench.overlap_bench import run_overlap_bench

    result = run_overlap_bench(
        bootstrap=broker.bootstrap_servers,
        redis_url=redis_server.url,
        models={"cheap": cheap_model},
        workdir=tmp_path,
        events=300,
        streams=20,
        repeats=2,
        latency_s=2.0,
        latency_repeats=1,
    )
    assert_well_formed(result, "overlap")
    assert [f.name for f in result.figures] == [
        "e2e overlap on / off, cheap model",
        "e2e overlap on, cheap model",
        "e2e overlap off, cheap model",
        "max sustained rate, overlap on, cheap model",
        "max sustained rate, overlap off, cheap model",
        "event-to-alert p99 at half load, overlap on, cheap model",
        "event-to-alert p99 at half load, overlap off, cheap model",
    ]
    details = result.details["cheap"]
    assert len(details["throughput"]) == 2 and len(details["latency"]) == 1
    for pair in details["throughput"]:
        for mode in ("on", "off"):
            drain = pair[mode]
            assert drain["events_measured"] + drain["consumed_before_measuring"] >= 300
            assert drain["windows_measured"] == drain["events_measured"]
    for mode in ("on", "off"):
        probes = details["sustained"][mode]["probes"]
        assert details["sustained"][mode]["rate_per_s"] == probes[-1]["rate_per_s"]
        assert all(p["sent"] > 0 for p in probes)
        latency = details["latency"][0][mode]
        assert latency["alerts"] > 0 and latency["p50_ms"] <= latency["p99_ms"]


# --- hot-swap ------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_swap_bench_smallest_configuration(
    broker: BrokerProcess, redis_server: RedisProcess, tmp_path: Path
) -> None:
    from stream_ae_dev.bench.swap_bench import run_swap_bench
    from stream_ae_dev.cli.bench import swap_figures

    swaps = 2
    details = run_swap_bench(
        swaps=swaps,
        rss_swaps=swaps,
        bootstrap_servers=broker.bootstrap_servers,
        redis_url=redis_server.url,
        streams=4,
        # Enough never to drain during the short warm-up, baseline and two swaps.
        backlog_events=20_000,
        batch_events=50,
        window=8,
        hidden=4,
        batch_buckets=(16, 64),
        baseline_s=0.5,
        settle_batches=2,
        reload_jitter_s=0.0,
        workdir=tmp_path,
        out=None,
    )
    result = as_result("swap", details)
    result.figures = swap_figures(result.details)
    assert_well_formed(result, "swap")
    assert [f.target for f in result.figures if f.target] == ["<= 2"]
    # Every swap went live: the batches ran on the first champion and on each promoted version.
    versions = {version for *_, version in details["batches"]}
    assert len(versions) == swaps + 1
    assert len(details["rss_after_each_swap_mib"]) == swaps
    assert details["batches_during_swaps"] > 0 and details["events_applied"] > 0
    assert details["config"]["backlog_events"] == 20_000
