"""End to end: broker -> worker processes -> alerts, against the raw consume and the model.

The e2e section (:func:`run_e2e_bench`) compares pairs, each side measured interleaved with its
reference, ``repeats`` times, the order alternating (A B, B A, A B: the rule of issue 13, so
that the two parts of a ratio come from the same minutes of a noisy machine):

- **cheap model** (the pipeline is the limit): the e2e drain rate of a ``stream-ae worker``
  with the kafka-python client against one plain kafka-python consumer reading the same
  messages; where confluent-kafka is installed, the same with ``STREAM_AE_KAFKA_CLIENT=confluent``
  against a plain confluent consumer, and the confluent e2e against the kafka-python e2e;
- **H=64 model** (the model is the limit): the e2e rate in windows/s against
  :meth:`Scorer.score` alone on batches of the size the worker saw;
- then, the workers caught up, the event-to-alert latency at fractions of the median drain rate.

Each ratio is the median over the rounds, with its range and spread ((max - min) / median).
Where a spread is over 25% after ``repeats`` rounds, up to :data:`EXTRA_ROUNDS` more are
measured; a ratio still that wide is marked as noise in its figure's note.

Each worker is started once, on its own topics, group and Redis prefix, with a full window held
for each of its S streams (so every event completes a window: a long-running worker's steady
state). A drain: the worker paused (SIGSTOP, resumed briefly every few seconds so its group
session stays alive) while a backlog of N events is written, then resumed; the rate at which
its ``/metrics`` event counter grows until the backlog is consumed. A raw consume: the same N
messages, written beforehand to a topic of their own, read from its beginning. Every
measurement carries the CPU, in cores, of the worker, the broker, Redis and this process (the
load generator; the raw consumer and the model alone run in it too).

:func:`run_pipeline` is one run of the older shape (K workers on P partitions, one drain, then
the raw consume), which the scaling section uses.
"""

from __future__ import annotations

import contextlib
import os
import pstats
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream_ae.core.records import encode_event, parse_ts
from stream_ae_dev.bench.report import (
    NOISY_SPREAD,
    BenchResult,
    Figure,
    describe,
    noise_flag,
    spread,
)
from stream_ae_dev.bench.workload import (
    SPIKE_SIGMAS,
    delete_prefix,
    load_states,
    sine_at,
)
from stream_ae_dev.worker_probe import http_get, wait_ready

SECTION = "e2e"
SCALING_SECTION = "scaling"
# The targets of issue 13.
STREAMS_RATIO = 0.8  # e2e with the most streams >= this x with the fewest, caches warm
RAW_CONSUME_RATIO = 0.8  # e2e >= this x the raw consume rate, cheap model, kafka-python client
CONFLUENT_RAW_RATIO = 0.6  # e2e >= this x the raw confluent consume, cheap model, confluent
CONFLUENT_OVER_KAFKA_PYTHON = 3.0  # confluent e2e >= this x kafka-python e2e, same run
MODEL_ALONE_RATIO = 0.9  # e2e >= this x the model alone, when the model is the bottleneck
P99_LATENCY_MS = 100.0  # event-to-alert p99 at half load, both models
# A ratio whose spread is over 25% after the rounds asked for is measured again: up to this many
# more rounds (the median then over them all), and reported as noise if it stays that wide.
EXTRA_ROUNDS = 2
MIN_RAW_S = 1.0  # a raw consume reads its messages again until it has run this long
READY_TIMEOUT_S = 240.0
STALL_TIMEOUT_S = 90.0
METRICS_POLL_S = 0.1
SETTLE_S = 1.0  # after the last worker is ready: the group's final assignment is delivered
MAX_PAUSE_S = 2.5  # longest SIGSTOP while producing: well under the 6 s session timeout
BREATHE_S = 0.4  # resumed for this long between pauses: heartbeats go out
TS_BASE_MS = 1_700_000_000_000


@dataclass(frozen=True)
class PipelineRun:
    """One end-to-end configuration."""

    label: str
    model_dir: Path
    partitions: int = 1
    workers: int = 1
    streams: int = 1_000
    events: int = 20_000
    latency_s: float = 0.0  # seconds of each latency phase; 0: none
    latency_loads: tuple[float, ...] = (0.5,)  # each phase's rate, as a fraction of the max
    spike_fraction: float = 0.002  # of backlog events: keeps the alert path exercised
    latency_spike_fraction: float = 0.05  # of latency-phase events: the latency samples
    buckets: tuple[int, ...] | None = None  # the model's batch buckets; None: the default

    @property
    def window(self) -> int:
        """The model's window length (the held states must match it)."""
        spec = orjson.loads((self.model_dir / "spec.json").read_bytes())
        return int(spec["window"])


# --- workers ---------------------------------------------------------------------------------


class WorkerProcess:
    """A ``stream-ae worker`` child process and its ``/metrics`` and ``/readyz`` endpoints."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path, profile: Path | None):
        self.port = port
        self.log_path = log_path
        self.profile = profile
        command = [sys.executable]
        if profile is not None:
            command += ["-m", "cProfile", "-o", str(profile)]
        command += ["-m", "stream_ae", "worker"]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=log_path.parent
        )

    def _get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.port, path)

    def metrics(self) -> dict[str, float]:
        status, body = self._get("/metrics")
        return parse_metrics(body.decode()) if status == 200 else {}

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker exited with {self.process.returncode}:\n{tail}")

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (the worker finishes its batch, commits and exits; cProfile then writes its
        file), SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.resume()  # a paused process would not see the SIGTERM until resumed
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc (NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition as ``{'name{labels}': value}`` (comments skipped).

    >>> parse_metrics('# HELP x\\nstream_ae_events_total{outcome="applied"} 12.0\\n')
    {'stream_ae_events_total{outcome="applied"}': 12.0}
    """
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def _sum(metrics: Sequence[dict[str, float]], prefix: str) -> float:
    return sum(v for m in metrics for k, v in m.items() if k.startswith(prefix))


@dataclass
class Counters:
    """The workers' counters summed, at one instant."""

    at: float
    events: float
    windows: float
    batches: float
    alerts: float
    model_s: float
    batch_s: float
    worker_cpu_s: float  # CPU seconds of the worker processes
    own_cpu_s: float  # CPU seconds of this process (the load generator)
    server_cpu_s: dict[str, float]  # CPU seconds of the broker and Redis, where known

    @classmethod
    def read(
        cls, workers: Sequence[WorkerProcess], servers: dict[str, int] | None = None
    ) -> Counters:
        metrics = [w.metrics() for w in workers]
        return cls(
            worker_cpu_s=sum(cpu_seconds(w.process.pid) for w in workers),
            own_cpu_s=time.process_time(),
            server_cpu_s={name: cpu_seconds(pid) for name, pid in (servers or {}).items()},
            at=time.perf_counter(),
            events=_sum(metrics, "stream_ae_events_total"),
            windows=_sum(metrics, "stream_ae_windows_scored_total"),
            batches=_sum(metrics, "stream_ae_batch_size_count"),
            alerts=_sum(metrics, "stream_ae_alerts_total"),
            model_s=_sum(metrics, "stream_ae_model_seconds_sum"),
            batch_s=_sum(metrics, "stream_ae_batch_seconds_sum"),
        )


