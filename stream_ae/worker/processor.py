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
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
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
from stream_ae.core.records import Event, build_alert
from stream_ae.core.scoring import WindowScores
from stream_ae.core.state import StreamState, new_state
from stream_ae.core.windowing import AppendResult, append
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
    :data:`~stream_ae.core.postprocess.STAGES` of the stage that gave it.
    """

    streams: list[str] = field(default_factory=list)
    end_offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    end_ts_ms: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    distances: np.ndarray = field(default_factory=lambda: np.zeros(0))
    final_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stages: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))


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
    hot-swapped model takes effect between batches, never inside one.
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
    ) -> None:
        self.store = store
        self.scorer = scorer
        self.stride = stride
        self.policy = policy
        self.clock_ms = clock_ms
        self.max_cached_streams = max_cached_streams
        self.cache: dict[str, StreamState] = {}
        self.quarantined_total = 0  # undecodable states moved aside since start

    def process(self, events: Sequence[Event]) -> BatchOutcome:
        """Steps 3-6 of the poll-batch protocol (see :mod:`stream_ae.worker.loop`)."""
        scorer = self.scorer()
        spec = scorer.artifact.spec
        by_stream: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            by_stream[event.stream].append(event)

        # 3. Load the states not cached, in one round trip. A stored value that is not a state
        # is moved to a quarantine key, intact, and its stream starts afresh: it stalls neither
        # its own stream nor the others (a replay after a crash finds the key empty and does
        # the same).
        missing = [s for s in by_stream if s not in self.cache]
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

        # 4. Append each stream's events in offset order; replayed offsets are skipped.
        results: dict[str, AppendResult] = {}
        applied = skipped = 0
        for stream, stream_events in by_stream.items():
            results[stream] = result = self._append(self.cache[stream], stream_events)
            applied += result.applied
            skipped += result.skipped

        # 5. Every completed window of the batch in one array, one model call.
        scored_streams = [s for s, r in results.items() if len(r.windows)]
        records = WindowRecords()
        alerts: list[dict[str, Any]] = []
        latency = 0.0
        if scored_streams:
            parts = [results[s] for s in scored_streams]
            windows = np.concatenate([r.windows for r in parts])
            row_streams = [s for s, r in zip(scored_streams, parts, strict=True) for _ in r.windows]
            batch = scorer.score(
                windows,
                row_streams,
                np.concatenate([r.stat_mean for r in parts]),
                np.concatenate([r.stat_std for r in parts]),
            )
            latency = batch.model_latency_s
            end_ts_ms = np.concatenate([r.end_ts_ms for r in parts])
            # 5b. The final score of every window: the post-processing of the distances, all
            # streams at once, each from its own post-processing state.
            post = scorer.artifact.post
            final, stages = _final_scores(post, parts, batch.scores, end_ts_ms)
            records = WindowRecords(
                streams=row_streams,
                end_offsets=np.concatenate([r.end_offsets for r in parts]),
                end_ts_ms=end_ts_ms,
                scores=batch.scores.scores,
                distances=batch.scores.distances,
                final_scores=final,
                stages=stages,
            )
            # 6. The alert policy, per stream over its final scores in order.
            now_ms = self.clock_ms()
            row = 0
            policies: dict[float, AlertPolicy] = {}  # one per default threshold, not stream
            for stream, result in zip(scored_streams, parts, strict=True):
                rows = slice(row, row + len(result.windows))
                row += len(result.windows)
                # The detector's threshold: the post-processing's, else the calibration's.
                default = (
                    post.threshold if post is not None else float(batch.thresholds[rows.start])
                )
                policy = policies.get(default) or policies.setdefault(
                    default, self.policy.with_default_threshold(default)
                )
                alert_state, transitions = policy.step(
                    result.state.alert, final[rows], result.end_offsets
                )
                # In place: append() made this state for this batch (a stream with windows
                # applied events), nothing else holds it yet, and a dataclasses.replace per
                # stream per batch was a measurable share of the batch (docs/performance.md).
                result.state.alert = alert_state
                for index, status in transitions:
                    i = rows.start + index
                    explained = batch.deviations(np.array([i]))  # alerts are rare: on request
                    alerts.append(
                        build_alert(
                            stream=stream,
                            status=status,
                            score=float(final[i]),
                            raw_score=float(batch.scores.scores[i]),
                            stage=STAGES[stages[i]],
                            threshold=float(policy.threshold or default),
                            distance=float(batch.scores.distances[i]),
                            start_ts_ms=int(result.start_ts_ms[index]),
                            end_ts_ms=int(result.end_ts_ms[index]),
                            window_size=spec.window,
                            topic=result.state.topic,
                            partition=result.state.partition,
                            offset=int(result.end_offsets[index]),
                            model_name=scorer.artifact.name,
                            model_version=batch.model_version,
                            feature_names=spec.feature_names,
                            contributions=batch.scores.contributions[i],
                            directions=batch.scores.directions[i],
                            steps=explained.steps[0],
                            observed=explained.observed[0],
                            expected=explained.expected[0],
                            emitted_at_ms=now_ms,
                        )
                    )
        touched = {s: r.state for s, r in results.items() if r.applied}
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

    def _append(self, state: StreamState, events: list[Event]) -> AppendResult:
        # Events of one stream come from one partition in offset order (Kafka keys them so);
        # sorting keeps that true if a producer re-keyed a stream mid-flight.
        events.sort(key=lambda e: (e.topic, e.partition, e.offset))
        first = events[0]
        if any(e.partition != first.partition or e.topic != first.topic for e in events):
            # Rare: a stream moved partitions. Apply per topic-partition run, in order.
            result: AppendResult | None = None
            total_applied = total_skipped = 0
            collected: list[AppendResult] = []
            start = 0
            while start < len(events):
                end = start
                while end < len(events) and (events[end].topic, events[end].partition) == (
                    events[start].topic,
                    events[start].partition,
                ):
                    end += 1
                result = self._append(state if result is None else result.state, events[start:end])
                collected.append(result)
                total_applied += result.applied
                total_skipped += result.skipped
                start = end
            return _merge_results(collected, total_applied, total_skipped)
        return append(
            state,
            # np.array, not np.stack: the same (n, F) array for equal shapes (decode_event
            # guarantees them), at a fraction of np.stack's per-call cost.
            np.array([e.values for e in events]),
            np.fromiter((e.ts_ms for e in events), dtype=np.int64, count=len(events)),
            np.fromiter((e.offset for e in events), dtype=np.int64, count=len(events)),
            topic=first.topic,
            partition=first.partition,
            stride=self.stride,
        )

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


def _final_scores(
    post: PostParams | None,
    parts: list[AppendResult],
    scores: WindowScores,
    end_ts_ms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The final score and stage of every window of ``parts`` (in order); the post-processing
    states of ``parts``' new states are advanced in place.

    A state without a post-processing state of this detector's size (a new stream, a state
    written by format version 1, or one kept across a swap from another post-processing) starts
    from a fresh one.
    """
    if post is None:
        return scores.scores, np.full(len(scores.scores), CALIBRATION, dtype=np.int8)
    fresh = new_post_state(post)
    states = np.stack([r.state.post if r.state.post.shape == fresh.shape else fresh for r in parts])
    lengths = np.fromiter((len(r.windows) for r in parts), dtype=np.int64, count=len(parts))
    result = post_batch(post, states, scores.distances, end_ts_ms, lengths)
    for part, state in zip(parts, result.states, strict=True):
        part.state.post = state  # in place, as the alert state (see process)
    return result.scores, result.stages


def _merge_results(parts: list[AppendResult], applied: int, skipped: int) -> AppendResult:
    last = parts[-1]
    return AppendResult(
        state=last.state,
        windows=np.concatenate([p.windows for p in parts]),
        start_ts_ms=np.concatenate([p.start_ts_ms for p in parts]),
        end_ts_ms=np.concatenate([p.end_ts_ms for p in parts]),
        end_offsets=np.concatenate([p.end_offsets for p in parts]),
        counts=np.concatenate([p.counts for p in parts]),
        stat_mean=np.concatenate([p.stat_mean for p in parts]),
        stat_std=np.concatenate([p.stat_std for p in parts]),
        applied=applied,
        skipped=skipped,
    )
