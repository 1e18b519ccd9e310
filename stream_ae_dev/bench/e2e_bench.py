"""End to end: broker -> worker processes -> alerts, against the raw consumer and the model.

One run (:func:`run_pipeline`), on a broker and a Redis already started:

1. create the run's own topics (input with P partitions, alerts, dead letters) and hold a full
   window for each of its S streams in Redis, so every event completes a window from the start
   (a long-running worker's steady state, without first replaying W events per stream);
2. start K ``stream-ae worker`` processes on the empty topic and wait until every one has its
   partitions (with K = P, the group is then stable: no rebalance during the measurement);
3. pause the workers (SIGSTOP) while the backlog of N events is written, resuming them
   briefly every few seconds so their group sessions stay alive; then resume them;
4. throughput: the rate at which the workers' event counters (their ``/metrics``) grow from
   the resume until the whole backlog is consumed;
5. latency (optional): with the workers caught up, produce at half that rate, events stamped
   with the wall clock and a few of them spikes, and measure each alert's arrival on the alerts
   topic minus its window's last event time (alerts carry it as ``window.end_ts``);
6. stop the workers (SIGTERM: each finishes its batch and commits);
7. side by side on the same data: the raw consume rate of one kafka-python consumer over the
   same N messages, and the model alone (:meth:`Scorer.score`) on as many windows in batches of
   the size the workers saw.

Pausing the workers is what makes the figure a drain of a full backlog by a stable group:
without it, the first worker to start would consume while the others are still loading
TensorFlow, and a producer slower than the workers would set the pace.
"""

from __future__ import annotations

import contextlib
import os
import pstats
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream_ae.core.records import encode_event, parse_ts
from stream_ae_dev.bench.report import BenchResult, Figure
from stream_ae_dev.bench.workload import (
    SPIKE_SIGMAS,
    delete_prefix,
    load_states,
    sine_at,
)
from stream_ae_dev.worker_probe import http_get, wait_ready

SECTION = "e2e"
SCALING_SECTION = "scaling"
RAW_CONSUME_RATIO = 0.5  # e2e >= this x the raw consume rate, when the model is cheap
MODEL_ALONE_RATIO = 0.8  # e2e >= this x the model alone, when the model is the bottleneck
P99_LATENCY_MS = 200.0
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


def warm_producer(bootstrap: str, topic: str, warm_up_topic: str) -> Any:
    """A producer with its broker connection and ``topic``'s metadata in place: a cold one
    spends its first seconds connecting, and events stamped meanwhile would count that."""
    producer = make_producer(bootstrap, linger_ms=1)
    producer.partitions_for(topic)
    producer.send(warm_up_topic, value=b"warm-up").get(timeout=30)
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
    producer.flush()
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
    bootstrap: str, topic: str, partitions: int, events: int, check_crcs: bool = True
) -> float:
    """Events/s of one plain kafka-python consumer reading the first ``events`` messages of
    ``topic`` (all partitions): the ceiling of any Python consumer on this broker.
    ``check_crcs=False`` shows what kafka-python's pure-Python CRC-32C check costs (it uses
    the C one only where the ``crc32c`` package is installed)."""
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
        seen = 0
        started = time.perf_counter()
        while seen < events:
            for messages in consumer.poll(timeout_ms=200, max_records=2_000).values():
                seen += len(messages)
        return seen / (time.perf_counter() - started)
    finally:
        consumer.close()