def worker_env(
    *,
    bootstrap: str,
    redis_url: str,
    model_dir: Path,
    topic: str,
    alerts_topic: str,
    dlq_topic: str,
    group: str,
    prefix: str,
    port: int,
    buckets: Sequence[int] | None = None,
) -> dict[str, str]:
    """The environment of a benchmark worker: the caller's, minus any STREAM_AE_* of its own
    (the figures must not depend on the shell they were run from), plus the run's settings."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("STREAM_AE_")}
    env.update(
        {
            "STREAM_AE_BOOTSTRAP_SERVERS": bootstrap,
            "STREAM_AE_REDIS_URL": redis_url,
            "STREAM_AE_MODEL_PATH": str(model_dir),
            "STREAM_AE_INPUT_TOPICS": topic,
            "STREAM_AE_ALERTS_TOPIC": alerts_topic,
            "STREAM_AE_DLQ_TOPIC": dlq_topic,
            "STREAM_AE_GROUP_ID": group,
            "STREAM_AE_CLIENT_ID": group,
            "STREAM_AE_REDIS_KEY_PREFIX": prefix,
            "STREAM_AE_METRICS_PORT": str(port),
            "STREAM_AE_METRICS_HOST": "127.0.0.1",
            # Tansu: a group join takes about half the session timeout, an idle fetch is held
            # for fetch_max_wait_ms (see stream_ae_dev.devstack.BrokerProcess).
            "STREAM_AE_SESSION_TIMEOUT_MS": "6000",
            "STREAM_AE_FETCH_MAX_WAIT_MS": "20",
            "STREAM_AE_RETRY_BACKOFF_MAX_S": "2",
            "STREAM_AE_LOG_FORMAT": "text",
            "STREAM_AE_LOG_LEVEL": "WARNING",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
    )
    if buckets:
        env["STREAM_AE_BATCH_BUCKETS"] = ",".join(str(b) for b in buckets)
    return env


# --- producing -------------------------------------------------------------------------------


class EventSource:
    """Events for streams ``s0..s<S-1>`` in round-robin order, each stream's sine continuing
    from step 0 (its held window covers steps -W..-1); a fraction of them spikes."""

    def __init__(self, streams: int, seed: int = 0) -> None:
        self.streams = streams
        self.sent = 0
        self.rng = np.random.default_rng(seed)
        self.names = [f"s{i}" for i in range(streams)]
        self.keys = [name.encode() for name in self.names]

    def next_values(self, n: int, spike_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """(stream numbers, values) of the next ``n`` events."""
        index = self.sent + np.arange(n)
        stream, step = index % self.streams, index // self.streams
        values = sine_at(stream, step, 1, self.rng)[:, 0]
        spikes = self.rng.random(n) < spike_fraction
        values[spikes] += np.float32(SPIKE_SIGMAS * 0.71)
        self.sent += n
        return stream, values

    def payloads(self, n: int, spike_fraction: float) -> list[tuple[bytes, bytes]]:
        """The next ``n`` events as (key, JSON value), timestamps from a fixed base."""
        stream, values = self.next_values(n, spike_fraction)
        start = self.sent - n
        return [
            (self.keys[s], encode_event(self.names[s], TS_BASE_MS + start + k, float(v)))
            for k, (s, v) in enumerate(zip(stream.tolist(), values.tolist(), strict=True))
        ]


def make_producer(bootstrap: str, linger_ms: int) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=linger_ms, batch_size=256 * 1024, acks=1
    )


def produce_backlog(
    bootstrap: str,
    topic: str,
    payloads: list[tuple[bytes, bytes]],
    workers: Sequence[WorkerProcess] = (),
) -> float:
    """Send the payloads as fast as kafka-python can, with ``workers`` paused; returns
    events/s. Every :data:`MAX_PAUSE_S` the workers run for :data:`BREATHE_S`: a consumer
    frozen longer than its session timeout would be expelled from the group (a rebalance)."""
    producer = make_producer(bootstrap, linger_ms=20)
    for worker in workers:
        worker.pause()
    paused_at = started = time.perf_counter()
    try:
        for k, (key, value) in enumerate(payloads):
            producer.send(topic, key=key, value=value)
            if workers and k % 500 == 0 and time.perf_counter() - paused_at > MAX_PAUSE_S:
                for worker in workers:
                    worker.resume()
                time.sleep(BREATHE_S)
                for worker in workers:
                    worker.pause()
                paused_at = time.perf_counter()
        producer.flush()
        return len(payloads) / (time.perf_counter() - started)
    finally:
        for worker in workers:
            worker.resume()
        producer.close()


def warm_producer(bootstrap: str, warm_up_topic: str) -> Any:
    """The latency phases' load generator: librdkafka where confluent-kafka is installed, as
    ``stream-ae produce`` does (kafka-python's producer took 0.6-0.7 of a core at a few
    thousand events/s, from the 2 cores the worker and the broker need), else kafka-python;
    the project's own producer either way. Its broker connection is in place before it
    returns: a cold one spends its first milliseconds connecting, and events stamped
    meanwhile would count that."""
    from stream_ae.io.kafka import KafkaConnection
    from stream_ae.io.kafka.connection import KafkaClient

    client: KafkaClient = "confluent" if confluent_available() else "kafka-python"
    producer = KafkaConnection(bootstrap, client_id="bench-load", client=client).producer(
        linger_ms=1
    )
    producer.send(warm_up_topic, b"warm-up")
    producer.flush(30.0)
    return producer


def produce_paced(
    producer: Any,
    topic: str,
    source: EventSource,
    rate_per_s: float,
    seconds: float,
    spike_fraction: float,
) -> int:
    """Send events at ``rate_per_s`` for ``seconds``, each stamped with the wall clock at its
    send (epoch ms): the start of its latency. Returns how many were sent."""
    sent = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(elapsed * rate_per_s) - sent
        if due <= 0:
            time.sleep(0.001)
            continue
        stream, values = source.next_values(due, spike_fraction)
        for s, v in zip(stream.tolist(), values.tolist(), strict=True):
            now_ms = int(time.time() * 1000)
            producer.send(
                topic, key=source.keys[s], value=encode_event(source.names[s], now_ms, float(v))
            )
        sent += due
    producer.flush(60.0)
    return sent


class AlertCollector(threading.Thread):
    """Reads the alerts topic from its current end and records each alert's arrival time."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True, name="alert-collector")
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10
        )
        partition = TopicPartition(topic, 0)
        self.consumer.assign([partition])
        self.consumer.seek_to_end(partition)
        self.consumer.position(partition)  # resolve "end" now, before the phase starts
        self.arrivals: list[tuple[int, dict[str, Any]]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for messages in self.consumer.poll(timeout_ms=50).values():
                arrived = int(time.time() * 1000)
                self.arrivals += [(arrived, orjson.loads(m.value)) for m in messages]

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
        self.consumer.close()


def raw_consume_per_s(
    bootstrap: str,
    topic: str,
    partitions: int,
    events: int,
    check_crcs: bool = True,
    min_seconds: float = 0.0,
) -> float:
    """Events/s of one plain kafka-python consumer reading the first ``events`` messages of
    ``topic`` (all partitions): the ceiling of any Python consumer on this broker. Read again
    from the beginning until ``min_seconds`` have passed (a read of a few milliseconds would
    time the set-up). ``check_crcs=False`` shows what kafka-python's pure-Python CRC-32C check
    costs (it uses the C one only where the ``crc32c`` package is installed)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
        check_crcs=check_crcs,
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for tp in tps:
            consumer.position(tp)
        seen = passes = 0
        started = time.perf_counter()
        while passes == 0 or time.perf_counter() - started < min_seconds:
            if passes:
                consumer.seek_to_beginning(*tps)
            passes += 1
            while seen < passes * events:
                for messages in consumer.poll(timeout_ms=200, max_records=2_000).values():
                    seen += len(messages)
        return seen / (time.perf_counter() - started)
    finally:
        consumer.close()


def raw_confluent_consume_per_s(
    bootstrap: str, topic: str, events: int, min_seconds: float = 0.0
) -> float:
    """Events/s of one plain confluent-kafka (librdkafka) consumer reading the first
    ``events`` messages of ``topic`` (one partition), again from the beginning until
    ``min_seconds`` have passed: the ceiling of the confluent client on this broker.
    librdkafka does not check CRCs by default (``check.crcs``), like the worker's consumer."""
    import confluent_kafka

    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-raw-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 20,
        }
    )
    try:
        consumer.list_topics(topic, timeout=30)  # connected, metadata known: not timed
        seen = passes = 0
        started = time.perf_counter()
        while passes == 0 or time.perf_counter() - started < min_seconds:
            passes += 1
            consumer.assign(
                [confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)]
            )
            read = 0
            while read < events:  # this pass's messages, not a prefetched rest of the last
                read += len(consumer.consume(num_messages=2_000, timeout=0.2))
            seen += read
            consumer.unassign()
        return seen / (time.perf_counter() - started)
    finally:
        consumer.close()


