"""The long-lived Kafka worker: the poll-batch protocol.

One batch, in this order (:meth:`Worker.run_batch`):

1. **Poll** at most ``max_records`` events, waiting at most ``max_batch_wait_ms``: bounded in
   count and in time, so one batch never nears ``max_poll_interval_ms``.
2. **Decode and validate**; each bad message is sent to the dead-letter topic with its reason,
   and these dead letters are flushed now. Before anything is written, so a bad message can
   never block the good ones; acknowledged before Redis is touched, so a batch retried after a
   Redis outage knows they went out and does not send or count them again.
3. **Load** the states of the batch's streams that are not cached: one Redis round trip.
4. **Append** events in offset order, skipping offsets at or below the stored last applied one:
   after a crash, events already applied are replayed by Kafka and must change nothing.
5. **Score** every completed window of the batch in one model call (padded to a bucket size).
6. **Alert policy**, then produce the alerts and **flush** the producer. Before the state
   write: if we crash after the flush, the replay finds the old
   state, recomputes the same windows and re-sends the same alert ids (duplicates are allowed,
   losses are not). Had the state been written first, a crash would lose those alerts.
7. **Write** the touched states back, fenced, in one pipelined round trip. Before the commit:
   a crash between 7 and 8 replays events that the fence then skips.
8. **Commit** the offsets consumed. Last: committing earlier would lose the batch on a crash.

No step depends on the broker's commit semantics: correctness comes from the fenced, offset-
stamped state (a replay is a no-op), so it holds on brokers without transactions or fenced
commits, and nothing reads the broker's reported log end.

**Overlap** (``overlap``, off by default): steps 3-6 of batch *n* run on a second thread (the
model call releases the GIL) while the main thread polls batch *n+1* and decodes it; then the
main thread finishes *n* (6-8) and only then begins *n+1* (its dead letters, then 3-6).
Consumer calls (poll, seek, commit) stay on the main thread. Why every crash-replay guarantee
above still holds:

- *Per batch, the order is the same.* Alerts of *n* are flushed before its state write, which
  comes before its commit; nothing of *n+1* is written, sent or committed before *n*'s commit.
  What the overlap adds before *n*'s commit is only reading: *n+1*'s records and their
  decoding. A kill then (fault point ``overlap``) leaves exactly what a kill between steps 5
  and 6 leaves: nothing of *n* or *n+1* committed, so both are replayed.
- *States are loaded after the previous batch's write.* *n+1*'s steps 3-6 begin after *n*'s
  state write, so a stream in both batches is appended to *n*'s result, never to a state that
  misses *n*'s events (which the replay skip would then drop for good).
- *One model per batch.* ``between_batches`` (the hot swap) runs with no batch in flight; a
  batch decoded ahead for a model swapped out meanwhile is decoded again.
- *Dead letters* of *n+1* are sent and acknowledged when *n+1* begins, after *n*'s commit:
  each batch's alert flush waits only for its own alerts, and a retried batch finds its dead
  letters acknowledged as before (:mod:`stream_ae.worker.dead_letters`).
- *A partition change* delivered during the poll of *n+1* (revocation or assignment) first
  finishes *n* (steps 6-8, as if it had come one poll later, with the same race against a
  rebalance as any batch: the fence refuses a stale write, a commit that lands late can only
  cause a replay), then acts on the change; the records gathered for *n+1* are given back
  (seek to their first offsets; a revoked partition's new owner reads from the commit).
- *Errors*: a failure of *n* rewinds each partition to its first offset in *n* or *n+1*, and
  *n+1* is dropped: it is read again after *n*, never applied without it.
- *Stop*: SIGTERM during the overlap finishes *n* and commits it; *n+1* is not begun and not
  committed, so the next owner reads it.

Errors: the ``retriable`` flag of the project's exception decides. A retriable failure in 2-8
(Redis or Kafka away) rewinds the consumer to the batch's first offsets, drops the batch's
cached states and retries with backoff; the dead letters already acknowledged are not sent or
counted again (:mod:`stream_ae.worker.dead_letters`). A non-retriable one (a refused login, a
state that cannot be decoded, a broker that will never take a record) stops the worker with one
fatal line and exit code 1, committing nothing: a retry would fail the same way, forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

import numpy as np
import orjson

from stream_ae.core.records import DeadLetter as DecodeFailure
from stream_ae.core.records import EventBatch, decode_batch
from stream_ae.errors import BrokerError, SchemaError, StoreError, StreamAEError
from stream_ae.io.kafka import BatchConsumer, Partition, Producer, Record, lag
from stream_ae.io.state_guard import StateGuard
from stream_ae.io.window_store import WindowStore
from stream_ae.logs import fields
from stream_ae.model.inference import Scorer
from stream_ae.settings import Settings
from stream_ae.worker.dead_letters import DeadLetterQueue, offset_spans
from stream_ae.worker.metrics import WorkerMetrics
from stream_ae.worker.processor import BatchOutcome, StreamProcessor

log = logging.getLogger(__name__)


# A test hook, inert unless this variable is set (never in production; not a STREAM_AE_ setting,
# which would be refused as unknown): the crash tests (tests/integration/test_crash_replay.py)
# name a point of the protocol, and the worker SIGKILLs itself there in the first batch that
# produced alerts, so a kill lands exactly where a replay must repeat alerts or skip events.
FAULT_POINT_ENV = "SAE_FAULT_POINT"
_FAULT_POINT = os.environ.get(FAULT_POINT_ENV)


def _fault_point(name: str, alerts: int) -> None:
    if name == _FAULT_POINT and alerts:
        os.kill(os.getpid(), signal.SIGKILL)


class ModelSource(Protocol):
    """Where the worker gets its scorer; ``between_batches`` is the only point a hot-swap
    may take effect, so a batch is always scored by one model."""

    def current(self) -> Scorer: ...

    def between_batches(self) -> None: ...

    def close(self) -> None: ...


class StaticModel:
    """A model that never changes."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def current(self) -> Scorer:
        return self.scorer

    def between_batches(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class BatchStats:
    consumed: int = 0
    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    windows: int = 0
    alerts: int = 0
    seconds: float = 0.0


# While a batch is in flight (overlap), the next one is polled in slices of this wait, until
# the batch in flight is done: finishing it waits for one slice at most.
OVERLAP_POLL_SLICE_MS = 10


@dataclass
class _Decoded:
    """Step 2's decoding of ``messages``, done ahead: nothing sent yet."""

    messages: Sequence[Record]
    feature_names: tuple[str, ...]
    events: EventBatch
    dead: list[DecodeFailure]


@dataclass
class _Polled:
    """Step 1's records (or its error), decoded ahead or not yet (``decoded`` None)."""

    messages: list[Record]
    error: BrokerError | None = None
    decoded: _Decoded | None = None


@dataclass
class _InFlight:
    """A batch past step 2: its steps 3-6 running on the model thread, or done."""

    messages: list[Record]
    stats: BatchStats
    started: float
    outcome: Future[BatchOutcome]
    # The first and last offset of ``messages`` per partition (offset_spans), found once.
    spans: dict[Partition, tuple[int, int]]


class Worker:
    """Consumes, scores and alerts until :meth:`stop` (or SIGTERM/SIGINT)."""

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: BatchConsumer,
        producer: Producer,
        store: WindowStore,
        model: ModelSource,
        metrics: WorkerMetrics | None = None,
        clock_ms: Callable[[], int] | None = None,
        state_guard: StateGuard | None = None,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.model = model
        self.metrics = metrics or WorkerMetrics()
        self.dead_letters = DeadLetterQueue(producer, settings.dlq_topic, self.metrics)
        self.processor = StreamProcessor(
            store,
            model.current,
            stride=settings.stride,
            policy=settings.alert_policy(),
            clock_ms=clock_ms or (lambda: int(time.time() * 1000)),
            gap_rule=settings.gap_rule(),
        )
        self.max_records = settings.max_poll_records
        self.totals = BatchStats()
        self._stop = threading.Event()
        self._backoff_s = 0.0
        self._assigned: set[Partition] = set()
        self._fatal: str | None = None
        self.state_guard = state_guard
        self._unguarded: set[Partition] = set()  # assigned, states not checked (Redis away)
        self._rewinds: dict[Partition, int] = {}  # partition -> offset to replay from
        # The overlap (module docstring): the thread steps 3-6 run on, the batch there, a
        # failure of it not yet recovered from, and whether partitions changed meanwhile.
        self._model_thread: ThreadPoolExecutor | None = None
        self._in_flight: _InFlight | None = None
        self._failure: tuple[list[Record], StreamAEError] | None = None
        self._partitions_changed = False

    # --- lifecycle -----------------------------------------------------------------------

    def subscribe(self) -> None:
        """Join the group; partition changes reach :meth:`_on_assigned` and
        :meth:`_on_revoked` on the poll thread, between batches."""
        self.consumer.subscribe(
            self.settings.input_topics, on_assigned=self._on_assigned, on_revoked=self._on_revoked
        )

    def _on_revoked(self, revoked: set[Partition]) -> None:
        # Called before the next batch is processed: a revoked partition's cached states are
        # dropped after its last batch was committed, before another worker's writes matter.
        # A batch in flight (overlap) is finished first: no cached state changes under it.
        self._settle_for_partition_change()
        self._assigned -= revoked
        self.metrics.ready = bool(self._assigned)
        for tp in revoked:  # another worker reports its lag now; a stale series would alert
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        dropped = self.processor.forget_partitions(revoked)
        log.info(
            "partitions revoked; their cached states dropped",
            extra=fields(partitions=_tps(revoked), streams=dropped),
        )
        self._guard_states(set(), revoked)

    def _on_assigned(self, assigned: set[Partition]) -> None:
        self._settle_for_partition_change()
        self._assigned |= assigned  # states load lazily, on first event
        self.metrics.ready = bool(self._assigned)
        log.info("partitions assigned", extra=fields(partitions=_tps(assigned)))
        self._check_committed(assigned)
        self._guard_states(assigned, set())

    def _settle_for_partition_change(self) -> None:
        """A partition change during the overlapped poll: the batch in flight is finished
        (flushed, written, committed) before the change is acted on, and what the poll
        gathered is given back (:meth:`_run_overlapped`)."""
        if self._in_flight is not None:
            self._partitions_changed = True
            self._settle(overlapped=True)

    def _check_committed(self, assigned: set[Partition]) -> None:
        """Say loudly when a committed offset is below the log's start (its events were
        deleted): Kafka would reset it by ``auto_offset_reset`` silently; with ``error`` the
        worker stops instead. (Above the end is not checked: some brokers, Tansu among them,
        report an end below the true one after multi-record batches; the client's own fetch
        finds a truly out-of-range offset and applies the same policy.)"""
        try:
            tps = sorted(assigned)
            begin = self.consumer.beginning_offsets(tps)
            committed = self.consumer.committed(tps)
        except BrokerError as exc:  # a metadata hiccup must not break the rebalance
            log.warning("could not check committed offsets", extra=fields(error=str(exc)))
            return
        for tp in tps:
            offset = committed.get(tp)
            if offset is None or offset >= begin[tp]:
                continue
            policy = self.settings.auto_offset_reset
            message = f"committed offset {offset} of {tp} is below the log start {begin[tp]}"
            if policy == "error":
                self._fail(message + " and auto_offset_reset is 'error'")
            else:
                log.warning(message + f"; resetting per auto_offset_reset={policy!r}")

    def _guard_states(self, assigned: set[Partition], revoked: set[Partition]) -> None:
        """Notice partitions whose stored states are older than their committed offsets
        (:mod:`stream_ae.io.state_guard`): log and count them and, under ``state_loss=rewind``,
        replay them from where their states stop. Partitions that could not be checked (Redis
        away) are checked again before the next batch; their events wait until then."""
        if self.state_guard is None:
            return
        self._unguarded = (self._unguarded | assigned) - revoked
        for tp in revoked:
            self._rewinds.pop(tp, None)
        if not self._unguarded:
            return
        try:
            tps = sorted(self._unguarded)
            committed = self.consumer.committed(tps)
            lost = self.state_guard.check(
                {(tp.topic, tp.partition): committed.get(tp) for tp in tps}
            )
            begin = self.consumer.beginning_offsets(tps) if lost else {}
        except Exception as exc:  # Redis or the broker away: the next batch tries again
            log.warning("could not check the stored states", extra=fields(error=str(exc)))
            return
        self._unguarded = set()
        by_key = {(tp.topic, tp.partition): tp for tp in tps}
        for loss in lost:
            tp = by_key[(loss.topic, loss.partition)]
            self.metrics.state_loss.labels(reason=loss.reason).inc()
            self.metrics.state_loss_streams.inc(len(loss.missing_streams))
            start = begin[tp] if loss.replay_from is None else max(loss.replay_from, begin[tp])
            if self.settings.state_loss == "rewind":
                self._rewinds[tp] = start
                action = f"replaying from offset {start} (state_loss=rewind)"
            else:
                action = "windows continue from what is stored (state_loss=warn)"
            if loss.replay_from is not None and loss.replay_from < begin[tp]:
                action += f"; events before {begin[tp]} are gone from the topic"
            log.warning(f"window states lost: {loss.describe()}; {action}")

    def _hold_back(self, messages: list[Record]) -> list[Record]:
        """Drop the batch's events of partitions to replay (seeking them to their replay
        offset) or not yet checked (seeking back to the batch's first offset): whether they
        came before or after the seek, they are read again in order."""
        if not self._rewinds and not self._unguarded:
            return messages
        first: dict[Partition, int] = {}
        kept = []
        for m in messages:
            tp = Partition(m.topic, m.partition)
            if tp in self._rewinds or tp in self._unguarded:
                first[tp] = min(first.get(tp, m.offset), m.offset)
            else:
                kept.append(m)
        for tp, offset in self._rewinds.items():
            self.consumer.seek(tp, offset)
        self._rewinds.clear()
        for tp in self._unguarded:
            if tp in first:
                self.consumer.seek(tp, first[tp])
        if self._unguarded:
            self._stop.wait(min(1.0, self.settings.retry_backoff_max_s))
        return kept

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal received, finishing the current batch", extra=fields(signal=signum))
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def fatal(self) -> str | None:
        """Why the worker stopped for good (None: it did not)."""
        return self._fatal

    def _fail(self, message: str) -> None:
        self._fatal = self._fatal or message
        self.stop()

    def run(self, max_batches: int | None = None) -> int:
        """Poll batches until stopped; then close and return 0 (1 after a fatal error)."""
        batches = 0
        try:
            if self.settings.overlap:
                self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="stream-ae-model")
                self._run_overlapped(max_batches)
            else:
                while not self.stopping and (max_batches is None or batches < max_batches):
                    self.model.between_batches()
                    self.run_batch()
                    batches += 1
        finally:
            self.close()
        if self._fatal:
            log.error(f"stopped: {self._fatal}")
            return 1
        return 0

    def close(self) -> None:
        self.metrics.ready = False
        if self._model_thread is not None:  # a batch left in flight by an error: not finished
            self._model_thread.shutdown(wait=True)
            self._model_thread, self._in_flight = None, None
        try:
            self.consumer.close()
        except BrokerError as exc:
            log.warning("consumer close failed: %s", exc)
        self.producer.close()
        self.model.close()
        log.info("worker stopped", extra=fields(**self.totals.__dict__))

    # --- one batch -----------------------------------------------------------------------

    def run_batch(self) -> BatchStats:
        """One pass of the poll-batch protocol, nothing overlapped (see the module docstring)."""
        polled = self._poll(self.settings.max_batch_wait_ms, self.max_records)
        if polled.error is not None:
            self._recover([], polled.error)
            return BatchStats()
        batch = self._begin(polled, on_model_thread=False)
        if isinstance(batch, BatchStats):
            return batch
        self._settle(overlapped=False)
        failure = self._take_failure()
        if failure is not None:
            self._recover(*failure)
            return BatchStats(consumed=batch.stats.consumed)
        return batch.stats

    def _poll(self, timeout_ms: int, max_records: int, *, decode: bool = False) -> _Polled:
        """1. Poll: bounded in count (max_records) and in wait (timeout_ms). Partition changes
        are applied before and after it, so no stale state is used. ``decode``: step 2's
        decoding too, done ahead (pure: nothing is sent)."""
        self.metrics.heartbeat()
        try:
            messages = self.consumer.poll_batch(timeout_ms, max_records)
        except BrokerError as exc:
            return _Polled([], error=exc)
        polled = _Polled(messages)
        if decode and messages:
            polled.decoded = self._decoded(messages)
        return polled

    def _decoded(self, messages: Sequence[Record]) -> _Decoded:
        """Step 2's decoding alone: the valid events as arrays (:func:`decode_batch`, exactly
        :func:`decode_event` per message) and the bad messages, with the feature names used."""
        names = tuple(self.model.current().artifact.spec.feature_names)
        events, dead = decode_batch(
            messages, feature_names=names, max_bytes=self.settings.max_message_bytes
        )
        return _Decoded(messages, names, events, dead)

    def _begin(self, polled: _Polled, *, on_model_thread: bool = True) -> _InFlight | BatchStats:
        """A polled batch up to its model call: partitions to hold back, step 2 (dead letters
        sent and acknowledged), then steps 3-6 on the model thread (inline without overlap).
        Called with no batch in flight, so the states it loads are the ones written last."""
        messages = polled.messages
        if self.state_guard is not None:
            self._guard_states(set(), set())  # partitions Redis was away for: try again
            messages = self._hold_back(messages)
        stats = BatchStats(consumed=len(messages))
        if not messages:
            return stats
        started = time.perf_counter()
        decoded = polled.decoded
        names = tuple(self.model.current().artifact.spec.feature_names)
        # Decoded ahead with other messages (some held back) or for a model swapped out since:
        # decode again (rare; the decoding is pure).
        if decoded is None or decoded.messages is not messages or decoded.feature_names != names:
            decoded = self._decoded(messages)
        try:
            # 2. Bad messages to the dead-letter topic, acknowledged before anything else
            #    happens, so a retry of this batch does not send or count them again.
            self._dead_letter(messages, decoded.dead, stats)
            spans = offset_spans(messages)
            self.dead_letters.flush(spans)
        except StreamAEError as exc:
            self._recover(messages, exc)
            return stats
        # 3.-6. Load, append, score, alert policy.
        outcome: Future[BatchOutcome]
        if on_model_thread and self._model_thread is not None:
            outcome = self._model_thread.submit(self.processor.process, decoded.events)
        else:
            outcome = Future()
            try:
                outcome.set_result(self.processor.process(decoded.events))
            except Exception as exc:
                outcome.set_exception(exc)
        batch = _InFlight(messages, stats, started, outcome, spans)
        self._in_flight = batch
        return batch

    def _settle(self, *, overlapped: bool) -> None:
        """Finish the batch in flight, if any: wait for its steps 3-6, then 6-8 (alerts
        flushed, states written, offsets committed). A failure is kept for the caller
        (:meth:`_take_failure`), who knows what else was polled meanwhile and must be
        rewound with it. ``overlapped``: the next batch was polled meanwhile."""
        batch, self._in_flight = self._in_flight, None
        if batch is None:
            return
        try:
            outcome = batch.outcome.result()
            if overlapped:
                _fault_point("overlap", len(outcome.alerts))
            self._finish(batch, outcome)
        except StreamAEError as exc:
            self._failure = (batch.messages, exc)

    def _take_failure(self) -> tuple[list[Record], StreamAEError] | None:
        failure, self._failure = self._failure, None
        return failure

    def _finish(self, batch: _InFlight, outcome: BatchOutcome) -> None:
        """Steps 6-8 of a batch whose steps 3-6 are done, then its accounting."""
        for alert in outcome.alerts:
            self.producer.send(
                self.settings.alerts_topic,
                orjson.dumps(alert),
                key=alert["stream"].encode(),
            )
        # 6. Flush the alerts: all acknowledged before the state moves on.
        self.producer.flush(timeout_s=30.0)
        _fault_point("alerts_flushed", len(outcome.alerts))
        # 7. Write the touched states, fenced, one round trip.
        refused = self.processor.save(outcome.touched)
        if refused:
            self.metrics.fenced_refused.inc(len(refused))
            log.warning(
                "fenced writes refused: another worker is ahead on these streams",
                extra=fields(streams=refused[:10], count=len(refused)),
            )
        # 7b. Mark the partitions' states as written up to here (before the commit, so a
        #     healthy store's marker is never behind the committed offset).
        if self.state_guard is not None:
            next_offsets = {
                (tp.topic, tp.partition): last + 1 for tp, (_, last) in batch.spans.items()
            }
            self.state_guard.record(next_offsets, outcome.touched)
        _fault_point("state_written", len(outcome.alerts))
        # 8. Commit what was consumed.
        self._commit(batch.spans)
        self._backoff_s = 0.0
        stats = batch.stats
        stats.applied, stats.skipped = outcome.events_applied, outcome.events_skipped
        stats.windows, stats.alerts = len(outcome.windows.scores), len(outcome.alerts)
        stats.seconds = time.perf_counter() - batch.started
        self._account(stats, outcome.alerts, outcome.model_latency_s)
        self._adapt_batch_size(stats.seconds)

    def _dead_letter(
        self, messages: Sequence[Record], dead: Sequence[DecodeFailure], stats: BatchStats
    ) -> None:
        """Step 2's sends: each bad message to the dead-letter queue."""
        stats.dead_lettered += len(dead)
        for letter in dead:
            self.dead_letters.send(
                messages[letter.index], SchemaError(letter.reason, letter.detail)
            )

    # --- overlapped batches --------------------------------------------------------------

    def _run_overlapped(self, max_batches: int | None) -> None:
        """Batches with each one's steps 3-6 on the model thread while the main thread polls
        and decodes the next (see "Overlap" in the module docstring)."""
        begun = 0
        while True:
            more = not self.stopping and (max_batches is None or begun < max_batches)
            polled = self._poll_overlapped() if more else None
            self._settle(overlapped=polled is not None and bool(polled.messages))
            failure = self._take_failure()
            if failure is not None:  # rewound to the failed batch's offsets, the next dropped
                messages, exc = failure
                self._recover([*messages, *(polled.messages if polled else [])], exc)
                continue
            if polled is None:
                break
            if polled.error is not None:  # rewound to what this poll had gathered
                self._recover(polled.messages, polled.error)
                continue
            if self._partitions_changed:
                self._drop(polled.messages)
                continue
            if self.stopping:
                break  # polled, never begun: nothing of it committed, the next owner reads it
            self.model.between_batches()  # a hot swap takes effect here, no batch in flight
            self._begin(polled)
            begun += 1

    def _poll_overlapped(self) -> _Polled:
        """Step 1 of the next batch, decoded ahead, while the batch in flight (if any) is in
        the model: polled in slices until that batch is done, so finishing it waits one slice
        at most; with none in flight, one poll as :meth:`run_batch` does."""
        self._partitions_changed = False
        if self._in_flight is None:
            return self._poll(self.settings.max_batch_wait_ms, self.max_records, decode=True)
        messages: list[Record] = []
        parts: list[_Decoded] = []
        while True:
            polled = self._poll(OVERLAP_POLL_SLICE_MS, self.max_records - len(messages))
            messages += polled.messages
            if polled.error is not None:
                return _Polled(messages, error=polled.error)
            if polled.messages and not self._partitions_changed:
                parts.append(self._decoded(polled.messages))  # while the model runs
            in_flight = self._in_flight
            if (
                in_flight is None  # finished by a partition change during the poll
                or in_flight.outcome.done()
                or len(messages) >= self.max_records
                or self.stopping
                or self._partitions_changed
            ):
                break
        polled = _Polled(messages)
        if parts and not self._partitions_changed:
            polled.decoded = _joined(messages, parts)
        return polled

    def _drop(self, messages: Sequence[Record]) -> None:
        """Give back records polled while the partitions changed: each partition read again
        from its first offset among them (a revoked one fails to seek: its new owner reads it
        from the committed offset)."""
        for tp, (first, _) in offset_spans(messages).items():
            try:
                self.consumer.seek(tp, first)
            except BrokerError as exc:
                log.info("seek failed", extra=fields(partition=str(tp), error=str(exc)))

    def _commit(self, spans: Mapping[Partition, tuple[int, int]]) -> None:
        """Commit the next offset after each partition's last in ``spans`` (offset_spans)."""
        # A failed commit loses nothing: the replay is skipped by the fenced state.
        self.consumer.commit({tp: last + 1 for tp, (_, last) in spans.items()})

    def _recover(self, messages: Sequence[Record], exc: StreamAEError) -> None:
        """A retriable error: rewind to the batch's first offsets and retry after a backoff,
        nothing committed. A non-retriable one: stop, nothing committed."""
        kind = "store" if isinstance(exc, StoreError) else "broker"
        self.metrics.errors.labels(kind=kind).inc()
        self.producer.discard()
        self.dead_letters.discard()
        self.processor.forget({self._stream_of(m) for m in messages})
        if not exc.retriable:
            self._fail(f"{type(exc).__name__} (not retriable): {exc}")
            return
        for tp, (first, _) in offset_spans(messages).items():
            try:
                self.consumer.seek(tp, first)
            except BrokerError as seek_exc:  # revoked meanwhile: the new owner replays it
                log.warning("seek failed", extra=fields(partition=str(tp), error=str(seek_exc)))
        self._backoff_s = min(max(self._backoff_s * 2, 0.5), self.settings.retry_backoff_max_s)
        log.error(
            f"{kind} unavailable; batch rewound, retrying",
            extra=fields(error=str(exc), backoff_s=self._backoff_s),
        )
        self._stop.wait(self._backoff_s)

    @staticmethod
    def _stream_of(message: Record) -> str:
        try:
            body = orjson.loads(message.value or b"")
            if isinstance(body, dict) and isinstance(body.get("stream"), str):
                return str(body["stream"])
        except (orjson.JSONDecodeError, TypeError):
            pass
        return message.key.decode("utf-8", "replace") if message.key else ""

    def _account(self, stats: BatchStats, alerts: list[dict[str, Any]], model_s: float) -> None:
        m = self.metrics
        m.events.labels(outcome="applied").inc(stats.applied)
        m.events.labels(outcome="skipped").inc(stats.skipped)
        m.events.labels(outcome="dead_lettered").inc(stats.dead_lettered)
        m.windows_scored.inc(stats.windows)
        m.batch_size.observe(stats.consumed)
        m.batch_seconds.observe(stats.seconds)
        if stats.windows:
            m.model_seconds.observe(model_s)
        for alert in alerts:
            m.alerts.labels(status=alert["status"]).inc()
        for name in (
            "consumed",
            "applied",
            "skipped",
            "dead_lettered",
            "windows",
            "alerts",
            "seconds",
        ):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(stats, name))
        for tp, behind in lag(self.consumer, self._assigned).items():
            m.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(behind)

    def _adapt_batch_size(self, seconds: float) -> None:
        """Keep a batch's processing inside its time budget: halve the poll size after a slow
        batch, grow it back slowly after fast ones (bounded by max_poll_records)."""
        budget = self.settings.max_batch_processing_s
        if seconds > budget and self.max_records > 1:
            self.max_records = max(1, self.max_records // 2)
            log.warning(
                "batch over its time budget; polling fewer records",
                extra=fields(seconds=round(seconds, 3), max_records=self.max_records),
            )
        elif seconds < budget / 4 and self.max_records < self.settings.max_poll_records:
            self.max_records = min(self.settings.max_poll_records, int(self.max_records * 1.5) + 1)


def _joined(messages: Sequence[Record], parts: Sequence[_Decoded]) -> _Decoded:
    """The decoding of ``messages`` from the decodings of its consecutive slices ``parts``."""
    if len(parts) == 1:
        return _Decoded(messages, parts[0].feature_names, parts[0].events, parts[0].dead)
    dead: list[DecodeFailure] = []
    shift = 0
    for part in parts:
        dead += [DecodeFailure(d.index + shift, d.reason, d.detail) for d in part.dead]
        shift += len(part.messages)
    batches = [part.events for part in parts]
    events = EventBatch(
        streams=[s for b in batches for s in b.streams],
        ts_ms=np.concatenate([b.ts_ms for b in batches]),
        values=np.concatenate([b.values for b in batches]),
        topics=[t for b in batches for t in b.topics],
        partitions=np.concatenate([b.partitions for b in batches]),
        offsets=np.concatenate([b.offsets for b in batches]),
    )
    return _Decoded(messages, parts[0].feature_names, events, dead)


def _tps(tps: set[Partition]) -> list[str]:
    return sorted(str(tp) for tp in tps)
