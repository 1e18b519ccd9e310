"""The overlapped poll-batch loop (``overlap``, :mod:`stream_ae.worker.loop`) on an in-memory
world that records the order of every operation: a consumer over an in-memory log, a producer,
the in-memory store and a tiny real model whose call waits until the main thread has polled.

What is proven, on the recorded order: the next batch is polled while the model runs (the
overlap is real), and yet per batch the alerts are flushed before the state write, the state
write comes before the commit, and the next batch's states are loaded only after that commit;
the hot swap runs with no batch in flight; a partition change, a retriable failure, a stop and
dead letters during the overlap are handled as the module docstring says; and every run ends
with the states and alert ids of the same input processed one batch at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import orjson
import pytest

from stream_ae.core.records import encode_event
from stream_ae.core.scoring import fit_calibration, window_errors
from stream_ae.core.state import StreamState
from stream_ae.core.state_codec import decode_state
from stream_ae.core.synthetic import make_stream
from stream_ae.core.windowing import series_windows
from stream_ae.errors import StoreError
from stream_ae.io.kafka import Partition
from stream_ae.io.window_store import InMemoryWindowStore
from stream_ae.model.artifacts import CalibrationSet, Scaling, load_artifact, save_artifact
from stream_ae.model.inference import Scorer
from stream_ae.model.network import ModelSpec, build_model, split_window
from stream_ae.settings import load_settings
from stream_ae.worker.loop import Worker

WINDOW = 8
SPEC = ModelSpec(window=WINDOW, features=1, hidden=4)
TOPIC, ALERTS, DLQ = "metrics", "alerts", "dlq"
PARTITIONS = (Partition(TOPIC, 0), Partition(TOPIC, 1))
STREAMS, STEPS = 6, 50
POLL_RECORDS = 24  # a dozen batches
MODEL_WAIT_S = 5.0  # the longest a model call waits for the main thread's poll


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model calibrated low on its own errors: alerts open on noise too."""
    model = build_model(SPEC, seed=1)
    scaling = Scaling(mode="stream", mean=(0.0,), std=(1.0,))
    normal = make_stream("calibration", 400, seed=99).values
    windows = series_windows(normal, WINDOW)
    inputs, targets = split_window(
        SPEC, scaling.apply(windows.windows, windows.stat_mean, windows.stat_std)
    )
    errors, _ = window_errors(targets[0], np.asarray(model.predict_on_batch(inputs)))
    return save_artifact(
        tmp_path_factory.mktemp("overlap") / "tiny",
        model=model,
        spec=SPEC,
        scaling=scaling,
        calibration=CalibrationSet(fit_calibration(errors, method="quantile", level=0.9)),
        name="tiny",
        version="v1",
    )


# --- the recording world ----------------------------------------------------------------------


@dataclass
class World:
    """Everything the worker touches, writing one shared log of (operation, detail)."""

    ops: list[tuple[str, Any]] = field(default_factory=list)
    processing: threading.Event = field(default_factory=threading.Event)  # steps 3-6 running
    model_running: threading.Event = field(default_factory=threading.Event)
    polled_during_model: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, op: str, detail: Any = None) -> None:
        with self.lock:
            self.ops.append((op, detail))


def input_log(bad_offsets: Sequence[int] = ()) -> dict[Partition, list[SimpleNamespace]]:
    """Every stream's events, keyed by stream, streams spread over two partitions; a few
    spikes so that alerts open; the messages at ``bad_offsets`` of partition 0 not JSON."""
    streams = [make_stream(f"s{i}", STEPS, anomalies=1, anomaly_len=3, seed=i) for i in range(6)]
    log: dict[Partition, list[SimpleNamespace]] = {tp: [] for tp in PARTITIONS}
    for step in range(STEPS):
        for i, stream in enumerate(streams):
            tp = PARTITIONS[i % 2]
            offset = len(log[tp])
            value = encode_event(
                stream.name, int(stream.ts_ms[step]), float(stream.values[step][0])
            )
            if tp.partition == 0 and offset in bad_offsets:
                value = b"not json"
            log[tp].append(
                SimpleNamespace(
                    topic=TOPIC,
                    partition=tp.partition,
                    offset=offset,
                    key=stream.name.encode(),
                    value=value,
                    headers=None,
                )
            )
    return log


