"""Helpers of the worker's integration tests: a tiny model, workers, topics and Redis state.

Fixture (import it into a test module: ``from tests.helpers import tiny_model``):

``tiny_model`` (session)
    A :class:`TinyModel`: an LSTM autoencoder (window 16, hidden 16) trained for a few epochs on
    the history of :func:`fleet`'s streams, written as an artifact once per session. The
    streams' live continuation is what the tests send (:func:`fleet`, :func:`long_fleet`).

Everything else is plain functions and classes:

- :func:`worker_config` -> a dict of worker settings for one test (unique group id and Redis
  key prefix); :func:`settings_of` turns it into :class:`Settings` for an in-process worker,
  :func:`env_of` into ``STREAM_AE_*`` variables for a worker subprocess.
- :func:`running_worker`: an in-process :class:`Worker` (built by ``build_worker``) on a thread.
- :class:`WorkerProcess`: ``python -m stream_ae worker`` as a child process, ready when its
  ``/readyz`` answers 200; killed, terminated and reaped. :class:`PortGate` holds a pre-started
  one at a closed port in front of Redis until it is its turn.
- :func:`produce` sends messages and returns where each one landed (:class:`Sent`);
  :class:`BackgroundProducer` does it at a steady rate on a thread; :func:`read_topic` reads a
  topic from the beginning to its current end; :func:`committed_offsets` reads a group's.
- :func:`stored_blobs` / :func:`stored_states` / :func:`applied_counts`: the window states
  under a Redis key prefix.
- :func:`expected_outcome`: the oracle. It replays what was sent through the same core
  (:class:`StreamProcessor` on an in-memory store) in one batch, which, calibration being fixed
  in the artifact, gives the states and alert ids any correct worker run must end with.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream_ae.core.records import Event, decode_event, encode_event
from stream_ae.core.state import StreamState
from stream_ae.core.state_codec import decode_state, encode_state
from stream_ae.core.synthetic import SyntheticStream, make_stream
from stream_ae.errors import SchemaError
from stream_ae.io.window_store import InMemoryWindowStore
from stream_ae.model.inference import Scorer
from stream_ae.settings import ENV_PREFIX, Settings
from stream_ae.worker.loop import Worker
from stream_ae.worker.processor import StreamProcessor

TINY_WINDOW = 16
TINY_HIDDEN = 16
# The model learns each stream's normal shape from its history; the tests send what follows.
HISTORY_STEPS = 500
LIVE_STEPS = 300
STREAMS = 6
ANOMALOUS_STREAMS = 3  # the first three carry two injected anomalies each
# Anomalies start this many steps into the live part, so that the first windows of the live
# part (scored with a freshly filled ring) are all normal.
ANOMALY_MARGIN = 40
# A worker subprocess imports TensorFlow, loads and warms the model, then joins the group.
WORKER_START_TIMEOUT_S = 180.0


# --------------------------------------------------------------------------------------------
# The model and its streams
# --------------------------------------------------------------------------------------------


def fleet(live_steps: int = LIVE_STEPS) -> list[SyntheticStream]:
    """The streams of every test: ``HISTORY_STEPS`` of training history, then ``live_steps``.

    The history does not depend on ``live_steps`` (the generator draws its noise in time
    order), so the tiny model fits a fleet of any live length; the anomalies do move with it.
    """
    return [
        make_stream(
            f"host-{i}",
            HISTORY_STEPS + live_steps,
            anomalies=2 if i < ANOMALOUS_STREAMS else 0,
            min_anomaly_step=HISTORY_STEPS + ANOMALY_MARGIN,
            seed=100 + i,
        )
        for i in range(STREAMS)
    ]


def long_fleet(live_steps: int) -> list[SyntheticStream]:
    """:func:`fleet` with its anomalies, continued without anomalies to ``live_steps`` live
    steps: for tests that keep a stream flowing for as long as they need (the anomalies come
    early whatever the length)."""
    streams = []
    for i, short in enumerate(fleet()):
        base = make_stream(short.name, HISTORY_STEPS + live_steps, seed=100 + i)
        values = base.values.copy()
        values[: len(short.values)] = short.values
        streams.append(SyntheticStream(short.name, values, base.ts_ms, short.anomalies))
    return streams


@dataclass(frozen=True)
class TinyModel:
    """The session's model artifact and the shape of its windows."""

    path: Path
    window: int
    features: int