def model_alone_windows_per_s(
    model_dir: Path, batch: int, windows: int, buckets: Sequence[int] | None = None
) -> float:
    """Windows/s of :meth:`Scorer.score` alone on ``windows`` windows in batches of ``batch``
    (the workers' mean), with the workers' buckets (by default the settings' default)."""
    from stream_ae.model.artifacts import load_artifact
    from stream_ae.model.inference import Scorer
    from stream_ae.settings import Settings
    from stream_ae_dev.bench.workload import sine_values

    artifact = load_artifact(model_dir)
    spec = artifact.spec
    # The defaults, not this shell's environment: what a worker runs with out of the box.
    scorer = Scorer(artifact, buckets or Settings.model_construct().batch_buckets)
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
    producer = warm_producer(bootstrap, topic, warm_up_topic=dlq_topic)
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
    latency_s: float = 10.0,
    latency_loads: Sequence[float] = (0.25, 0.5),
    profile: bool = False,
    buckets: Sequence[int] | None = None,
    servers: dict[str, int] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """Two runs with one worker on one partition: a cheap model (the pipeline is the limit:
    compared with the raw consume rate) and the real one (the model is the limit: compared with
    the model alone), each followed by latency phases at ``latency_loads`` of its own maximum
    (the target is set at half load)."""
    result = BenchResult(SECTION)
    started = time.perf_counter()
    common: dict[str, Any] = {
        "bootstrap": bootstrap,
        "redis_url": redis_url,
        "workdir": workdir,
        "profile": profile,
        "servers": servers,
        "progress": progress,
    }
    bucket_sizes = tuple(buckets) if buckets else None
    loads = tuple(latency_loads)
    cheap = run_pipeline(
        PipelineRun(
            "cheap",
            cheap_model_dir,
            streams=streams,
            events=cheap_events,
            latency_s=latency_s,
            latency_loads=loads,
            buckets=bucket_sizes,
        ),
        **common,
    )
    heavy = run_pipeline(
        PipelineRun(
            "h64",
            heavy_model_dir,
            streams=streams,
            events=heavy_events,
            latency_s=latency_s,
            latency_loads=loads,
            buckets=bucket_sizes,
        ),
        **common,
    )
    result.details = {"cheap": cheap, "h64": heavy}
    for name, run in (("cheap model", cheap), ("H=64 model", heavy)):
        result.figures += [
            Figure.info(SECTION, f"e2e, {name}", run["e2e_events_per_s"], "events/s"),
            Figure.info(
                SECTION,
                f"raw kafka-python consume, {name} run",
                run["raw_consume_per_s"],
                "events/s",
            ),
        ]
    result.figures.append(
        Figure.info(
            SECTION,
            "raw kafka-python consume without CRC check, cheap model run",
            cheap["raw_consume_no_crc_per_s"],
            "events/s",
            note="the pure-Python CRC-32C cost",
        )
    )
    result.figures += [
        Figure.check(
            SECTION,
            "e2e / raw consume, cheap model",
            cheap["e2e_events_per_s"] / cheap["raw_consume_per_s"],
            "x",
            ">=",
            RAW_CONSUME_RATIO,
            note=f"model {cheap['model_share']:.0%} of worker time",
        ),
        Figure.info(
            SECTION,
            "model alone, H=64 model",
            heavy["model_alone_windows_per_s"],
            "windows/s",
            note=f"batches of {heavy['windows_per_batch']:.0f} windows",
        ),
        Figure.check(
            SECTION,
            "e2e / model alone, H=64 model",
            heavy["e2e_windows_per_s"] / heavy["model_alone_windows_per_s"],
            "x",
            ">=",
            MODEL_ALONE_RATIO,
            note=f"model {heavy['model_share']:.0%} of worker time",
        ),
    ]
    for name, run in (("cheap", cheap), ("H=64", heavy)):
        for load, lat in run.get("latency_by_load", {}).items():
            share = f"{float(load):.0%} load"
            note = (
                f"{lat['alerts']} alerts at {lat['rate_per_s']:.0f} events/s; batches of "
                f"{lat['events_per_batch']:.0f} events in {lat['batch_ms']:.0f} ms; "
                f"CPU: worker {lat['worker_cores']:.2f}, load generator "
                f"{lat['generator_cores']:.2f}"
                + (f", broker {lat['broker_cores']:.2f}" if "broker_cores" in lat else "")
                + " cores"
            )
            result.figures.append(
                Figure.info(SECTION, f"event-to-alert p50, {share}, {name}", lat["p50_ms"], "ms")
            )
            p99_name = f"event-to-alert p99, {share}, {name}"
            result.figures.append(
                Figure.check(SECTION, p99_name, lat["p99_ms"], "ms", "<=", P99_LATENCY_MS, note)
                if float(load) == 0.5
                else Figure.info(SECTION, p99_name, lat["p99_ms"], "ms", note)
            )
    result.seconds = time.perf_counter() - started
    return result


def run_scaling_bench(
    *,
    bootstrap: str,
    redis_url: str,
    model_dir: Path,
    workdir: Path,
    workers: Sequence[int] = (1, 2, 4),
    streams: Sequence[int] = (1_000, 10_000, 100_000),
    events: int = 40_000,
    base_streams: int | None = None,
    baseline: dict[str, Any] | None = None,
    buckets: Sequence[int] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """The e2e figure with K partitions and K worker processes (``base_streams`` streams,
    default ``streams[0]``), and with each of ``streams`` streams on one worker. ``baseline``:
    a finished run with 1 worker and ``base_streams`` streams on the same model and event count
    (the cheap e2e run), reused instead of run again."""
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
    for s in streams:
        key = f"workers=1 streams={s}"
        if key in runs:
            continue
        runs[key] = run_pipeline(
            PipelineRun(f"s{s}", model_dir, streams=s, events=events, buckets=bucket_sizes),
            bootstrap=bootstrap,
            redis_url=redis_url,
            workdir=workdir,
            model_alone=False,
            progress=progress,
        )
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
    result.details = runs
    result.seconds = time.perf_counter() - started
    return result