class Consumer:
    """A consumer of an in-memory log. ``during_poll[k]`` runs inside the k-th poll, after its
    records were taken (as a partition change delivered after the client's poll)."""

    def __init__(self, world: World, log: dict[Partition, list[SimpleNamespace]]) -> None:
        self.world = world
        self.log = log
        self.positions = dict.fromkeys(log, 0)
        self.commits: dict[Partition, int] = {}  # the committed offsets
        self.polls = 0
        self.during_poll: dict[int, Callable[[Consumer], None]] = {}
        self.on_assigned: Callable[[set[Partition]], None] | None = None
        self.on_revoked: Callable[[set[Partition]], None] | None = None

    def subscribe(self, topics: Any, *, on_assigned: Any, on_revoked: Any) -> None:
        self.on_assigned, self.on_revoked = on_assigned, on_revoked

    def poll_batch(self, timeout_ms: int, max_records: int) -> list[Any]:
        self.polls += 1
        if self.polls == 1 and self.on_assigned is not None:
            self.on_assigned(set(PARTITIONS))
        # A real poll takes longer than the start of a batch's model call: while steps 3-6
        # run, this one waits until the model runs (the model waits for a poll in turn).
        for _ in range(2000):
            if not self.world.processing.is_set() or self.world.model_running.is_set():
                break
            threading.Event().wait(0.001)
        if self.world.model_running.is_set():
            self.world.polled_during_model.set()
        out: list[Any] = []
        for tp in PARTITIONS:  # round robin, a few records at a time, until max_records
            take = (max_records - len(out)) // (len(PARTITIONS) - PARTITIONS.index(tp))
            records = self.log[tp][self.positions[tp] : self.positions[tp] + take]
            self.positions[tp] += len(records)
            out += records
        self.world.note(
            "poll",
            {"model_running": self.world.model_running.is_set(), "offsets": _spans(out)},
        )
        hook = self.during_poll.pop(self.polls, None)
        if hook is not None:
            hook(self)
        return out

    def revoke_and_assign(self) -> None:
        assert self.on_revoked is not None and self.on_assigned is not None
        self.on_revoked(set(PARTITIONS))
        self.world.note("revoked")
        # Eager rebalancing: the same partitions come back, read from the committed offsets.
        for tp in PARTITIONS:
            self.positions[tp] = self.commits.get(tp, 0)
        self.on_assigned(set(PARTITIONS))

    def commit(self, offsets: dict[Partition, int]) -> None:
        self.world.note("commit", dict(offsets))
        self.commits.update(offsets)

    def seek(self, tp: Partition, offset: int) -> None:
        self.world.note("seek", (tp, offset))
        self.positions[tp] = offset

    def committed(self, tps: Sequence[Partition]) -> dict[Partition, int | None]:
        return {tp: self.commits.get(tp) for tp in tps}

    def beginning_offsets(self, tps: Sequence[Partition]) -> dict[Partition, int]:
        return dict.fromkeys(tps, 0)

    def high_watermark(self, tp: Partition) -> int | None:
        return None

    def position(self, tp: Partition, *, timeout_ms: int | None = None) -> int | None:
        return self.positions[tp]

    def drained(self) -> bool:
        return all(self.positions[tp] >= len(self.log[tp]) for tp in PARTITIONS)

    def close(self) -> None:
        pass


class Producer:
    def __init__(self, world: World) -> None:
        self.world = world
        self.unflushed: list[tuple[str, bytes | None]] = []
        self.sent: list[tuple[str, bytes | None]] = []

    def send(self, topic: str, value: bytes | None, key: Any = None, headers: Any = None) -> None:
        self.world.note("send", topic)
        self.unflushed.append((topic, value))

    def flush(self, timeout_s: float) -> int:
        self.world.note("flush", [topic for topic, _ in self.unflushed])
        count, self.sent = len(self.unflushed), self.sent + self.unflushed
        self.unflushed = []
        return count

    def discard(self) -> None:
        self.unflushed = []

    def close(self, timeout_s: float = 10.0) -> None:
        pass

    def alert_ids(self) -> list[str]:
        return sorted(orjson.loads(v or b"")["alert_id"] for t, v in self.sent if t == ALERTS)