def make_scorer(model_dir: Path, buckets: Sequence[int] | None = None) -> Any:
    """A :class:`Scorer` on ``model_dir`` with the workers' buckets (by default the settings'
    default, not this shell's environment: what a worker runs with out of the box)."""
    from stream_ae.model.artifacts import load_artifact
    from stream_ae.model.inference import Scorer
    from stream_ae.settings import Settings

    return Scorer(load_artifact(model_dir), buckets or Settings.model_construct().batch_buckets)


def scorer_windows_per_s(scorer: Any, batch: int, windows: int) -> float:
    """Windows/s of ``scorer.score`` alone on ``windows`` windows in batches of ``batch``."""
    from stream_ae_dev.bench.workload import sine_values

    spec = scorer.artifact.spec
    batch = max(1, batch)
    data = np.resize(
        np.stack([sine_values(i, 0, spec.window, spec.features) for i in range(min(batch, 256))]),
        (batch, spec.window, spec.features),
    )
    names = [f"s{i}" for i in range(batch)]
    scorer.score(data, names)  # graph tracing at this bucket: not timed
    calls = max(1, min(windows // batch, 20))
    started = time.perf_counter()
    for _ in range(calls):
        scorer.score(data, names)
    return calls * batch / (time.perf_counter() - started)


def model_alone_windows_per_s(
    model_dir: Path, batch: int, windows: int, buckets: Sequence[int] | None = None
) -> float:
    """Windows/s of :meth:`Scorer.score` alone on ``windows`` windows in batches of ``batch``
    (the workers' mean), with the workers' buckets (by default the settings' default)."""
    return scorer_windows_per_s(make_scorer(model_dir, buckets), batch, windows)


# --- one run ---------------------------------------------------------------------------------


def run_pipeline(
    run: PipelineRun,
    *,
    bootstrap: str,
    redis_url: str,
    workdir: Path,
    profile: bool = False,
    model_alone: bool = True,
    servers: dict[str, int] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run one configuration end to end (see the module docstring); returns its measurements.
    ``servers``: name -> pid of the broker and Redis, to report the CPU they use."""
    import redis

    from stream_ae_dev.devstack import create_topics, find_free_port

    tag = f"{run.label}-{uuid.uuid4().hex[:8]}"
    topic, alerts_topic, dlq_topic = f"bench.{tag}.in", f"bench.{tag}.alerts", f"bench.{tag}.dlq"
    prefix = f"bench-{tag}"
    run_dir = workdir / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    create_topics(bootstrap, {topic: run.partitions, alerts_topic: 1, dlq_topic: 1})
    client = redis.Redis.from_url(redis_url)
    load_states(client, prefix, run.streams, run.window, 1)
    source = EventSource(run.streams)
    backlog = source.payloads(run.events, run.spike_fraction)
    out: dict[str, Any] = {"run": {**asdict(run), "model_dir": str(run.model_dir)}, "tag": tag}

    workers: list[WorkerProcess] = []
    try:
        for k in range(run.workers):
            port = find_free_port()
            env = worker_env(
                bootstrap=bootstrap,
                redis_url=redis_url,
                model_dir=run.model_dir,
                topic=topic,
                alerts_topic=alerts_topic,
                dlq_topic=dlq_topic,
                group=f"bench-{tag}",
                prefix=prefix,
                port=port,
                buckets=run.buckets,
            )
            prof = run_dir / f"worker-{k}.prof" if profile and k == 0 else None
            workers.append(WorkerProcess(env, port, run_dir / f"worker-{k}.log", prof))
        progress(f"{run.label}: starting {run.workers} worker(s)")
        out["ready_after_s"] = _wait_ready(workers)
        time.sleep(SETTLE_S)
        before = Counters.read(workers, servers)
        progress(f"{run.label}: producing {run.events} events with the worker(s) paused")
        out["produce_per_s"] = produce_backlog(bootstrap, topic, backlog, workers)
        out.update(_measure_drain(workers, before, run.events, servers))
        progress(f"{run.label}: {out['e2e_events_per_s']:.0f} events/s end to end")
        if run.latency_s > 0:
            out["latency_by_load"] = {}
            for load in sorted(run.latency_loads):
                lat = _measure_latency(
                    run,
                    workers,
                    source,
                    bootstrap,
                    topic,
                    alerts_topic,
                    dlq_topic,
                    out["e2e_events_per_s"] * load,
                    servers,
                )
                out["latency_by_load"][f"{load:g}"] = lat
                progress(
                    f"{run.label}: latency at {load:.0%} load ({lat['rate_per_s']:.0f} events/s): "
                    f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms "
                    f"({lat['alerts']} alerts)"
                )
            half = out["latency_by_load"].get("0.5")
            if half is not None:
                out["latency"] = half
    finally:
        for worker in workers:
            worker.stop()
    if profile and workers and workers[0].profile is not None and workers[0].profile.exists():
        out["profile"] = top_functions(workers[0].profile)
        out["profile_file"] = str(workers[0].profile)
    out["raw_consume_per_s"] = raw_consume_per_s(bootstrap, topic, run.partitions, run.events)
    if model_alone:
        out["raw_consume_no_crc_per_s"] = raw_consume_per_s(
            bootstrap, topic, run.partitions, run.events, check_crcs=False
        )
        batch = round(out["windows_per_batch"])
        out["model_alone_windows_per_s"] = model_alone_windows_per_s(
            run.model_dir, batch, int(out["windows_measured"]), run.buckets
        )
    delete_prefix(client, prefix)
    client.close()
    return out


def _server_cores(first: Counters, last: Counters) -> dict[str, float]:
    """``<name>_cores``: the CPU each server used between two readings, in cores."""
    span = last.at - first.at
    return {
        f"{name}_cores": (last.server_cpu_s[name] - first.server_cpu_s[name]) / span
        for name in first.server_cpu_s
        if span > 0
    }


def _wait_ready(workers: Sequence[WorkerProcess]) -> float:
    """Seconds until every worker has its partitions (its ``/readyz`` answers 200)."""
    started = time.perf_counter()
    for worker in workers:
        remaining_s = READY_TIMEOUT_S - (time.perf_counter() - started)
        wait_ready(worker.port, worker.process, timeout_s=remaining_s, log_path=worker.log_path)
    return time.perf_counter() - started


def _measure_drain(
    workers: Sequence[WorkerProcess],
    before: Counters,
    events: int,
    servers: dict[str, int] | None = None,
) -> dict[str, Any]:
    """From now (the workers just resumed) until they have consumed ``events`` more than
    ``before``: the end-to-end rate and what the workers' time went to."""
    first = Counters.read(workers, servers)
    last, last_progress = first, time.perf_counter()
    goal = before.events + events
    while last.events < goal:
        for worker in workers:
            worker.check_alive()
        time.sleep(METRICS_POLL_S)
        current = Counters.read(workers, servers)
        if current.events > last.events:
            last_progress = time.perf_counter()
        elif time.perf_counter() - last_progress > STALL_TIMEOUT_S:
            raise RuntimeError(
                f"no progress for {STALL_TIMEOUT_S:.0f} s at {current.events - before.events:.0f}"
                f" of {events} events"
            )
        last = current
    span = last.at - first.at
    counted = last.events - first.events
    worker_seconds = span * len(workers)
    windows = last.windows - first.windows
    nan = float("nan")
    return {
        "consumed_before_measuring": first.events - before.events,
        "events_measured": counted,
        "seconds_measured": span,
        "e2e_events_per_s": counted / span if span > 0 else nan,
        "windows_measured": windows,
        "e2e_windows_per_s": windows / span if span > 0 else nan,
        "windows_per_batch": windows / max(last.batches - first.batches, 1),
        "batches_measured": last.batches - first.batches,
        "alerts": last.alerts - before.alerts,
        "model_share": (last.model_s - first.model_s) / worker_seconds if span > 0 else nan,
        "processing_share": (last.batch_s - first.batch_s) / worker_seconds if span > 0 else nan,
        "measured_fraction": counted / events,
        "worker_cores": (last.worker_cpu_s - first.worker_cpu_s) / span if span > 0 else nan,
        # This process meanwhile: the backlog is already written, so only the metrics reads.
        "generator_cores": (last.own_cpu_s - first.own_cpu_s) / span if span > 0 else nan,
        **_server_cores(first, last),
    }


def _measure_latency(
    run: PipelineRun,
    workers: Sequence[WorkerProcess],
    source: EventSource,
    bootstrap: str,
    topic: str,
    alerts_topic: str,
    dlq_topic: str,
    rate_per_s: float,
    servers: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Event-to-alert latency with events produced at ``rate_per_s``, the workers caught up."""
    rate = max(rate_per_s, 1.0)
    producer = warm_producer(bootstrap, warm_up_topic=dlq_topic)
    collector = AlertCollector(bootstrap, alerts_topic)
    collector.start()
    before = Counters.read(workers, servers)
    phase_start_ms = int(time.time() * 1000)
    try:
        sent = produce_paced(
            producer, topic, source, rate, run.latency_s, run.latency_spike_fraction
        )
    finally:
        producer.close()
    during = Counters.read(workers, servers)
    batches = max(during.batches - before.batches, 1)
    worker_state = {
        # How the workers ran under this load: many small batches keep latency low; a queue
        # that grew (behind_at_end) means they could not keep up at this rate.
        "batches": during.batches - before.batches,
        "events_per_batch": (during.events - before.events) / batches,
        "batch_ms": 1000 * (during.batch_s - before.batch_s) / batches,
        "model_ms_per_batch": 1000 * (during.model_s - before.model_s) / batches,
        "behind_at_end": sent - (during.events - before.events),
        # CPU in use meanwhile, in cores: the workers' and the load generator's (this process:
        # the producer and the alert reader) - on a small machine they compete.
        "worker_cores": (during.worker_cpu_s - before.worker_cpu_s) / (during.at - before.at),
        "generator_cores": (during.own_cpu_s - before.own_cpu_s) / (during.at - before.at),
        **_server_cores(before, during),
    }
    deadline = time.perf_counter() + max(30.0, run.latency_s * 3)
    while Counters.read(workers).events < before.events + sent:
        if time.perf_counter() > deadline:
            break
        time.sleep(METRICS_POLL_S)
    time.sleep(1.0)  # the alerts of the last batch are in flight
    collector.stop()
    total, in_worker = [], []
    for arrived_ms, alert in collector.arrivals:
        end_ms = parse_ts(alert["window"]["end_ts"])
        if end_ms < phase_start_ms:
            continue  # an event of the backlog, stamped with the fixed base time
        total.append(arrived_ms - end_ms)
        in_worker.append(parse_ts(alert["emitted_at"]) - end_ms)
    if not total:
        nan = float("nan")
        return {
            "rate_per_s": rate,
            "sent": sent,
            "alerts": 0,
            "p50_ms": nan,
            "p99_ms": nan,
            **worker_state,
        }
    lat, work = np.asarray(total, dtype=float), np.asarray(in_worker, dtype=float)
    return {
        "rate_per_s": rate,
        "sent": sent,
        "alerts": len(lat),
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "event_to_emit_p50_ms": float(np.percentile(work, 50)),
        "event_to_emit_p99_ms": float(np.percentile(work, 99)),
        **worker_state,
    }


def top_functions(profile: Path, limit: int = 30) -> str:
    """The poll-batch part of a worker's cProfile: what ``Worker.run_batch`` spends its time
    in, then the ``limit`` functions of our code and its I/O libraries with the most own time
    (start-up - TensorFlow's import, the model's load - is left out by that filter)."""
    buffer = StringIO()
    stats = pstats.Stats(str(profile), stream=buffer)
    stats.strip_dirs().sort_stats("cumulative").print_callees(r"\(run_batch\)")
    stats.sort_stats("tottime").print_stats(
        r"worker|processor|windowing|records|window_store|inference|scoring|alerting|kafka|"
        r"redis|numpy|orjson|connection|fetcher|TFE_Py_Execute",
        limit,
    )
    return buffer.getvalue()


# --- side by side: workers started once, measured interleaved -------------------------------


@dataclass
class Side:
    """One worker of a side-by-side comparison, with its own topics, group and Redis prefix
    (all named after ``run.label``) and the event source that continues its held windows."""

    run: PipelineRun
    source: EventSource
    worker: WorkerProcess | None = None

    @property
    def topic(self) -> str:
        return f"bench.{self.run.label}.in"

    @property
    def alerts_topic(self) -> str:
        return f"bench.{self.run.label}.alerts"

    @property
    def dlq_topic(self) -> str:
        return f"bench.{self.run.label}.dlq"

    @property
    def prefix(self) -> str:
        return f"bench-{self.run.label}"

    def started(self) -> WorkerProcess:
        """Its worker process (started by :func:`start_worker`)."""
        if self.worker is None:
            raise RuntimeError(f"the worker of {self.run.label} is not started")
        return self.worker


def open_side(run: PipelineRun, *, bootstrap: str, client: Any) -> Side:
    """Create ``run``'s topics and hold a full window for each of its streams in Redis."""
    from stream_ae_dev.devstack import create_topics

    side = Side(run, EventSource(run.streams, seed=0))
    create_topics(bootstrap, {side.topic: run.partitions, side.alerts_topic: 1, side.dlq_topic: 1})
    load_states(client, side.prefix, run.streams, run.window, 1)
    return side


def start_worker(
    side: Side,
    *,
    bootstrap: str,
    redis_url: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    profile: bool = False,
) -> WorkerProcess:
    """Start ``side``'s ``stream-ae worker`` (``env``: settings on top of the bench's own);
    the caller waits for it with :func:`wait_all_ready`."""
    from stream_ae_dev.devstack import find_free_port

    port = find_free_port()
    worker_settings = worker_env(
        bootstrap=bootstrap,
        redis_url=redis_url,
        model_dir=side.run.model_dir,
        topic=side.topic,
        alerts_topic=side.alerts_topic,
        dlq_topic=side.dlq_topic,
        group=f"bench-{side.run.label}",
        prefix=side.prefix,
        port=port,
        buckets=side.run.buckets,
    )
    worker_settings.update(env or {})
    run_dir = workdir / side.run.label
    run_dir.mkdir(parents=True, exist_ok=True)
    prof = run_dir / "worker.prof" if profile else None
    side.worker = WorkerProcess(worker_settings, port, run_dir / "worker.log", prof)
    return side.worker


def wait_all_ready(sides: Sequence[Side]) -> float:
    """Seconds until every side's worker has its partitions, plus the settling pause."""
    waited = _wait_ready([side.started() for side in sides])
    time.sleep(SETTLE_S)
    return waited + SETTLE_S


def drain(
    side: Side,
    bootstrap: str,
    payloads: list[tuple[bytes, bytes]],
    servers: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write ``payloads`` to ``side``'s topic with its worker paused, then measure its drain."""
    worker = side.started()
    before = Counters.read([worker], servers)
    produce_backlog(bootstrap, side.topic, payloads, [worker])
    return _measure_drain([worker], before, len(payloads), servers)


def drain_round(
    k: int,
    sides: dict[str, Side],
    bootstrap: str,
    events: int,
    servers: dict[str, int] | None,
    progress: Callable[[str], None],
    what: str,
) -> dict[str, dict[str, Any]]:
    """Round ``k`` of interleaved drains: each side's worker drains ``events`` new events of
    its source, in :func:`alternate` order; per side its :func:`drain` measurement."""
    measured: dict[str, dict[str, Any]] = {}
    for name in alternate(k, list(sides)):
        side = sides[name]
        payloads = side.source.payloads(events, side.run.spike_fraction)
        measured[name] = drain(side, bootstrap, payloads, servers)
        progress(
            f"{what}, round {k + 1}, {name}: {measured[name]['e2e_events_per_s']:,.0f} events/s"
        )
    return measured


def timed_reference(
    measure: Callable[[], float], servers: dict[str, int] | None = None
) -> dict[str, Any]:
    """Run a reference measured in this process (a raw consumer, the model alone): its rate,
    and the CPU this process and the servers used meanwhile, in cores."""
    own, at = time.process_time(), time.perf_counter()
    server_s = {name: cpu_seconds(pid) for name, pid in (servers or {}).items()}
    rate = measure()
    span = time.perf_counter() - at
    return {
        "per_s": rate,
        "seconds": span,
        "generator_cores": (time.process_time() - own) / span,
        **{
            f"{name}_cores": (cpu_seconds(pid) - server_s[name]) / span
            for name, pid in (servers or {}).items()
        },
    }


def alternate(k: int, items: Sequence[Any]) -> list[Any]:
    """Round ``k``'s order: ``items`` as given in even rounds, reversed in odd ones, so that
    each side of every pair goes first as often as the other (A B, B A, A B ...).

    >>> alternate(0, "AB"), alternate(1, "AB")
    (['A', 'B'], ['B', 'A'])
    """
    return list(items) if k % 2 == 0 else list(items)[::-1]


def confluent_available() -> bool:
    """Whether confluent-kafka can be imported (the ``fast`` extra)."""
    from stream_ae.io.kafka import confluent_installed

    return confluent_installed()


# --- the benchmarks --------------------------------------------------------------------------


def run_e2e_bench(
    *,
    bootstrap: str,
    redis_url: str,
    cheap_model_dir: Path,
    heavy_model_dir: Path,
    workdir: Path,
    cheap_events: int = 40_000,
    heavy_events: int = 6_000,
    streams: int = 1_000,
    repeats: int = 3,
    latency_s: float = 10.0,
    latency_loads: Sequence[float] = (0.25, 0.5),
    profile: bool = False,
    buckets: Sequence[int] | None = None,
    servers: dict[str, int] | None = None,
    confluent: bool | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """The pairs of the module docstring, each measured ``repeats`` times interleaved, then
    latency phases at ``latency_loads`` of each model's median drain rate (the target is set at
    half load). ``confluent``: run the confluent pair (default: where confluent-kafka is
    installed)."""
    import redis

    result = BenchResult(SECTION)
    started = time.perf_counter()
    with_confluent = confluent_available() if confluent is None else confluent
    bucket_sizes = tuple(buckets) if buckets else None
    client = redis.Redis.from_url(redis_url)
    common: dict[str, Any] = {
        "bootstrap": bootstrap,
        "redis_url": redis_url,
        "client": client,
        "workdir": workdir,
        "servers": servers,
        "progress": progress,
    }
    try:

        def run(label: str, model_dir: Path, events: int) -> PipelineRun:
            tag = f"{label}-{uuid.uuid4().hex[:8]}"
            return PipelineRun(
                tag,
                model_dir,
                streams=streams,
                events=events,
                latency_s=latency_s,
                latency_loads=tuple(latency_loads),
                buckets=bucket_sizes,
            )

        cheap = _compare_cheap(
            run("cheap", cheap_model_dir, cheap_events),
            run("cheap-confluent", cheap_model_dir, cheap_events) if with_confluent else None,
            repeats=repeats,
            profile=profile,
            **common,
        )
        heavy = _compare_heavy(
            run("h64", heavy_model_dir, heavy_events), repeats=repeats, profile=profile, **common
        )
    finally:
        client.close()
    result.details = {"cheap": cheap, "h64": heavy}
    if not with_confluent:
        result.details["confluent"] = {"skipped": "confluent-kafka is not installed"}
    result.figures = _e2e_figures(cheap, heavy, with_confluent)
    result.seconds = time.perf_counter() - started
    return result


def _compare_cheap(
    kafka_python: PipelineRun,
    confluent: PipelineRun | None,
    *,
    bootstrap: str,
    redis_url: str,
    client: Any,
    workdir: Path,
    repeats: int,
    profile: bool,
    servers: dict[str, int] | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The cheap model: each client's e2e drain and its raw consume, interleaved ``repeats``
    times (one round: kafka-python e2e, raw, confluent e2e, raw; the next round reversed),
    then the kafka-python worker's latency phases."""
    from stream_ae_dev.devstack import create_topics

    clients = {"kafka-python": kafka_python}
    if confluent is not None:
        clients["confluent"] = confluent
    sides = {
        name: open_side(run, bootstrap=bootstrap, client=client) for name, run in clients.items()
    }
    events = kafka_python.events
    out: dict[str, Any] = {
        "run": {**asdict(kafka_python), "model_dir": str(kafka_python.model_dir)},
        "clients": list(clients),
        "rounds": [],
    }
    try:
        for name, side in sides.items():
            start_worker(
                side,
                bootstrap=bootstrap,
                redis_url=redis_url,
                workdir=workdir,
                env={"STREAM_AE_KAFKA_CLIENT": name},
                profile=profile and name == "kafka-python",
            )
        progress(f"e2e cheap: starting {len(sides)} worker(s): {', '.join(sides)}")
        out["ready_after_s"] = wait_all_ready(list(sides.values()))
        steps = [(name, kind) for name in sides for kind in ("e2e", "raw")]
        k = 0
        while k < repeats or (k < repeats + EXTRA_ROUNDS and _noisy(_cheap_ratios(out["rounds"]))):
            measured: dict[str, dict[str, Any]] = {name: {} for name in sides}
            payloads = {
                name: side.source.payloads(events, side.run.spike_fraction)
                for name, side in sides.items()
            }
            raw_topics = {name: f"bench.{side.run.label}.raw{k}" for name, side in sides.items()}
            create_topics(bootstrap, dict.fromkeys(raw_topics.values(), 1))
            for name, topic in raw_topics.items():
                produce_backlog(bootstrap, topic, payloads[name])
            for name, kind in alternate(k, steps):
                if kind == "e2e":
                    got = drain(sides[name], bootstrap, payloads[name], servers)
                    rate = got["e2e_events_per_s"]
                else:
                    topic = raw_topics[name]
                    consume = (
                        partial(
                            raw_consume_per_s, bootstrap, topic, 1, events, min_seconds=MIN_RAW_S
                        )
                        if name == "kafka-python"
                        else partial(
                            raw_confluent_consume_per_s, bootstrap, topic, events, MIN_RAW_S
                        )
                    )
                    got = timed_reference(consume, servers)
                    rate = got["per_s"]
                measured[name][kind] = got
                progress(f"e2e cheap, round {k + 1}: {name} {kind} {rate:,.0f} events/s")
            out["rounds"].append(measured)
            k += 1
        rates = _round_rates(out["rounds"], "kafka-python")
        # What the scaling section reads from its baseline run: the medians.
        out["e2e_events_per_s"] = median(rates["e2e"])
        out["raw_consume_per_s"] = median(rates["raw"])
        _record_latency(out, sides["kafka-python"], bootstrap, servers, progress)
    finally:
        close_sides(sides.values(), client)
    _attach_profile(out, sides["kafka-python"])
    return out


def _compare_heavy(
    heavy: PipelineRun,
    *,
    bootstrap: str,
    redis_url: str,
    client: Any,
    workdir: Path,
    repeats: int,
    profile: bool,
    servers: dict[str, int] | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The H=64 model: its e2e drain (windows/s) and the Scorer alone on batches of the size
    the worker saw in its last drain, interleaved ``repeats`` times; then its latency phases."""
    side = open_side(heavy, bootstrap=bootstrap, client=client)
    out: dict[str, Any] = {
        "run": {**asdict(heavy), "model_dir": str(heavy.model_dir)},
        "rounds": [],
    }
    scorer = make_scorer(heavy.model_dir, heavy.buckets)
    try:
        start_worker(
            side, bootstrap=bootstrap, redis_url=redis_url, workdir=workdir, profile=profile
        )
        progress("e2e H=64: starting a worker")
        out["ready_after_s"] = wait_all_ready([side])
        batch = 0
        k = 0
        while k < repeats or (k < repeats + EXTRA_ROUNDS and _noisy(_heavy_ratios(out["rounds"]))):
            measured: dict[str, Any] = {}
            payloads = side.source.payloads(heavy.events, heavy.spike_fraction)
            for kind in alternate(k, ("e2e", "model")):
                if kind == "e2e":
                    got = drain(side, bootstrap, payloads, servers)
                    batch = round(got["windows_per_batch"])
                    rate = got["e2e_windows_per_s"]
                else:
                    # Before the first drain (never: round 0 starts with it) the poll batch size.
                    size = batch or heavy.events
                    got = timed_reference(
                        partial(scorer_windows_per_s, scorer, size, heavy.events), servers
                    )
                    got["batch"] = size
                    rate = got["per_s"]
                measured[kind] = got
                progress(f"e2e H=64, round {k + 1}: {kind} {rate:,.0f} windows/s")
            out["rounds"].append(measured)
            k += 1
        out["e2e_events_per_s"] = median(r["e2e"]["e2e_events_per_s"] for r in out["rounds"])
        _record_latency(out, side, bootstrap, servers, progress)
    finally:
        close_sides([side], client)
    _attach_profile(out, side)
    return out


def _record_latency(
    out: dict[str, Any],
    side: Side,
    bootstrap: str,
    servers: dict[str, int] | None,
    progress: Callable[[str], None],
) -> None:
    """``side``'s latency phases at fractions of ``out``'s median drain rate, into ``out``
    (``latency``: the half-load phase, the one the target is set at)."""
    out["latency_by_load"] = _latency_phases(
        side, out["e2e_events_per_s"], bootstrap, servers, progress
    )
    if "0.5" in out["latency_by_load"]:
        out["latency"] = out["latency_by_load"]["0.5"]


def close_sides(sides: Iterable[Side], client: Any) -> None:
    """Stop each side's worker (SIGTERM: it commits) and delete its Redis prefix."""
    for side in sides:
        if side.worker is not None:
            side.worker.stop()
        delete_prefix(client, side.prefix)


def _latency_phases(
    side: Side,
    drain_rate: float,
    bootstrap: str,
    servers: dict[str, int] | None,
    progress: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """One latency phase per load of ``side.run`` (a fraction of ``drain_rate``), lowest first."""
    phases: dict[str, dict[str, Any]] = {}
    if side.run.latency_s <= 0:
        return phases
    for load in sorted(side.run.latency_loads):
        lat = _measure_latency(
            side.run,
            [side.started()],
            side.source,
            bootstrap,
            side.topic,
            side.alerts_topic,
            side.dlq_topic,
            drain_rate * load,
            servers,
        )
        phases[f"{load:g}"] = lat
        progress(
            f"{side.run.label}: latency at {load:.0%} load ({lat['rate_per_s']:.0f} events/s): "
            f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms ({lat['alerts']} alerts)"
        )
    return phases


def _attach_profile(out: dict[str, Any], side: Side) -> None:
    worker = side.worker
    if worker is not None and worker.profile is not None and worker.profile.exists():
        out["profile"] = top_functions(worker.profile)
        out["profile_file"] = str(worker.profile)


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def _round_rates(rounds: Sequence[dict[str, Any]], client: str) -> dict[str, list[float]]:
    """A client's e2e and raw consume rates (events/s), one per round."""
    return {
        "e2e": [r[client]["e2e"]["e2e_events_per_s"] for r in rounds],
        "raw": [r[client]["raw"]["per_s"] for r in rounds],
    }


def _cheap_ratios(rounds: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """The cheap comparison's ratios, one per round: each client's e2e / its raw consume and,
    with both clients, confluent e2e / kafka-python e2e."""
    if not rounds:
        return {}
    rates = {client: _round_rates(rounds, client) for client in rounds[0]}
    ratios = {
        f"{client} / raw": [e / r for e, r in zip(v["e2e"], v["raw"], strict=True)]
        for client, v in rates.items()
    }
    if "confluent" in rates:
        ratios["confluent / kafka-python"] = [
            c / k
            for c, k in zip(rates["confluent"]["e2e"], rates["kafka-python"]["e2e"], strict=True)
        ]
    return ratios


def _heavy_ratios(rounds: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """The H=64 comparison's ratio, e2e windows/s / the model alone, one per round."""
    return {
        "e2e / model alone": [r["e2e"]["e2e_windows_per_s"] / r["model"]["per_s"] for r in rounds]
    }


def _noisy(ratios: dict[str, list[float]]) -> bool:
    """Whether any of the ratios is spread over :data:`NOISY_SPREAD` (a reason to measure again)."""
    return any(values and spread(values) > NOISY_SPREAD for values in ratios.values())


def _cpu(measurements: Sequence[dict[str, Any]], *, generator: str = "load generator") -> str:
    """The median CPU of the parts a figure depends on, in cores, over its measurements."""
    parts = []
    for key, label in (
        ("worker_cores", "worker"),
        ("broker_cores", "broker"),
        ("generator_cores", generator),
    ):
        if measurements and all(key in m for m in measurements):
            parts.append(f"{label} {median(m[key] for m in measurements):.2f}")
    return f"CPU {', '.join(parts)} cores" if parts else "CPU not measured"


def _ratio_figure(
    name: str,
    ratios: Sequence[float],
    bound: float,
    note: str,
) -> Figure:
    """A ratio over interleaved pairs: the median, checked against ``bound``; the note gives
    its range and spread, and marks it as noise where the spread is over 25%."""
    return Figure.check(
        SECTION,
        name,
        median(ratios),
        "x",
        ">=",
        bound,
        note=f"{describe(ratios)} of pairs interleaved{noise_flag(ratios)}; {note}",
    )


def _e2e_figures(
    cheap: dict[str, Any], heavy: dict[str, Any], with_confluent: bool
) -> list[Figure]:
    rounds = cheap["rounds"]
    figures: list[Figure] = []
    kp = _round_rates(rounds, "kafka-python")
    ratios = _cheap_ratios(rounds)
    kp_e2e = [r["kafka-python"]["e2e"] for r in rounds]
    kp_raw = [r["kafka-python"]["raw"] for r in rounds]
    figures += [
        Figure.info(
            SECTION,
            "e2e, cheap model, kafka-python",
            median(kp["e2e"]),
            "events/s",
            note=f"{describe(kp['e2e'])}; {_cpu(kp_e2e)}; model "
            f"{median(m['model_share'] for m in kp_e2e):.0%} of the worker's wall time",
        ),
        Figure.info(
            SECTION,
            "raw kafka-python consume",
            median(kp["raw"]),
            "events/s",
            note=f"{describe(kp['raw'])}; {_cpu(kp_raw, generator='consumer')}",
        ),
        _ratio_figure(
            "e2e / raw kafka-python consume, cheap model",
            ratios["kafka-python / raw"],
            RAW_CONSUME_RATIO,
            note=f"e2e: {_cpu(kp_e2e)}; raw: {_cpu(kp_raw, generator='consumer')}"
            + ("" if with_confluent else "; confluent pair skipped: confluent-kafka not installed"),
        ),
    ]
    if with_confluent:
        cf = _round_rates(rounds, "confluent")
        cf_e2e = [r["confluent"]["e2e"] for r in rounds]
        cf_raw = [r["confluent"]["raw"] for r in rounds]
        figures += [
            Figure.info(
                SECTION,
                "e2e, cheap model, confluent",
                median(cf["e2e"]),
                "events/s",
                note=f"{describe(cf['e2e'])}; {_cpu(cf_e2e)}; model "
                f"{median(m['model_share'] for m in cf_e2e):.0%} of the worker's wall time",
            ),
            Figure.info(
                SECTION,
                "raw confluent consume",
                median(cf["raw"]),
                "events/s",
                note=f"{describe(cf['raw'])}; {_cpu(cf_raw, generator='consumer')}",
            ),
            _ratio_figure(
                "e2e / raw confluent consume, cheap model",
                ratios["confluent / raw"],
                CONFLUENT_RAW_RATIO,
                note=f"e2e: {_cpu(cf_e2e)}; raw: {_cpu(cf_raw, generator='consumer')}",
            ),
            _ratio_figure(
                "e2e confluent / e2e kafka-python, cheap model",
                ratios["confluent / kafka-python"],
                CONFLUENT_OVER_KAFKA_PYTHON,
                note=f"the e2e rates above, same rounds; confluent: {_cpu(cf_e2e)}; "
                f"kafka-python: {_cpu(kp_e2e)}",
            ),
        ]
    h_rounds = heavy["rounds"]
    h_e2e = [r["e2e"] for r in h_rounds]
    h_model = [r["model"] for r in h_rounds]
    e2e_windows = [m["e2e_windows_per_s"] for m in h_e2e]
    alone = [m["per_s"] for m in h_model]
    figures += [
        Figure.info(
            SECTION,
            "e2e, H=64 model",
            median(e2e_windows),
            "windows/s",
            note=f"{describe(e2e_windows)}; {_cpu(h_e2e)}; model "
            f"{median(m['model_share'] for m in h_e2e):.0%} of the worker's wall time",
        ),
        Figure.info(
            SECTION,
            "model alone, H=64 model",
            median(alone),
            "windows/s",
            note=f"{describe(alone)}; batches of {median(m['batch'] for m in h_model):.0f} "
            f"windows (the worker's); {_cpu(h_model, generator='scorer')}",
        ),
        _ratio_figure(
            "e2e / model alone, H=64 model",
            _heavy_ratios(h_rounds)["e2e / model alone"],
            MODEL_ALONE_RATIO,
            note=f"e2e: {_cpu(h_e2e)}; model alone: {_cpu(h_model, generator='scorer')}",
        ),
    ]
    for name, details in (("cheap", cheap), ("H=64", heavy)):
        for load, lat in details.get("latency_by_load", {}).items():
            share = f"{float(load):.0%} load"
            note = (
                f"{lat['alerts']} alerts at {lat['rate_per_s']:.0f} events/s ({share} of the "
                f"median drain rate); batches of {lat['events_per_batch']:.0f} events in "
                f"{lat['batch_ms']:.0f} ms; {lat['behind_at_end']:.0f} behind at the end; "
                f"{_cpu([lat])}"
            )
            figures.append(
                Figure.info(SECTION, f"event-to-alert p50, {share}, {name}", lat["p50_ms"], "ms")
            )
            p99_name = f"event-to-alert p99, {share}, {name}"
            figures.append(
                Figure.check(SECTION, p99_name, lat["p99_ms"], "ms", "<=", P99_LATENCY_MS, note)
                if float(load) == 0.5
                else Figure.info(SECTION, p99_name, lat["p99_ms"], "ms", note)
            )
    return figures


def run_scaling_bench(
    *,
    bootstrap: str,
    redis_url: str,
    model_dir: Path,
    workdir: Path,
    workers: Sequence[int] = (1, 2, 4),
    streams: Sequence[int] = (1_000, 10_000, 100_000),
    events: int = 40_000,
    repeats: int = 3,
    base_streams: int | None = None,
    baseline: dict[str, Any] | None = None,
    buckets: Sequence[int] | None = None,
    servers: dict[str, int] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """The e2e figure with K partitions and K worker processes (``base_streams`` streams,
    default ``streams[0]``), one run each; then each of ``streams`` on one worker, compared
    side by side (:func:`_compare_streams`). ``baseline``: a finished run with 1 worker and
    ``base_streams`` streams on the same model and event count (the cheap e2e run), reused
    instead of run again."""
    result = BenchResult(SCALING_SECTION)
    started = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    default_streams = base_streams or (streams[0] if streams else 1_000)
    bucket_sizes = tuple(buckets) if buckets else None
    for k in workers:
        key = f"workers={k} streams={default_streams}"
        if k == 1 and baseline is not None:
            runs[key] = baseline
            continue
        runs[key] = run_pipeline(
            PipelineRun(
                f"p{k}",
                model_dir,
                partitions=k,
                workers=k,
                streams=default_streams,
                events=events,
                buckets=bucket_sizes,
            ),
            bootstrap=bootstrap,
            redis_url=redis_url,
            workdir=workdir,
            model_alone=False,
            progress=progress,
        )
    if runs:
        base_key = f"workers=1 streams={default_streams}"
        if base_key not in runs:
            base_key = next(iter(runs))
        base_rate = runs[base_key]["e2e_events_per_s"]
        for key, run in runs.items():
            rate = run["e2e_events_per_s"]
            result.figures.append(
                Figure.info(
                    SCALING_SECTION,
                    f"e2e, {key.replace('=', ' ')}",
                    rate,
                    "events/s",
                    note=f"{rate / base_rate:.2f}x of {base_key.replace('=', ' ')}; "
                    f"{rate / run['raw_consume_per_s']:.2f}x raw consume",
                )
            )
    details: dict[str, Any] = dict(runs)
    if len(streams) >= 2:
        compared = _compare_streams(
            [
                PipelineRun(
                    f"s{s}-{uuid.uuid4().hex[:8]}",
                    model_dir,
                    streams=s,
                    events=events,
                    buckets=bucket_sizes,
                )
                for s in sorted(streams)
            ],
            bootstrap=bootstrap,
            redis_url=redis_url,
            workdir=workdir,
            repeats=repeats,
            servers=servers,
            progress=progress,
        )
        details["streams"] = compared
        result.figures += _streams_figures(compared)
    result.details = details
    result.seconds = time.perf_counter() - started
    return result


def _compare_streams(
    runs: Sequence[PipelineRun],
    *,
    bootstrap: str,
    redis_url: str,
    workdir: Path,
    repeats: int,
    servers: dict[str, int] | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """One worker per stream count (``runs``, fewest streams first), each started once with a
    full window held in Redis for every stream. First the largest drains ``events`` events with
    its cache cold: each stream's first touch loads its state from Redis, as after a restart.
    Then every worker drains one event per stream not yet touched, unmeasured, so that every
    state is in its cache, as in a worker that has run a while (the steady state the target is
    about). Then drains of ``events`` events, interleaved (the order reversed every other
    round), ``repeats`` times or up to :data:`EXTRA_ROUNDS` more while a ratio is noisy; per
    round each count's rate over the fewest streams' rate."""
    import redis

    client = redis.Redis.from_url(redis_url)
    sides = [open_side(run, bootstrap=bootstrap, client=client) for run in runs]
    events = runs[0].events
    names = [str(run.streams) for run in runs]
    out: dict[str, Any] = {"streams": [run.streams for run in runs], "events": events, "rounds": []}
    try:
        for side in sides:
            start_worker(side, bootstrap=bootstrap, redis_url=redis_url, workdir=workdir)
        progress(f"scaling: starting {len(sides)} workers for {', '.join(names)} streams")
        out["ready_after_s"] = wait_all_ready(sides)
        largest = sides[-1]
        out["cold"] = drain(
            largest, bootstrap, largest.source.payloads(events, largest.run.spike_fraction), servers
        )
        progress(
            f"scaling: {largest.run.streams} streams, cold cache: "
            f"{out['cold']['e2e_events_per_s']:,.0f} events/s"
        )
        for side in sides:
            untouched = side.run.streams - side.source.sent
            if untouched > 0:
                drain(side, bootstrap, side.source.payloads(untouched, side.run.spike_fraction))
        progress("scaling: every stream's state cached")

        def ratios() -> dict[str, list[float]]:
            return {
                name: [
                    r[name]["e2e_events_per_s"] / r[names[0]]["e2e_events_per_s"]
                    for r in out["rounds"]
                ]
                for name in names[1:]
            }

        by_name = dict(zip(names, sides, strict=True))
        k = 0
        while k < repeats or (k < repeats + EXTRA_ROUNDS and _noisy(ratios())):
            out["rounds"].append(
                drain_round(k, by_name, bootstrap, events, servers, progress, "scaling, streams")
            )
            k += 1
        out["ratios"] = ratios()
    finally:
        close_sides(sides, client)
        client.close()
    return out


def _streams_figures(compared: dict[str, Any]) -> list[Figure]:
    names = [str(s) for s in compared["streams"]]
    rounds = compared["rounds"]
    figures = []
    for name in names:
        rates = [r[name]["e2e_events_per_s"] for r in rounds]
        figures.append(
            Figure.info(
                SCALING_SECTION,
                f"e2e, workers 1 streams {name}, states cached",
                median(rates),
                "events/s",
                note=f"{describe(rates)}; "
                + _cpu([r[name] for r in rounds], generator="metrics reader"),
            )
        )
    for name, values in compared["ratios"].items():
        note = f"{describe(values)}{noise_flag(values)}; interleaved with {names[0]} streams"
        label = f"e2e {name} / {names[0]} streams, states cached"
        figures.append(
            Figure.check(SCALING_SECTION, label, median(values), "x", ">=", STREAMS_RATIO, note)
            if name == names[-1]
            else Figure.info(SCALING_SECTION, label, median(values), "x", note)
        )
    cold = compared["cold"]["e2e_events_per_s"]
    base = median([r[names[0]]["e2e_events_per_s"] for r in rounds])
    figures.append(
        Figure.info(
            SCALING_SECTION,
            f"e2e, workers 1 streams {names[-1]}, cold cache (after a restart)",
            cold,
            "events/s",
            note=f"{cold / base:.2f}x the median of {names[0]} streams cached; one drain, "
            "each stream's first touch loads its state from Redis",
        )
    )
    return figures