# Trained models by pytest base temp dir. A session fixture imported into several test modules
# is a separate fixture in each (pytest caches per defining module), so the training itself is
# cached here to run once per session.
_TRAINED: dict[Path, TinyModel] = {}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Train the tiny autoencoder once per session (about 15-25 s on 2 busy cores)."""
    base = tmp_path_factory.getbasetemp()
    if base not in _TRAINED:
        _TRAINED[base] = _train_tiny_model(tmp_path_factory.mktemp("tiny-model") / "artifact")
    return _TRAINED[base]


def _train_tiny_model(out_dir: Path) -> TinyModel:
    from stream_ae.model.network import ModelSpec
    from training.fit import FitConfig, train_artifact

    streams = fleet()
    path = train_artifact(
        [(s.name, s.values[:HISTORY_STEPS]) for s in streams],
        ModelSpec(window=TINY_WINDOW, hidden=TINY_HIDDEN),
        out_dir,
        name="tiny",
        config=FitConfig(epochs=4, train_stride=2, seed=0, verbose=0),
    )
    return TinyModel(path=path, window=TINY_WINDOW, features=1)


@functools.cache
def load_tiny_scorer(model: TinyModel) -> Scorer:
    """An in-process scorer of the tiny model (the worker's buckets, warmed up), loaded once."""
    from stream_ae.model.artifacts import load_artifact

    scorer = Scorer(load_artifact(model.path), DEFAULT_BUCKETS)
    scorer.warm_up()
    return scorer


def live_messages(
    streams: Iterable[SyntheticStream], start: int = HISTORY_STEPS
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every stream's events from step ``start`` on, interleaved in time."""
    from stream_ae.io.producing import interleave

    for stream, ts_ms, values in interleave(list(streams), start=start):
        yield stream.encode(), encode_event(stream, ts_ms, values[0])


# --------------------------------------------------------------------------------------------
# Worker settings, in-process workers and worker subprocesses
# --------------------------------------------------------------------------------------------

# Small buckets keep the warm-up short; a poll batch never holds more windows than events.
DEFAULT_BUCKETS = (16, 128, 512)


def worker_config(
    *,
    bootstrap_servers: str,
    redis_url: str,
    model: TinyModel,
    input_topic: str,
    alerts_topic: str,
    dlq_topic: str,
    **overrides: Any,
) -> dict[str, Any]:
    """Settings of one test's worker(s): a unique group id and Redis key prefix."""
    tag = uuid.uuid4().hex[:10]
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "redis_url": redis_url,
        "model_path": str(model.path),
        "input_topics": [input_topic],
        "alerts_topic": alerts_topic,
        "dlq_topic": dlq_topic,
        "group_id": f"itest-{tag}",
        "redis_key_prefix": f"it{tag}",
        # Tansu: a group join takes about half the session timeout, an idle fetch about half
        # of fetch_max_wait_ms (see BrokerProcess).
        "session_timeout_ms": 6000,
        "fetch_max_wait_ms": 20,
        "max_batch_wait_ms": 100,
        "max_poll_records": 500,
        "batch_buckets": list(DEFAULT_BUCKETS),
        "retry_backoff_max_s": 1.0,
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
        "log_format": "text",
        "log_level": "INFO",
    }
    config.update(overrides)
    return config


def settings_of(config: Mapping[str, Any]) -> Settings:
    """The frozen settings of an in-process worker."""
    return Settings(**dict(config))


def env_of(config: Mapping[str, Any]) -> dict[str, str]:
    """The environment of a worker subprocess: ours, less any ``STREAM_AE_*`` of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    for name, value in config.items():
        text = ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
        env[f"{ENV_PREFIX}{name.upper()}"] = text
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


@contextlib.contextmanager
def running_worker(settings: Settings) -> Iterator[Worker]:
    """A worker built from ``settings`` (as ``stream-ae worker`` does), polling on a thread.

    On exit the worker is stopped (it finishes its batch, commits and closes) and joined; an
    exception raised on the worker thread is re-raised here.
    """
    from stream_ae.worker.bootstrap import build_worker

    worker = build_worker(settings)
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            worker.run()
        except BaseException as exc:  # re-raised on the test's thread
            failure.append(exc)

    thread = threading.Thread(target=loop, name="test-worker", daemon=True)
    thread.start()
    try:
        yield worker
        if failure:
            raise failure[0]
    finally:
        worker.stop()
        thread.join(timeout=60)
    if thread.is_alive():
        raise AssertionError("the worker thread did not stop within 60 s of stop()")
    if failure:
        raise failure[0]


class WorkerProcess:
    """``python -m stream_ae worker`` with the given settings, as a child process."""

    def __init__(self, config: Mapping[str, Any], log_path: Path) -> None:
        from stream_ae_dev.devstack import find_free_port

        self.config = {**config, "metrics_port": find_free_port()}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return int(self.config["metrics_port"])

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stream_ae", "worker"],
                env=env_of(self.config),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout_s: float = WORKER_START_TIMEOUT_S) -> None:
        """Until ``/readyz`` says 200: model loaded and partitions assigned."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise AssertionError(
                    f"the worker exited with {self.returncode} before it was ready:\n{self.tail()}"
                )
            if self.get("/readyz")[0] == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"the worker was not ready within {timeout_s:.0f} s:\n{self.tail()}")

    def get(self, path: str) -> tuple[int, str]:
        """(HTTP status, body) of one of the worker's endpoints; (0, '') when it is down."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()
        except OSError:
            return 0, ""

    @property
    def returncode(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    def kill(self) -> None:
        """``kill -9``: no chance to finish the batch, flush or commit."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """Make sure the child is gone (teardown): SIGTERM, then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class _ForwardingServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class PortGate:
    """A local TCP port that refuses connections until :meth:`open`, then forwards each one
    to ``target_host:target_port``.

    Holds a pre-started worker process at the door: pointed at the gate instead of Redis, it
    imports TensorFlow and warms its model, then retries its Redis connection (and does not
    join the consumer group) until the gate opens. So a replacement can warm up while its
    predecessor still runs, and enter the moment that one is killed.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        from stream_ae_dev.devstack import find_free_port

        self.target = (target_host, target_port)
        self.port = find_free_port()
        self._server: _ForwardingServer | None = None
        self._sockets: list[socket.socket] = []

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def open(self) -> None:
        gate = self

        class Forward(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(gate.target)
                client: socket.socket = self.request
                gate._sockets += [client, upstream]
                peers = {client: upstream, upstream: client}
                try:
                    while True:
                        readable, _, _ = select.select(list(peers), [], [], 1.0)
                        for sock in readable:
                            data = sock.recv(65536)
                            if not data:
                                return
                            peers[sock].sendall(data)
                except OSError:
                    return
                finally:
                    upstream.close()

        server = _ForwardingServer(("127.0.0.1", self.port), Forward)
        threading.Thread(target=server.serve_forever, name="port-gate", daemon=True).start()
        self._server = server

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets.clear()


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The value of one sample in Prometheus text exposition format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted((labels or {}).items()))
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        found = ",".join(sorted(p for p in label_text.rstrip("}").split(",") if p))
        if metric == name and found == wanted:
            total += float(value)
    return total


# --------------------------------------------------------------------------------------------
# Kafka: producing and reading back
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One message as sent, and where the broker put it."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


def produce(
    bootstrap_servers: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
    *,
    rate_per_s: float | None = None,
    stop: threading.Event | None = None,
    partition: int | None = None,
) -> list[Sent]:
    """Send (key, value) messages in order and wait for every acknowledgement.

    ``rate_per_s`` paces them; ``stop`` ends the sending early (what was sent is returned).
    Keys choose the partition (Kafka's default partitioner) unless ``partition`` is given.
    """
    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5, max_request_size=4_194_304
    )
    futures: list[tuple[bytes | None, bytes | None, Any]] = []
    started = time.perf_counter()
    try:
        for key, value in messages:
            if stop is not None and stop.is_set():
                break
            future = producer.send(topic, key=key, value=value, partition=partition)
            futures.append((key, value, future))
            if rate_per_s:
                ahead = len(futures) / rate_per_s - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(timeout=60)
        sent = []
        for key, value, future in futures:
            meta = future.get(timeout=60)
            sent.append(Sent(key, value, meta.topic, meta.partition, meta.offset))
        return sent
    finally:
        producer.close(timeout=10)


class BackgroundProducer:
    """:func:`produce` on a thread, so a worker can be killed while the stream flows."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        messages: Iterable[tuple[bytes | None, bytes | None]],
        *,
        rate_per_s: float,
    ) -> None:
        self._stop = threading.Event()
        self.sent: list[Sent] = []
        self.error: BaseException | None = None

        def send() -> None:
            try:
                self.sent = produce(
                    bootstrap_servers, topic, messages, rate_per_s=rate_per_s, stop=self._stop
                )
            except BaseException as exc:
                self.error = exc

        self._thread = threading.Thread(target=send, name="test-producer", daemon=True)

    def start(self) -> BackgroundProducer:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def finish(self, timeout_s: float = 60.0) -> list[Sent]:
        """Stop sending; return every message sent (all acknowledged)."""
        self._stop.set()
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        if self._thread.is_alive():
            raise AssertionError("the producer did not finish")
        return self.sent