class Store(InMemoryWindowStore):
    """The in-memory store, its loads and writes logged; ``fail_saves`` fails that many
    writes (from the ``fail_from``-th on) as Redis going away would."""

    def __init__(self, world: World) -> None:
        super().__init__(WINDOW, 1)
        self.world = world
        self.saves = 0
        self.fail_from = 0
        self.fail_saves = 0

    def load(self, streams: Sequence[str]) -> dict[str, Any]:
        self.world.note("load", sorted(streams))
        return super().load(streams)

    def save(self, states: Any) -> dict[str, bool]:
        self.saves += 1
        if self.fail_saves and self.saves >= self.fail_from:
            self.fail_saves -= 1
            self.world.note("save_failed")
            raise StoreError("redis away")
        self.world.note("save", sorted(states))
        return super().save(states)


class WaitingScorer(Scorer):
    """The tiny model; with ``wait``, each call holds until the main thread has polled during
    it (or :data:`MODEL_WAIT_S` passed), as a long model call would."""

    def __init__(self, world: World, artifact: Any, wait: bool) -> None:
        super().__init__(artifact, buckets=(16, 64))
        self.world, self.wait = world, wait

    def score(self, *args: Any, **kwargs: Any) -> Any:
        self.world.note("model_start")
        self.world.polled_during_model.clear()
        self.world.model_running.set()
        try:
            if self.wait:
                self.world.polled_during_model.wait(MODEL_WAIT_S)
            return super().score(*args, **kwargs)
        finally:
            self.world.model_running.clear()
            self.world.note("model_end")


class Model:
    """A :class:`~stream_ae.worker.loop.ModelSource` noting each batch boundary."""

    def __init__(self, world: World, scorer: Scorer) -> None:
        self.world, self.scorer = world, scorer

    def current(self) -> Scorer:
        return self.scorer

    def between_batches(self) -> None:
        # Whether a batch's steps 3-6 are under way: a swap then would change its model.
        self.world.note("between_batches", self.world.processing.is_set())

    def close(self) -> None:
        pass


@dataclass
class Run:
    world: World
    worker: Worker
    consumer: Consumer
    producer: Producer
    store: Store


def make_run(
    artifact_dir: Path, *, overlap: bool, wait: bool | None = None, bad_offsets: Sequence[int] = ()
) -> Run:
    world = World()
    consumer = Consumer(world, input_log(bad_offsets))
    producer = Producer(world)
    store = Store(world)
    scorer = WaitingScorer(world, load_artifact(artifact_dir), overlap if wait is None else wait)
    settings = load_settings(
        {
            "input_topics": [TOPIC],
            "alerts_topic": ALERTS,
            "dlq_topic": DLQ,
            "overlap": overlap,
            "max_poll_records": POLL_RECORDS,
            "open_after_windows": 1,
            "resolve_after_windows": 2,
            "cooldown_windows": 1,
        }
    )
    worker = Worker(
        settings,
        consumer=consumer,  # type: ignore[arg-type]
        producer=producer,
        store=store,
        model=Model(world, scorer),
        clock_ms=lambda: 1_750_000_000_000,
    )
    worker.processor.max_cached_streams = 0  # every batch loads its states: the loads show
    # A batch's steps 3-6 are under way from its dead-letter flush (step 2, the last on the
    # main thread) until the processor returns.
    flush, process = worker.dead_letters.flush, worker.processor.process

    def flushing(*args: Any, **kwargs: Any) -> None:
        flush(*args, **kwargs)
        world.processing.set()

    def processing(events: Any) -> Any:
        try:
            return process(events)
        finally:
            world.processing.clear()

    worker.dead_letters.flush = flushing  # type: ignore[method-assign]
    worker.processor.process = processing  # type: ignore[method-assign]
    worker.subscribe()
    return Run(world, worker, consumer, producer, store)


def run_until_drained(run: Run, timeout_s: float = 120.0) -> None:
    """Run the worker on a thread until the log is consumed, committed and idle; then stop."""
    total = {tp: len(run.consumer.log[tp]) for tp in PARTITIONS}

    def done() -> bool:
        return run.consumer.commits == total or run.worker.stopping

    thread = threading.Thread(target=run.worker.run, daemon=True)
    thread.start()
    deadline = threading.Event()
    for _ in range(int(timeout_s / 0.02)):
        if done():
            break
        deadline.wait(0.02)
    run.worker.stop()
    thread.join(30)
    assert not thread.is_alive()
    assert run.worker.fatal is None
    assert run.consumer.commits == total, run.consumer.commits


def _spans(records: Sequence[Any]) -> dict[int, tuple[int, int]]:
    spans: dict[int, tuple[int, int]] = {}
    for r in records:
        first, last = spans.get(r.partition, (r.offset, r.offset))
        spans[r.partition] = (min(first, r.offset), max(last, r.offset))
    return spans


