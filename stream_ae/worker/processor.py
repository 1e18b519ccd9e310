"""The heart of a poll batch, without Kafka: load states, append, score, apply the policy.

The processor runs the whole detector: the model's window score, its calibration, the
post-processing the artifact defines (:mod:`stream_ae.core.postprocess`, whose state is part
of each stream's state) and the alert policy on the resulting *final* score. The evaluators
read the same final scores from :attr:`BatchOutcome.windows`.

:class:`StreamProcessor` is shared by the Kafka worker and the offline evaluator: both feed it
decoded events and get back alerts, per-window scores and the touched states. What it does not
do is I/O with Kafka; writing the states back (:meth:`StreamProcessor.save`) is a separate call
so the worker can put it after the alerts are flushed (see :mod:`stream_ae.worker.loop`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from stream_ae.core.alerting import AlertPolicy
from stream_ae.core.postprocess import (
    CALIBRATION,
    STAGES,
    PostParams,
    new_post_state,
    post_batch,
)
from stream_ae.core.records import Event, EventBatch, build_alert
from stream_ae.core.scoring import WindowScores
from stream_ae.core.state import StreamState, new_state
from stream_ae.core.windowing import NO_GAP_CHECK, GapRule, RunsResult, append_runs
from stream_ae.io.window_store import Undecodable, WindowStore
from stream_ae.logs import fields
from stream_ae.model.inference import Scorer

log = logging.getLogger(__name__)


@dataclass
class WindowRecords:
    """Every window scored in a batch (arrays of equal length), for evaluation and metrics.

    ``distances`` and ``scores`` are the model's: the window's distance and calibrated score;
    ``final_scores`` what the alert policy acted on (the post-processed score, or the calibrated
    one for a detector without post-processing) and ``stages`` the index in
    :data:`~stream_ae.core.postprocess.STAGES` of the stage that gave it. ``gaps``: whether the
    window spans a gap in its stream (only ever true under :class:`GapRule` ``mark``).
    """

    streams: list[str] = field(default_factory=list)
    end_offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    end_ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    distances: np.ndarray = field(default_factory=lambda: np.zeros(0))
    final_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stages: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    gaps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


@dataclass
class BatchOutcome:
    alerts: list[dict[str, Any]]
    touched: dict[str, StreamState]
    windows: WindowRecords
    events_applied: int
    events_skipped: int
    model_latency_s: float
    model_version: str | None
    # Streams whose stored value was not a state: moved to these quarantine keys.
    quarantined: dict[str, str] = field(default_factory=dict)


class StreamProcessor:
    """Applies poll batches of events to window states and scores completed windows.

    ``scorer`` is a callable returning the current :class:`Scorer`, read once per batch, so a
    hot-swapped model takes effect between batches, never inside one. ``gap_rule``: what
    becomes of windows that span a gap in their stream's events (scored as any other by
    default; see :class:`~stream_ae.core.windowing.GapRule`). ``policy``: the alert policy's
    fields the operator set (the settings); the running detector's policy (its artifact's
    ``detector.json``) gives the others, else the built-in ones, so a swapped model brings its
    policy along from the next batch (:meth:`policy_for`).
    """

    def __init__(
        self,
        store: WindowStore,
        scorer: Callable[[], Scorer],
        *,
        stride: int,
        policy: AlertPolicy,
        clock_ms: Callable[[], int],
        max_cached_streams: int = 1_000_000,
        gap_rule: GapRule = NO_GAP_CHECK,
    ) -> None:
        self.store = store
        self.scorer = scorer
        self.stride = stride
        self.policy = policy
        self.clock_ms = clock_ms
        self.max_cached_streams = max_cached_streams
        self.gap_rule = gap_rule
        self.cache: dict[str, StreamState] = {}
        self.quarantined_total = 0  # undecodable states moved aside since start

    def policy_for(self, scorer: Scorer) -> AlertPolicy:
        """The alert policy run on ``scorer``'s windows: the operator's fields over the
        detector's (:meth:`AlertPolicy.over`); its threshold, if neither sets one, is the
        detector's score threshold, stream by stream."""
        return self.policy.over(scorer.artifact.policy)

    def process(self, events: Sequence[Event] | EventBatch) -> BatchOutcome:
        """Steps 3-6 of the poll-batch protocol (see :mod:`stream_ae.worker.loop`).

        The batch is grouped by stream once, with array operations, and every stream's run of
        events is applied in one :func:`~stream_ae.core.windowing.append_runs` call: the
        Python work per stream is a few object constructions, none per event.
        """
        scorer = self.scorer()
        spec = scorer.artifact.spec
        if not isinstance(events, EventBatch):
            events = EventBatch.from_events(events, spec.features)
        if not len(events):
            return BatchOutcome([], {}, WindowRecords(), 0, 0, 0.0, scorer.version)
        runs = _Runs.of(events)
        streams = runs.streams

        # 3. Load the states not cached, in one round trip. A stored value that is not a state
        # is moved to a quarantine key, intact, and its stream starts afresh: it stalls neither
        # its own stream nor the others (a replay after a crash finds the key empty and does
        # the same).
        missing = [s for s in streams if s not in self.cache]
        quarantined: dict[str, str] = {}
        if missing:
            undecodable: dict[str, Undecodable] = {}
            for stream, state in self.store.load(missing).items():
                if isinstance(state, Undecodable):
                    undecodable[stream] = state
                    state = None
                self.cache[stream] = state or new_state(spec.window, spec.features)
            if undecodable:
                quarantined = self._quarantine(undecodable)

        # 4. Append each stream's events in offset order, all streams at once; replayed offsets
        # are skipped.
        states, applied_per_stream, found = _apply_runs(
            list(map(self.cache.__getitem__, streams)), events, runs, self.stride, self.gap_rule
        )
        applied = int(applied_per_stream.sum())
        skipped = len(events) - applied

        # 5. Every completed window of the batch in one array, one model call.
        records = WindowRecords()
        alerts: list[dict[str, Any]] = []
        latency = 0.0
        if len(found.windows):
            owner = found.run  # the stream (index into streams) of each window, grouped
            row_streams = [streams[i] for i in owner.tolist()]
            batch = scorer.score(found.windows, row_streams, found.stat_mean, found.stat_std)
            latency = batch.model_latency_s
            scored, first_rows, lengths = np.unique(owner, return_index=True, return_counts=True)
            scored_states = [states[i] for i in scored.tolist()]
            # 5b. The final score of every window: the post-processing of the distances, all
            # streams at once, each from its own post-processing state.
            post = scorer.artifact.post
            final, stages = _final_scores(
                post, scored_states, lengths, batch.scores, found.end_ts_ms, found.windows
            )
            records = WindowRecords(
                streams=row_streams,
                end_offsets=found.end_offsets,
                end_ts_ms=found.end_ts_ms,
                scores=batch.scores.scores,
                distances=batch.scores.distances,
                final_scores=final,
                stages=stages,
                gaps=found.gaps,
            )
            # 6. The alert policy, per stream over its final scores in order: all streams at
            # once, window index by window index. The detector's threshold, where the policy
            # has none: the post-processing's, else the calibration's. The policy is resolved
            # once per batch, from the model read for it (a swap takes it from the next batch).
            policy = self.policy_for(scorer)
            now_ms = self.clock_ms()
            defaults = (
                np.full(len(scored), post.threshold)
                if post is not None
                else np.asarray(batch.thresholds, dtype=np.float64)[first_rows]
            )
            alert_states, transitions = policy.step_streams(
                [state.alert for state in scored_states],
                final,
                first_rows,
                lengths,
                found.end_offsets,
                thresholds=defaults,
            )
            for state, alert_state in zip(scored_states, alert_states, strict=True):
                # In place: append_runs made this state for this batch (a stream with windows
                # applied events), nothing else holds it yet, and a dataclasses.replace per
                # stream per batch was a measurable share of the batch (docs/performance.md).
                state.alert = alert_state
            for k, i, status in transitions:
                stream_index, state = int(scored[k]), scored_states[k]
                threshold = policy.threshold if policy.threshold is not None else defaults[k]
                explained = batch.deviations(np.array([i]))  # alerts are rare: on request
                alerts.append(
                    build_alert(
                        stream=streams[stream_index],
                        status=status,
                        score=float(final[i]),
                        raw_score=float(batch.scores.scores[i]),
                        stage=STAGES[stages[i]],
                        threshold=float(threshold),
                        distance=float(batch.scores.distances[i]),
                        start_ts_ms=int(found.start_ts_ms[i]),
                        end_ts_ms=int(found.end_ts_ms[i]),
                        window_size=spec.window,
                        topic=state.topic,
                        partition=state.partition,
                        offset=int(found.end_offsets[i]),
                        model_name=scorer.artifact.name,
                        model_version=batch.model_version,
                        feature_names=spec.feature_names,
                        contributions=batch.scores.contributions[i],
                        directions=batch.scores.directions[i],
                        steps=explained.steps[0],
                        observed=explained.observed[0],
                        expected=explained.expected[0],
                        emitted_at_ms=now_ms,
                        gap=bool(found.gaps[i]) if self.gap_rule.checks else None,
                    )
                )
        touched = {streams[i]: states[i] for i in np.flatnonzero(applied_per_stream).tolist()}
        self.cache.update(touched)
        return BatchOutcome(
            alerts=alerts,
            touched=touched,
            windows=records,
            events_applied=applied,
            events_skipped=skipped,
            model_latency_s=latency,
            model_version=scorer.version,
            quarantined=quarantined,
        )

    def _quarantine(self, undecodable: dict[str, Undecodable]) -> dict[str, str]:
        moved = self.store.quarantine(list(undecodable))
        self.quarantined_total += len(undecodable)
        for stream, value in undecodable.items():
            log.warning(
                "undecodable window state quarantined; the stream starts afresh",
                extra=fields(
                    stream=stream,
                    reason=value.reason[:200],
                    bytes=None if value.raw is None else len(value.raw),
                    quarantine_key=moved.get(stream),
                ),
            )
        return moved

    def save(self, touched: dict[str, StreamState]) -> list[str]:
        """Step 7: write the touched states back, fenced, in one round trip.

        Returns the streams whose write was refused by the fence (a newer state is stored:
        another worker owns them now); their cached states are dropped.
        """
        landed = self.store.save(touched)
        refused = [stream for stream, ok in landed.items() if not ok]
        for stream in refused:
            self.cache.pop(stream, None)
        if len(self.cache) > self.max_cached_streams:
            self.cache.clear()  # cheap bound on memory; states reload lazily
        return refused

    def forget_partitions(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Drop cached states of streams last seen on these topic-partitions (on revoke)."""
        gone = set(partitions)
        drop = [s for s, st in self.cache.items() if (st.topic, st.partition) in gone]
        for stream in drop:
            del self.cache[stream]
        return len(drop)

    def forget(self, streams: Iterable[str]) -> None:
        for stream in streams:
            self.cache.pop(stream, None)


@dataclass(frozen=True)
class _Runs:
    """A batch grouped by stream with array operations: ``order`` sorts the events by
    (stream, topic, partition, offset), streams numbered by first appearance; the sorted events
    form runs of one stream and one topic-partition (``run_starts``, ``run_stream``), and
    ``run_round`` numbers each stream's runs (0 for all but a stream that moved partitions)."""

    streams: list[str]
    order: np.ndarray
    run_starts: np.ndarray  # (R + 1,) bounds into the sorted events
    run_stream: np.ndarray  # (R,)
    run_round: np.ndarray  # (R,)

    @classmethod
    def of(cls, events: EventBatch) -> _Runs:
        # Stream numbers in order of first appearance: dict.fromkeys and map run in C.
        index = {stream: i for i, stream in enumerate(dict.fromkeys(events.streams))}
        codes = np.fromiter(map(index.__getitem__, events.streams), np.int64, len(events))
        topic_index = {topic: i for i, topic in enumerate(dict.fromkeys(events.topics))}
        topic_codes = (
            np.fromiter(map(topic_index.__getitem__, events.topics), np.int64, len(events))
            if len(topic_index) > 1
            else np.zeros(len(events), dtype=np.int64)
        )
        # Topics sort by name, as the per-stream sort by (topic, partition, offset) did.
        names = list(topic_index)
        rank = np.empty(len(names), dtype=np.int64)
        rank[sorted(range(len(names)), key=names.__getitem__)] = np.arange(len(names))
        topic_rank = rank[topic_codes]
        order = np.lexsort((events.offsets, events.partitions, topic_rank, codes))
        code, topic, partition = codes[order], topic_rank[order], events.partitions[order]
        change = np.flatnonzero(
            (code[1:] != code[:-1]) | (topic[1:] != topic[:-1]) | (partition[1:] != partition[:-1])
        )
        run_starts = np.concatenate(([0], change + 1, [len(order)])).astype(np.int64)
        run_stream = code[run_starts[:-1]]
        # A run's round: its index among its stream's runs (runs of a stream are adjacent).
        first_run = np.flatnonzero(np.diff(run_stream, prepend=-1) != 0)
        run_round = np.arange(len(run_stream)) - np.repeat(
            first_run, np.diff(first_run, append=len(run_stream))
        )
        return cls(list(index), order, run_starts, run_stream, run_round)


def _apply_runs(
    states: list[StreamState],
    events: EventBatch,
    runs: _Runs,
    stride: int,
    gap_rule: GapRule = NO_GAP_CHECK,
) -> tuple[list[StreamState], np.ndarray, RunsResult]:
    """Apply a batch grouped by :class:`_Runs` to the states of ``runs.streams``.

    Returns every stream's new state, its applied event count, and the completed windows with
    ``run`` set to the stream's index, grouped by stream in order. A stream whose events came
    from several topic-partitions (rare: it was re-keyed mid-flight) has its runs applied in
    rounds, each from the state the previous left.
    """
    order = runs.order
    values, ts_ms, offsets = events.values[order], events.ts_ms[order], events.offsets[order]
    partitions = events.partitions[order]
    lengths = np.diff(runs.run_starts)
    states = list(states)
    applied = np.zeros(len(states), dtype=np.int64)
    found: list[tuple[np.ndarray, RunsResult]] = []
    for round_number in range(int(runs.run_round.max()) + 1 if len(lengths) else 0):
        chosen = np.flatnonzero(runs.run_round == round_number)
        if len(chosen) == len(lengths):
            rows: slice | np.ndarray = slice(None)
        else:
            rows = np.concatenate(
                [np.arange(runs.run_starts[r], runs.run_starts[r + 1]) for r in chosen.tolist()]
            )
        owners = runs.run_stream[chosen]
        starts = runs.run_starts[chosen].tolist()
        result = append_runs(
            [states[i] for i in owners.tolist()],
            values[rows],
            ts_ms[rows],
            offsets[rows],
            lengths[chosen],
            topics=[events.topics[order[start]] for start in starts],
            partitions=[int(partitions[start]) for start in starts],
            stride=stride,
            gap_rule=gap_rule,
        )
        for i, state in zip(owners.tolist(), result.states, strict=True):
            states[i] = state
        applied[owners] += result.applied
        found.append((owners, result))
    if len(found) == 1:
        owners, only = found[0]
        return states, applied, replace(only, run=owners[only.run])
    return states, applied, _merge_rounds(found)


def _merge_rounds(found: list[tuple[np.ndarray, RunsResult]]) -> RunsResult:
    """The windows of several rounds, grouped by stream (a stable sort keeps each stream's
    earlier rounds first)."""
    owner = np.concatenate([owners[r.run] for owners, r in found])
    by_stream = np.argsort(owner, kind="stable")
    parts = [r for _, r in found]

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])[by_stream]

    return RunsResult(
        states=[],
        applied=np.zeros(0, dtype=np.int64),
        run=owner[by_stream],
        windows=joined("windows"),
        start_ts_ms=joined("start_ts_ms"),
        end_ts_ms=joined("end_ts_ms"),
        end_offsets=joined("end_offsets"),
        counts=joined("counts"),
        stat_mean=joined("stat_mean"),
        stat_std=joined("stat_std"),
        gaps=joined("gaps"),
    )


def _final_scores(
    post: PostParams | None,
    states: list[StreamState],
    lengths: np.ndarray,
    scores: WindowScores,
    end_ts_ms: np.ndarray,
    windows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The final score and stage of every window (grouped by stream: ``lengths[i]`` windows of
    ``states[i]``, in order); the post-processing states of ``states`` are advanced in place.

    A state without a post-processing state of this detector's size (a new stream, a state
    written by format version 1, or one kept across a swap from another post-processing) starts
    from a fresh one. ``windows`` are the windows' values (the range check reads them).
    """
    if post is None:
        return scores.scores, np.full(len(scores.scores), CALIBRATION, dtype=np.int8)
    fresh = new_post_state(post, windows.shape[2])
    stacked = np.stack([s.post if s.post.shape == fresh.shape else fresh for s in states])
    values = windows if post.range is not None else None
    result = post_batch(post, stacked, scores.distances, end_ts_ms, lengths, values)
    for state, post_state in zip(states, result.states, strict=True):
        state.post = post_state  # in place, as the alert state (see process)
    return result.scores, result.stages