def read_topic(bootstrap_servers: str, topic: str, timeout_s: float = 30.0) -> list[Any]:
    """Every record of ``topic`` from the beginning to its end as of now, in offset order per
    partition (no consumer group: nothing is committed)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
        group_id=None,
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end within {timeout_s} s")
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def committed_offsets(bootstrap_servers: str, group_id: str, topic: str) -> dict[int, int | None]:
    """The committed offset of ``group_id`` on each partition of ``topic`` (None: none)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False
    )
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or set())
        return {p: consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        consumer.close(autocommit=False)


# --------------------------------------------------------------------------------------------
# Redis state and the oracle
# --------------------------------------------------------------------------------------------


def stored_blobs(client: Any, prefix: str) -> dict[str, bytes]:
    """Raw stored window states under ``prefix``, by stream (``<prefix>:w:{<stream>}``)."""
    marker = f"{prefix}:w:{{".encode()
    blobs: dict[str, bytes] = {}
    for key in client.scan_iter(match=f"{prefix}:w:*", count=1000):
        assert key.startswith(marker) and key.endswith(b"}"), key
        blobs[key[len(marker) : -1].decode()] = client.get(key)
    return blobs


def stored_states(client: Any, prefix: str, model: TinyModel) -> dict[str, StreamState]:
    """Decoded window states under ``prefix``, by stream."""
    return {
        stream: decode_state(blob, model.window, model.features)
        for stream, blob in stored_blobs(client, prefix).items()
    }


def applied_counts(client: Any, prefix: str, model: TinyModel) -> dict[str, int]:
    """Events applied per stream, as the stored states say."""
    return {s: st.count for s, st in stored_states(client, prefix, model).items()}


def good_counts(sent: Iterable[Sent]) -> dict[str, int]:
    """Events per stream among well-formed sent messages (keyed by stream)."""
    counts: dict[str, int] = {}
    for m in sent:
        assert m.key is not None
        stream = m.key.decode()
        counts[stream] = counts.get(stream, 0) + 1
    return counts


@dataclass(frozen=True)
class Outcome:
    """What a correct run over some input ends with."""

    blobs: dict[str, bytes]  # encoded final state per stream
    alert_ids: set[str]
    applied: int
    dead_lettered: int


def expected_outcome(sent: Iterable[Sent], settings: Settings, scorer: Scorer) -> Outcome:
    """Replay ``sent`` through the worker's own core in one batch: the reference result.

    Decoding, windowing, scoring and the alert policy are the worker's (same settings, same
    artifact); only Kafka and Redis are left out.
    """
    spec = scorer.artifact.spec
    events: list[Event] = []
    dead = 0
    for m in sent:
        try:
            events.append(
                decode_event(
                    m.key,
                    m.value,
                    topic=m.topic,
                    partition=m.partition,
                    offset=m.offset,
                    feature_names=spec.feature_names,
                    max_bytes=settings.max_message_bytes,
                )
            )
        except SchemaError:
            dead += 1
    store = InMemoryWindowStore(spec.window, spec.features)
    processor = StreamProcessor(
        store,
        lambda: scorer,
        stride=settings.stride,
        policy=settings.alert_policy(),
        clock_ms=lambda: 0,
    )
    outcome = processor.process(events)
    assert not processor.save(outcome.touched)
    return Outcome(
        blobs={s: encode_state(st) for s, st in outcome.touched.items()},
        alert_ids={a["alert_id"] for a in outcome.alerts},
        applied=outcome.events_applied,
        dead_lettered=dead,
    )


def alerts_of(records: Iterable[Any]) -> list[dict[str, Any]]:
    """Alert records (as read from the alerts topic) parsed from JSON."""
    import orjson

    return [orjson.loads(r.value) for r in records]


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.2,
    on_timeout: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``.

    The timeout is a liveness bound (something is stuck), not a performance assertion.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            detail = on_timeout() if on_timeout is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{detail}")
        time.sleep(interval_s)


def decode_states_equal(a: Mapping[str, bytes], b: Mapping[str, bytes]) -> list[str]:
    """Streams whose encoded states differ between ``a`` and ``b`` (field-by-field decode when
    the bytes differ, so the message says what differs)."""
    differing = []
    for stream in sorted(set(a) | set(b)):
        if a.get(stream) == b.get(stream):
            continue
        left, right = a.get(stream), b.get(stream)
        if left is None or right is None:
            differing.append(f"{stream}: only on one side")
            continue
        sa, sb = decode_state(left), decode_state(right)
        fields_differing = [
            name
            for name in ("count", "topic", "partition", "offset", "alert")
            if getattr(sa, name) != getattr(sb, name)
        ] + [
            name
            for name in ("values", "ts_ms", "stat_mean", "stat_m2")
            if not np.array_equal(getattr(sa, name), getattr(sb, name))
        ]
        differing.append(f"{stream}: {fields_differing or 'encoding'}")
    return differing