def states_of(store: InMemoryWindowStore) -> dict[str, StreamState]:
    return {s: decode_state(store.raw(s) or b"", WINDOW, 1) for s in sorted(store._data)}


@pytest.fixture(scope="module")
def reference(artifact_dir: Path) -> Iterator[Run]:
    """The same input, one batch at a time (``overlap`` off)."""
    run = make_run(artifact_dir, overlap=False)
    run_until_drained(run)
    assert run.producer.alert_ids(), "no alert at all: the ordering claims would be empty"
    yield run


def assert_same_result(run: Run, reference: Run) -> None:
    """Every event applied once: the reference's stored states, byte for byte, and alert ids
    (each at least once: a rewound batch may send its alerts again, never lose one)."""
    assert run.store._data == reference.store._data
    counts = {s: st.count for s, st in states_of(run.store).items()}
    assert counts == dict.fromkeys(counts, STEPS)
    assert set(run.producer.alert_ids()) == set(reference.producer.alert_ids())


def batches_in_order(ops: Sequence[tuple[str, Any]]) -> list[str]:
    """Check the per-batch order on the log; returns the violations."""
    violations = []
    in_flight = False  # between a batch's model call and its commit
    unflushed_alerts = saved = False
    for i, (op, detail) in enumerate(ops):
        if op == "load" and in_flight and saved:
            violations.append(f"{i}: a load after the state write of a batch not committed")
        if op == "model_start":
            if in_flight:
                violations.append(f"{i}: a model call while the previous batch is uncommitted")
            in_flight, saved = True, False
        elif op == "send" and detail == ALERTS:
            unflushed_alerts = True
        elif op == "flush":
            unflushed_alerts = False
        elif op == "save":
            if unflushed_alerts:
                violations.append(f"{i}: a state write while sent alerts are unflushed")
            saved = True
        elif op == "save_failed":  # the batch is abandoned, rewound and read again
            in_flight = saved = unflushed_alerts = False
        elif op == "commit":
            if not saved:
                violations.append(f"{i}: a commit before the batch's state write")
            in_flight = saved = False
        elif op == "between_batches" and (detail or in_flight):
            violations.append(f"{i}: a batch boundary (hot swap) with a batch in flight")
    return violations


# --- the tests --------------------------------------------------------------------------------


def test_without_overlap_nothing_is_polled_while_the_model_runs(reference: Run) -> None:
    """The control: the recorder tells a sequential loop from an overlapped one."""
    polls = [d for op, d in reference.world.ops if op == "poll"]
    assert not any(p["model_running"] for p in polls)
    assert batches_in_order(reference.world.ops) == []


def test_the_next_batch_is_polled_while_the_model_runs_and_each_batch_keeps_its_order(
    artifact_dir: Path, reference: Run
) -> None:
    run = make_run(artifact_dir, overlap=True)
    run_until_drained(run)
    ops = run.world.ops
    overlapped = [d for op, d in ops if op == "poll" and d["model_running"] and d["offsets"]]
    assert len(overlapped) >= 5, "the overlap never polled records while the model ran"
    assert batches_in_order(ops) == []
    # n+1's states are loaded after n's commit: each load follows a commit or is the first.
    commits = [i for i, (op, _) in enumerate(ops) if op == "commit"]
    loads = [i for i, (op, _) in enumerate(ops) if op == "load"]
    assert len(loads) == len(commits) >= 10
    assert all(load > commit for load, commit in zip(loads[1:], commits, strict=False))
    assert_same_result(run, reference)


def test_a_rebalance_during_the_overlap_finishes_the_batch_in_flight_then_gives_back_the_next(
    artifact_dir: Path, reference: Run
) -> None:
    """Partitions revoked (and assigned back) while batch n is in the model and n+1 is polled:
    n is committed before the revocation is acted on, n+1's records are sought back to their
    first offsets, and the end result is the reference's."""
    run = make_run(artifact_dir, overlap=True)
    run.consumer.during_poll[4] = Consumer.revoke_and_assign
    run_until_drained(run)
    ops = run.world.ops
    revoked = next(i for i, (op, _) in enumerate(ops) if op == "revoked")
    poll = max(i for i, (op, _) in enumerate(ops[:revoked]) if op == "poll")
    assert ops[poll][1]["model_running"], "the revocation did not come during the overlap"
    between = [op for op, _ in ops[poll:revoked]]
    assert "commit" in between, "the batch in flight was not committed before the revocation"
    given_back = ops[poll][1]["offsets"]
    seeks = [d for op, d in ops[revoked:] if op == "seek"]
    assert {tp.partition: offset for tp, offset in seeks[: len(given_back)]} == {
        p: first for p, (first, _) in given_back.items()
    }
    assert batches_in_order(ops) == []
    assert_same_result(run, reference)


def test_a_retriable_failure_during_the_overlap_rewinds_both_batches(
    artifact_dir: Path, reference: Run
) -> None:
    """Batch n's state write fails after n+1 was polled: each partition is sought back to its
    first offset in n (n+1 follows it), n+1 never reaches the model before n is done again."""
    run = make_run(artifact_dir, overlap=True)
    run.store.fail_from, run.store.fail_saves = 3, 1
    run_until_drained(run)
    ops = run.world.ops
    failed = next(i for i, (op, _) in enumerate(ops) if op == "save_failed")
    # The failed batch n: the offsets its model call followed; n+1: polled before the failure.
    polls = [(i, d) for i, (op, d) in enumerate(ops[:failed]) if op == "poll" and d["offsets"]]
    batch_n = polls[-2][1]["offsets"]
    batch_next = polls[-1][1]["offsets"]
    assert polls[-1][1]["model_running"], "the failure did not come during the overlap"
    seeks = [(i, d) for i, (op, d) in enumerate(ops) if op == "seek" and i > failed]
    rewound = {tp.partition: offset for _, (tp, offset) in seeks[: len(PARTITIONS)]}
    expected = {
        p: min(span[0] for span in (batch_n.get(p), batch_next.get(p)) if span)
        for p in {*batch_n, *batch_next}
    }
    assert rewound == expected
    # Nothing of n+1 began before the rewind, nothing was committed in between.
    assert [op for op, _ in ops[failed : seeks[0][0]]].count("model_start") == 0
    assert "commit" not in [op for op, _ in ops[failed : seeks[0][0]]]
    assert batches_in_order(ops) == []
    assert_same_result(run, reference)


def test_a_stop_during_the_overlap_commits_the_batch_in_flight_and_not_the_next(
    artifact_dir: Path,
) -> None:
    run = make_run(artifact_dir, overlap=True)
    run.consumer.during_poll[5] = lambda consumer: run.worker.stop()
    thread = threading.Thread(target=run.worker.run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and run.worker.fatal is None
    ops = run.world.ops
    stop_poll = [i for i, (op, _) in enumerate(ops) if op == "poll"][4]
    assert [op for op, _ in ops[stop_poll:]].count("commit") == 1
    assert "model_start" not in [op for op, _ in ops[stop_poll:]], "the next batch was begun"
    # What is committed is what is stored: every stream's state ends at the committed offset.
    committed = run.consumer.commits
    polled_next = ops[stop_poll][1]["offsets"]
    for p, (first, _) in polled_next.items():
        assert committed[PARTITIONS[p]] == first
    for state in states_of(run.store).values():
        assert state.offset < committed[Partition(TOPIC, state.partition)]
    assert batches_in_order(ops) == []


def test_dead_letters_of_the_next_batch_are_sent_after_the_batch_in_flight_is_committed(
    artifact_dir: Path,
) -> None:
    bad = (40, 41, 90)
    run = make_run(artifact_dir, overlap=True, bad_offsets=bad)
    reference = make_run(artifact_dir, overlap=False, bad_offsets=bad)
    run_until_drained(run)
    run_until_drained(reference)
    ops = run.world.ops
    for i, (op, detail) in enumerate(ops):
        if op == "send" and detail == DLQ:
            # The batch before it was committed: no model call is open when it is sent.
            starts = [j for j, (o, _) in enumerate(ops[:i]) if o == "model_start"]
            assert starts, "a dead letter in the first batch: nothing to overlap"
            assert "commit" in [o for o, _ in ops[starts[-1] : i]], f"{i}: during the overlap"
    dlq = run.worker.metrics.registry.get_sample_value(
        "stream_ae_dlq_total", {"reason": "not_json"}
    )
    assert dlq == len(bad)
    assert run.worker.totals.dead_lettered == len(bad)
    assert run.store._data == reference.store._data
    assert batches_in_order(ops) == []
