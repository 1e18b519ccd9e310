"""Properties of the one windowing implementation (stream_ae.core.windowing).

The worker, the evaluator and the trainer all cut windows with :func:`append`; the crash-replay
guarantee rests on it: any split of a stream into poll batches, and any replay of events
already applied, must give bit-identical windows, statistics and stored bytes.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_ae.core.alerting import NO_OFFSET, AlertState
from stream_ae.core.state import StreamState, new_state
from stream_ae.core.state_codec import (
    FORMAT_VERSION,
    HEADER_SIZE,
    decode_state,
    decode_states,
    encode_state,
    encode_states,
)
from stream_ae.core.windowing import (
    GAP_POLICIES,
    NO_GAP_CHECK,
    AppendResult,
    GapRule,
    append,
    append_runs,
    series_windows,
    window_gaps,
)
from stream_ae.errors import StateFormatError, StateShapeError

TOPIC, PARTITION = "metrics", 3
# Timestamps up to +-2**60 ms keep every delta-of-delta inside int64 (the encoder's domain).
TS_BOUND = 2**60
FLOAT32 = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Events:
    """A run of events of one stream on one topic-partition."""

    values: np.ndarray  # (N, F) float32
    ts_ms: np.ndarray  # (N,) int64
    offsets: np.ndarray  # (N,) int64, strictly increasing

    def __len__(self) -> int:
        return len(self.offsets)

    def part(self, start: int, stop: int) -> Events:
        return Events(self.values[start:stop], self.ts_ms[start:stop], self.offsets[start:stop])


@st.composite
def event_runs(
    draw: st.DrawFn, max_events: int = 40, features: int | None = None
) -> tuple[int, int, int, Events]:
    """(window, features, stride, events) with irregular, negative and huge timestamp steps
    and offsets with gaps (compacted topics, transaction markers)."""
    window = draw(st.integers(1, 8))
    f = features or draw(st.integers(1, 3))
    stride = draw(st.integers(1, 4))
    n = draw(st.integers(0, max_events))
    values = np.array(
        draw(st.lists(st.lists(FLOAT32, min_size=f, max_size=f), min_size=n, max_size=n)),
        dtype=np.float32,
    ).reshape(n, f)
    ts = np.array(
        draw(st.lists(st.integers(-TS_BOUND, TS_BOUND), min_size=n, max_size=n)), dtype=np.int64
    )
    gaps = draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n))
    first = draw(st.integers(0, 10**12))
    offsets = first + np.cumsum(np.array(gaps, dtype=np.int64)) if n else np.zeros(0, np.int64)
    return window, f, stride, Events(values, ts, offsets.astype(np.int64))


def cut_points(n: int) -> st.SearchStrategy[list[int]]:
    """Sorted batch boundaries strictly inside ``0..n``."""
    if n < 2:
        return st.just([])
    return st.lists(st.integers(1, n - 1), unique=True, max_size=n).map(sorted)


def apply(
    state: StreamState, events: Events, stride: int, gap_rule: GapRule = NO_GAP_CHECK
) -> AppendResult:
    return append(
        state,
        events.values,
        events.ts_ms,
        events.offsets,
        topic=TOPIC,
        partition=PARTITION,
        stride=stride,
        gap_rule=gap_rule,
    )


def apply_in_batches(
    state: StreamState,
    events: Events,
    cuts: list[int],
    stride: int,
    gap_rule: GapRule = NO_GAP_CHECK,
) -> tuple[StreamState, list[AppendResult]]:
    results = []
    for start, stop in zip([0, *cuts], [*cuts, len(events)], strict=True):
        result = apply(state, events.part(start, stop), stride, gap_rule)
        results.append(result)
        state = result.state
    return state, results


def concat(results: list[AppendResult], name: str) -> np.ndarray:
    return np.concatenate([getattr(r, name) for r in results])


WINDOW_FIELDS = ("windows", "start_ts_ms", "end_ts_ms", "end_offsets", "counts", "stat_mean")
GAP_RULES = [GapRule(policy, periods) for policy in GAP_POLICIES for periods in (3.0, 10.0)]


# --- split invariance ----------------------------------------------------------------------


def random_run(rng: np.random.Generator, start_offset: int, n: int, features: int) -> Events:
    """``n`` events with values over many magnitudes (rounding differences would show)."""
    scale = 10.0 ** rng.uniform(-3, 6, size=(n, 1))
    values = (rng.normal(size=(n, features)) * scale).astype(np.float32)
    ts = 1_700_000_000_000 + np.cumsum(rng.integers(-5, 2000, size=n))
    offsets = start_offset + np.cumsum(rng.integers(1, 4, size=n))
    return Events(values, ts.astype(np.int64), offsets.astype(np.int64))


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    window=st.integers(1, 6),
    features=st.integers(1, 3),
    stride=st.integers(1, 3),
    runs=st.integers(1, 60),
)
def test_append_runs_across_streams_equals_append_per_stream_bit_for_bit(
    seed: int, window: int, features: int, stride: int, runs: int
) -> None:
    """The batch path (one call for every stream of a poll batch, its running statistics
    stepped across streams) gives each stream exactly what :func:`append` alone gives it:
    windows, statistics, skipped replays, state and stored bytes."""
    rng = np.random.default_rng(seed)
    states, batches, partitions = [], [], []
    for i in range(runs):
        partition = int(rng.integers(0, 3))
        history = random_run(rng, 0, int(rng.integers(0, 3 * window + 2)), features)
        state = new_state(window, features)
        if len(history):
            state = append(
                state,
                history.values,
                history.ts_ms,
                history.offsets,
                topic=TOPIC,
                partition=i % 3,
                stride=stride,
            ).state
        # Some runs start inside what was applied (a replay), some on another partition.
        start = max(int(state.offset) - int(rng.integers(0, 4)), 0)
        states.append(state)
        batches.append(random_run(rng, start, int(rng.integers(0, 12)), features))
        partitions.append(partition)
    alone = [
        append(s, b.values, b.ts_ms, b.offsets, topic=TOPIC, partition=p, stride=stride)
        for s, b, p in zip(states, batches, partitions, strict=True)
    ]
    together = append_runs(
        states,
        np.concatenate([b.values for b in batches]),
        np.concatenate([b.ts_ms for b in batches]),
        np.concatenate([b.offsets for b in batches]),
        np.array([len(b) for b in batches]),
        topics=[TOPIC] * runs,
        partitions=partitions,
        stride=stride,
    )
    assert together.applied.tolist() == [r.applied for r in alone]
    for one, state in zip(alone, together.states, strict=True):
        assert state.same_as(one.state)
        assert encode_state(state) == encode_state(one.state)
    assert together.run.tolist() == [i for i, r in enumerate(alone) for _ in r.windows]
    for name in (*WINDOW_FIELDS, "stat_std"):
        expected = concat(alone, name)
        assert np.array_equal(
            getattr(together, name), expected.reshape(getattr(together, name).shape)
        )
        assert getattr(together, name).dtype == expected.dtype


@FAST
@given(data=st.data(), run=event_runs())
def test_any_split_into_batches_gives_the_same_windows_state_and_bytes(
    data: st.DataObject, run: tuple[int, int, int, Events]
) -> None:
    window, features, stride, events = run
    cuts = data.draw(cut_points(len(events)), label="cuts")
    whole = apply(new_state(window, features), events, stride)
    final, parts = apply_in_batches(new_state(window, features), events, cuts, stride)

    for name in (*WINDOW_FIELDS, "stat_std"):
        assert np.array_equal(concat(parts, name), getattr(whole, name)), name
    assert sum(p.applied for p in parts) == whole.applied == len(events)
    assert final.same_as(whole.state)
    assert encode_state(final) == encode_state(whole.state)
    # Running statistics bit-identical, not merely close: the Redis bytes are compared.
    assert np.array_equal(final.stat_mean, whole.state.stat_mean)
    assert np.array_equal(final.stat_m2, whole.state.stat_m2)


def test_event_by_event_statistics_equal_one_batch_bit_for_bit() -> None:
    # Values far from zero with a small spread: where a batch-merge formula rounds differently.
    rng = np.random.default_rng(7)
    values = (1e5 + rng.normal(size=(500, 2)) * [0.3, 40.0]).astype(np.float32)
    events = Events(values, np.arange(500) * 1000, np.arange(500))
    whole = apply(new_state(16, 2), events, stride=1)
    state = new_state(16, 2)
    for i in range(len(events)):
        state = apply(state, events.part(i, i + 1), stride=1).state
    assert encode_state(state) == encode_state(whole.state)


def test_running_statistics_are_the_mean_and_sample_std_of_every_value_so_far() -> None:
    rng = np.random.default_rng(3)
    values = (50 + 10 * rng.normal(size=(200, 3))).astype(np.float32)
    result = apply(new_state(5, 3), Events(values, np.arange(200), np.arange(200)), stride=7)
    for k, count in enumerate(result.counts):
        seen = values[:count].astype(np.float64)
        np.testing.assert_allclose(result.stat_mean[k], seen.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(result.stat_std[k], seen.std(axis=0, ddof=1), rtol=1e-9)
    np.testing.assert_allclose(
        result.state.stat_std(), values.astype(np.float64).std(axis=0, ddof=1), rtol=1e-9
    )


def test_std_has_a_floor_and_is_one_before_two_values() -> None:
    constant = Events(np.full((4, 1), 2.5, np.float32), np.arange(4), np.arange(4))
    result = apply(new_state(1, 1), constant, stride=1)
    assert result.stat_std[0].tolist() == [1.0]  # one value: no spread yet
    assert result.stat_std[1:, 0].tolist() == [1e-6] * 3
    assert new_state(3, 2).stat_std().tolist() == [1.0, 1.0]


# --- replay ---------------------------------------------------------------------------------


@FAST
@given(data=st.data(), run=event_runs())
def test_replaying_events_already_applied_changes_nothing(
    data: st.DataObject, run: tuple[int, int, int, Events]
) -> None:
    window, features, stride, events = run
    n = len(events)
    applied_upto = data.draw(st.integers(0, n), label="applied_upto")
    state = apply(new_state(window, features), events.part(0, applied_upto), stride).state
    before = encode_state(state)

    replay_from = data.draw(st.integers(0, applied_upto), label="replay_from")
    replay = apply(state, events.part(replay_from, applied_upto), stride)
    assert replay.applied == 0 and replay.skipped == applied_upto - replay_from
    assert len(replay.windows) == 0
    assert encode_state(replay.state) == before

    # A re-polled batch that straddles the stored offset applies exactly the new tail.
    stop = data.draw(st.integers(applied_upto, n), label="stop")
    straddling = apply(state, events.part(replay_from, stop), stride)
    fresh = apply(state, events.part(applied_upto, stop), stride)
    assert straddling.skipped == applied_upto - replay_from
    assert straddling.applied == stop - applied_upto
    for name in (*WINDOW_FIELDS, "stat_std"):
        assert np.array_equal(getattr(straddling, name), getattr(fresh, name)), name
    assert encode_state(straddling.state) == encode_state(fresh.state)


def test_lower_offsets_of_another_partition_or_topic_are_applied() -> None:
    events = Events(np.ones((3, 1), np.float32), np.arange(3), np.array([100, 101, 102]))
    state = apply(new_state(2, 1), events, stride=1).state
    assert state.position() == (TOPIC, PARTITION, 102)

    def low_offsets_from(topic: str, partition: int) -> AppendResult:
        return append(
            state,
            np.zeros((2, 1)),
            np.array([5, 6]),
            np.array([0, 1]),
            topic=topic,
            partition=partition,
            stride=1,
        )

    moved = low_offsets_from(TOPIC, PARTITION + 1)
    assert moved.applied == 2 and moved.state.position() == (TOPIC, PARTITION + 1, 1)
    assert low_offsets_from("other", PARTITION).applied == 2
    same = low_offsets_from(TOPIC, PARTITION)
    assert same.applied == 0 and same.skipped == 2


def test_append_does_not_modify_its_input_state() -> None:
    state = apply(
        new_state(3, 1), Events(np.ones((4, 1), np.float32), np.arange(4), np.arange(4)), 1
    ).state
    before = encode_state(state)
    apply(state, Events(np.full((5, 1), 9, np.float32), np.arange(5), np.arange(4, 9)), 1)
    assert encode_state(state) == before


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="same length"):
        append(
            new_state(2, 1),
            np.zeros((3, 1)),
            np.arange(2),
            np.arange(3),
            topic="t",
            partition=0,
            stride=1,
        )


# --- the stride rule --------------------------------------------------------------------------


@FAST
@given(run=event_runs(max_events=60))
def test_windows_complete_where_count_minus_window_is_a_multiple_of_stride(
    run: tuple[int, int, int, Events],
) -> None:
    window, features, stride, events = run
    result = apply(new_state(window, features), events, stride)
    counts = np.arange(1, len(events) + 1)
    expected = counts[(counts >= window) & ((counts - window) % stride == 0)]
    assert result.counts.tolist() == expected.tolist()
    assert len(result.windows) == max(0, (len(events) - window) // stride + 1)
    for k, count in enumerate(expected):
        assert np.array_equal(result.windows[k], events.values[count - window : count])
        assert result.start_ts_ms[k] == events.ts_ms[count - window]
        assert result.end_ts_ms[k] == events.ts_ms[count - 1]
        assert result.end_offsets[k] == events.offsets[count - 1]
    assert result.windows.shape[1:] == (window, features)
    assert result.windows.dtype == np.float32


def test_stride_example() -> None:
    result = series_windows(np.arange(10, dtype=np.float32), window=4, stride=3)
    assert result.windows[:, :, 0].tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert result.counts.tolist() == [4, 7, 10]


@FAST
@given(run=event_runs(max_events=30))
def test_series_windows_equals_appending_one_event_at_a_time(
    run: tuple[int, int, int, Events],
) -> None:
    window, features, stride, events = run
    whole = series_windows(events.values, window, stride, ts_ms=events.ts_ms)
    state = new_state(window, features)
    parts = []
    for i in range(len(events)):
        result = append(
            state,
            events.values[i : i + 1],
            events.ts_ms[i : i + 1],
            np.array([i]),
            topic="",
            partition=-1,
            stride=stride,
        )
        parts.append(result)
        state = result.state
    if parts:
        for name in (*WINDOW_FIELDS, "stat_std"):
            assert np.array_equal(concat(parts, name), getattr(whole, name)), name
    assert encode_state(state) == encode_state(whole.state)


def test_series_windows_accepts_a_1d_series_with_default_timestamps() -> None:
    result = series_windows(np.array([1.0, 2.0, 3.0]), window=2)
    assert result.windows.shape == (2, 2, 1)
    assert result.start_ts_ms.tolist() == [0, 1] and result.end_offsets.tolist() == [1, 2]


# --- gaps in a live stream --------------------------------------------------------------------


@st.composite
def gapped_runs(draw: st.DrawFn, max_events: int = 50) -> tuple[int, int, Events]:
    """(window, stride, events) of a stream that mostly ticks at a steady period with jitter,
    and pauses now and then (a few to a thousand periods), sometimes with a repeated or a
    backward timestamp: the cases where a gap rule has something to decide."""
    window = draw(st.integers(2, 8), label="window")
    stride = draw(st.integers(1, 3), label="stride")
    n = draw(st.integers(0, max_events), label="n")
    period = draw(st.integers(1, 60_000), label="period")
    steps = draw(
        st.lists(
            st.one_of(
                st.integers(period - period // 10, period + period // 10),  # jitter
                st.integers(2 * period, 1000 * period),  # a pause
                st.sampled_from([0, -period]),  # a repeated, a backward timestamp
            ),
            min_size=n,
            max_size=n,
        ),
        label="steps",
    )
    ts = 1_700_000_000_000 + np.cumsum(np.array(steps, dtype=np.int64))
    values = np.arange(n, dtype=np.float32)[:, None] * 0.5
    offsets = 10 + np.arange(n, dtype=np.int64) * 2
    return window, stride, Events(values, ts.astype(np.int64), offsets)


def reference_gaps(ts_ms: np.ndarray, periods: float) -> list[bool]:
    """window_gaps spelt out one window at a time, for comparison."""
    out = []
    for row in ts_ms.tolist():
        spacings = sorted(b - a for a, b in itertools.pairwise(row))
        if len(spacings) < 2:
            out.append(False)
            continue
        period = spacings[(len(spacings) - 1) // 2]  # the lower median
        out.append(period > 0 and max(spacings) > periods * period)
    return out


@FAST
@given(data=st.data(), run=gapped_runs(), rule=st.sampled_from(GAP_RULES))
def test_any_split_and_any_replay_give_the_same_windows_and_gap_flags_under_each_gap_policy(
    data: st.DataObject, run: tuple[int, int, Events], rule: GapRule
) -> None:
    window, stride, events = run
    cuts = data.draw(cut_points(len(events)), label="cuts")
    whole = apply(new_state(window, 1), events, stride, rule)
    final, parts = apply_in_batches(new_state(window, 1), events, cuts, stride, rule)
    for name in (*WINDOW_FIELDS, "stat_std", "gaps"):
        assert np.array_equal(concat(parts, name), getattr(whole, name)), name
    assert encode_state(final) == encode_state(whole.state)
    # A crash after some batch: the next owner re-polls from an earlier offset; the events
    # already applied are skipped and the rest gives the same windows and flags.
    crash = data.draw(st.integers(0, len(events)), label="crash")
    resume = data.draw(st.integers(0, crash), label="resume")
    before = apply(new_state(window, 1), events.part(0, crash), stride, rule)
    after = apply(before.state, events.part(resume, len(events)), stride, rule)
    for name in (*WINDOW_FIELDS, "gaps"):
        assert np.array_equal(
            np.concatenate([getattr(before, name), getattr(after, name)]), getattr(whole, name)
        ), name
    assert encode_state(after.state) == encode_state(whole.state)


@FAST
@given(run=gapped_runs(), periods=st.sampled_from([1.5, 3.0, 10.0]))
def test_mark_flags_exactly_the_windows_across_a_gap_and_restart_drops_them(
    run: tuple[int, int, Events], periods: float
) -> None:
    """score is what the worker always did; mark scores the same windows and flags those whose
    timestamps span a gap; restart produces the unflagged ones only, everything else equal."""
    window, stride, events = run
    plain = apply(new_state(window, 1), events, stride)  # no rule given: what it always did
    score, mark, restart = (
        apply(new_state(window, 1), events, stride, GapRule(policy, periods))
        for policy in ("score", "mark", "restart")
    )
    ts_of_windows = np.array(
        [events.ts_ms[c - window : c] for c in plain.counts.tolist()], dtype=np.int64
    ).reshape(-1, window)
    expected = np.array(reference_gaps(ts_of_windows, periods), dtype=bool)
    for name in (*WINDOW_FIELDS, "stat_std"):
        assert np.array_equal(getattr(score, name), getattr(plain, name)), name
        assert np.array_equal(getattr(mark, name), getattr(plain, name)), name
        kept = getattr(plain, name)[~expected]
        assert np.array_equal(getattr(restart, name), kept), name
    assert not score.gaps.any() and not restart.gaps.any() and not plain.gaps.any()
    assert mark.gaps.tolist() == expected.tolist()
    # The state does not depend on the rule: a worker may change it between two runs.
    assert encode_state(score.state) == encode_state(mark.state) == encode_state(restart.state)


def test_a_pause_of_a_regular_stream_is_marked_in_every_window_across_it_then_restarted() -> None:
    """A 60 s stream pauses 20 minutes (20 periods) after its 6th event: with W=4 the three
    windows whose events straddle the pause are flagged under mark, and under restart the first
    window is the one that starts at the first event after the pause."""
    ts = np.concatenate([np.arange(6) * 60_000, 5 * 60_000 + 1_200_000 + np.arange(6) * 60_000])
    events = Events(np.arange(12, dtype=np.float32)[:, None], ts, np.arange(12))
    mark = apply(new_state(4, 1), events, 1, GapRule("mark", 10.0))
    assert mark.counts.tolist() == list(range(4, 13))
    assert mark.gaps.tolist() == [False, False, False, True, True, True, False, False, False]
    restart = apply(new_state(4, 1), events, 1, GapRule("restart", 10.0))
    assert restart.counts.tolist() == [4, 5, 6, 10, 11, 12]
    assert restart.start_ts_ms[3] == ts[6]  # the first event after the pause
    # 20 periods is not a gap when 30 make one; exactly N periods is not more than N either.
    assert not apply(new_state(4, 1), events, 1, GapRule("mark", 30.0)).gaps.any()
    exactly = np.array([[0, 60, 120, 120 + 600]])
    assert window_gaps(exactly, 10.0).tolist() == [False]
    assert window_gaps(exactly + np.array([[0, 0, 0, 1]]), 10.0).tolist() == [True]


def test_the_period_is_the_lower_median_of_the_windows_spacings() -> None:
    # Spacings 10, 10, 500, 10 -> period 10: 500 > 10 x 10. Two short spacings of a window of 3
    # (10 and 500): the lower median is 10, so even a small window sees its gap.
    assert window_gaps(np.array([[0, 10, 20, 520, 530]]), 10.0).tolist() == [True]
    assert window_gaps(np.array([[0, 10, 510]]), 10.0).tolist() == [True]
    # Repeated timestamps (period 0) and a window of two events never make a gap.
    assert window_gaps(np.array([[5, 5, 5, 900]]), 10.0).tolist() == [False]
    assert window_gaps(np.array([[0, 10**9]]), 10.0).tolist() == [False]


@pytest.mark.parametrize(
    ("policy", "periods", "message"),
    [("skip", 10.0, "not one of score, mark, restart"), ("mark", 1.0, "above 1")],
)
def test_a_bad_gap_rule_is_refused(policy: str, periods: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GapRule(policy, periods)  # type: ignore[arg-type]


@FAST
@given(seed=st.integers(0, 2**32 - 1), rule=st.sampled_from(GAP_RULES), runs=st.integers(1, 40))
def test_append_runs_across_streams_equals_append_per_stream_under_each_gap_policy(
    seed: int, rule: GapRule, runs: int
) -> None:
    """The poll-batch path decides the gaps of every stream's windows at once, as each
    stream alone would."""
    rng = np.random.default_rng(seed)
    window = int(rng.integers(2, 7))
    states, batches = [], []
    for _ in range(runs):
        run = random_run(rng, 0, int(rng.integers(0, 30)), 1)
        pauses = np.cumsum(rng.random(len(run)) < 0.15) * int(rng.integers(10**4, 10**7))
        run = Events(run.values, run.ts_ms + pauses, run.offsets)
        cut = int(rng.integers(0, len(run) + 1))
        states.append(apply(new_state(window, 1), run.part(0, cut), 1, rule).state)
        batches.append(run.part(cut, len(run)))
    alone = [apply(state, batch, 1, rule) for state, batch in zip(states, batches, strict=True)]
    together = append_runs(
        states,
        np.concatenate([b.values for b in batches]),
        np.concatenate([b.ts_ms for b in batches]),
        np.concatenate([b.offsets for b in batches]),
        np.array([len(b) for b in batches]),
        topics=[TOPIC] * runs,
        partitions=[PARTITION] * runs,
        stride=1,
        gap_rule=rule,
    )
    assert together.run.tolist() == [i for i, r in enumerate(alone) for _ in r.windows]
    for name in (*WINDOW_FIELDS, "gaps"):
        expected = concat(alone, name)
        assert np.array_equal(
            getattr(together, name), expected.reshape(getattr(together, name).shape)
        ), name


# --- binary encoding --------------------------------------------------------------------------


@st.composite
def stream_states(
    draw: st.DrawFn, window: int | None = None, features: int | None = None
) -> StreamState:
    """Any state the encoding must carry, including a partly filled ring (count < W) and
    timestamps with irregular, huge or backwards steps."""
    window = window or draw(st.integers(1, 70))
    features = features or draw(st.integers(1, 4))
    count = draw(st.one_of(st.integers(0, 3 * window), st.integers(0, 2**40)))
    values = np.array(
        draw(st.lists(FLOAT32, min_size=window * features, max_size=window * features)),
        dtype=np.float32,
    ).reshape(window, features)
    regular = draw(st.booleans())
    if regular:
        start, step = draw(st.integers(0, 2**43)), draw(st.integers(-(2**20), 2**20))
        ts = start + step * np.arange(window, dtype=np.int64)
    else:
        ts = np.array(
            draw(st.lists(st.integers(-TS_BOUND, TS_BOUND), min_size=window, max_size=window)),
            dtype=np.int64,
        )
    stats = st.floats(allow_nan=False, allow_infinity=False)
    return StreamState(
        window=window,
        features=features,
        values=values,
        ts_ms=ts,
        count=count,
        topic=draw(st.text(max_size=20)),
        partition=draw(st.integers(-1, 2**31 - 1)),
        offset=draw(st.integers(NO_OFFSET, 2**62)),
        stat_mean=np.array(draw(st.lists(stats, min_size=features, max_size=features))),
        stat_m2=np.array(draw(st.lists(stats.map(abs), min_size=features, max_size=features))),
        alert=AlertState(
            open=draw(st.booleans()),
            above_run=draw(st.integers(0, 0xFFFF)),
            below_run=draw(st.integers(0, 0xFFFF)),
            cooldown_left=draw(st.integers(0, 2**32 - 1)),
            open_offset=draw(st.integers(NO_OFFSET, 2**62)),
        ),
        post=np.array(draw(st.lists(stats, max_size=60)), dtype=np.float64),
    )


@st.composite
def batches_of_states(draw: st.DrawFn) -> list[StreamState]:
    """The touched states of a poll batch: one shape (the model's), or now and then mixed."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.lists(stream_states(), max_size=4))
    window, features = draw(st.integers(1, 70)), draw(st.integers(1, 4))
    return draw(st.lists(stream_states(window, features), max_size=12))


@settings(max_examples=100, deadline=None)
@given(states=batches_of_states())
def test_encoding_a_batch_of_states_gives_each_states_own_bytes(states: list[StreamState]) -> None:
    assert encode_states(states) == [encode_state(state) for state in states]


def _same_decoding(got: StreamState, want: StreamState) -> bool:
    """Equal field for field, with the same dtypes and shapes (same_as ignores dtypes)."""
    arrays = ("values", "ts_ms", "stat_mean", "stat_m2", "post")
    return (
        got.same_as(want)
        and got.topic == want.topic
        and all(
            getattr(got, a).dtype == getattr(want, a).dtype
            and getattr(got, a).shape == getattr(want, a).shape
            for a in arrays
        )
    )


@settings(max_examples=100, deadline=None)
@given(states=batches_of_states())
def test_decoding_a_batch_of_states_gives_each_blobs_own_state(states: list[StreamState]) -> None:
    """decode_states over a batch equals decode_state of each blob, layouts mixed (topics of
    several lengths, every timestamp width, post-processing states of several sizes)."""
    blobs = encode_states(states)
    if not states or any(
        s.window != states[0].window or s.features != states[0].features for s in states
    ):
        return
    window, features = states[0].window, states[0].features
    decoded = decode_states(blobs, window, features)
    assert len(decoded) == len(blobs)
    for got, blob in zip(decoded, blobs, strict=True):
        assert _same_decoding(got, decode_state(blob, window, features))
        assert encode_state(got) == blob


def test_decoding_a_batch_leaves_odd_values_to_decode_state() -> None:
    """A version-1 state decodes as decode_state does it; a corrupt value or another shape in
    the batch raises decode_state's error, whatever else the batch holds."""
    blob = _valid_blob()
    old = _as_version_1(blob)
    decoded = decode_states([blob, old, blob], 4, 2)
    assert all(
        _same_decoding(d, decode_state(b, 4, 2))
        for d, b in zip(decoded, [blob, old, blob], strict=True)
    )
    # The post-processing count of a same-length value disagrees with its length.
    bad_count = bytearray(blob)
    bad_count[-4:] = b"\x01\x00\x00\x00"
    for bad, error in (
        (blob[:-1], StateFormatError),
        (b"junk", StateFormatError),
        (bytes(bad_count), StateFormatError),
        (blob[:HEADER_SIZE] + b"\xff" + blob[HEADER_SIZE + 1 :], StateFormatError),
    ):
        with pytest.raises(error):
            decode_states([blob, bad, blob], 4, 2)
    with pytest.raises(StateShapeError):
        decode_states([blob], 8, 2)


def test_a_batch_of_states_takes_each_states_own_timestamp_width() -> None:
    """Delta-of-deltas at the edge of every width, and a partly filled ring, in one batch."""
    states = []
    for biggest in (0, 127, 128, 32767, 32768, 2**31 - 1, 2**31, -(2**63)):
        ts = np.array([0, 0, 0, 0, biggest], dtype=np.int64)  # one delta-of-delta: biggest
        state = new_state(5, 2)
        state.ts_ms, state.count, state.topic = ts, 3 + biggest % 5, f"t{biggest}"
        state.values = np.arange(10, dtype=np.float32).reshape(5, 2)
        states.append(state)
    blobs = encode_states(states)
    assert blobs == [encode_state(state) for state in states]
    assert len({blob[HEADER_SIZE - 4] for blob in blobs}) == 4  # widths 1, 2, 4 and 8
    for got, blob in zip(decode_states(blobs, 5, 2), blobs, strict=True):
        assert _same_decoding(got, decode_state(blob, 5, 2))


@settings(max_examples=100, deadline=None)
@given(state=stream_states())
def test_encode_decode_round_trip(state: StreamState) -> None:
    blob = encode_state(state)
    decoded = decode_state(blob, state.window, state.features)
    assert decoded.same_as(state)
    assert decoded.topic == state.topic
    assert encode_state(decoded) == blob
    # Header fields the Lua fence reads directly.
    assert blob[:4] == b"SAE1"
    assert struct.unpack_from("<iq", blob, 10) == (state.partition, state.offset)


@FAST
@given(run=event_runs())
def test_round_trip_of_states_built_by_append(run: tuple[int, int, int, Events]) -> None:
    window, features, stride, events = run
    state = apply(new_state(window, features), events, stride).state
    decoded = decode_state(encode_state(state), window, features)
    assert decoded.same_as(state)
    # And the decoded state goes on exactly like the original.
    more = Events(
        np.ones((window + 2, features), np.float32),
        np.arange(window + 2),
        np.arange(window + 2) + 10**13,
    )
    assert encode_state(apply(decoded, more, stride).state) == encode_state(
        apply(state, more, stride).state
    )


def test_regular_timestamps_cost_one_byte_per_event() -> None:
    window = 64
    state = apply(
        new_state(window, 1),
        Events(
            np.zeros((100, 1), np.float32),
            1_700_000_000_000 + 1000 * np.arange(100),
            np.arange(100),
        ),
        stride=1,
    ).state
    topic_and_stats = len(TOPIC) + 16
    post_count = 4  # and no post-processing state yet
    assert (
        len(encode_state(state))
        == HEADER_SIZE + topic_and_stats + 16 + (window - 2) + 4 * window + post_count
    )


def _valid_blob() -> bytes:
    events = Events(np.arange(12, dtype=np.float32).reshape(6, 2), np.arange(6) * 7, np.arange(6))
    return encode_state(apply(new_state(4, 2), events, stride=1).state)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "bad magic"),
        (b"SAE1", "too short"),
        (b"XXXX" + _valid_blob()[4:], "bad magic"),
        (_valid_blob()[:4] + bytes([FORMAT_VERSION + 1]) + _valid_blob()[5:], "version"),
        (_valid_blob()[:-1], "bytes"),
        (_valid_blob() + b"\x00", "bytes"),
        (_valid_blob()[: HEADER_SIZE + 2], "bytes"),
        (_valid_blob()[:58] + b"\x03" + _valid_blob()[59:], "width"),  # ts width 3
        (_valid_blob()[:HEADER_SIZE] + b"\xff" + _valid_blob()[HEADER_SIZE + 1 :], "UTF-8"),
    ],
    ids=[
        "empty",
        "short",
        "magic",
        "version",
        "truncated",
        "extended",
        "cut-in-body",
        "ts-width",
        "topic-utf8",
    ],
)
def test_decode_rejects_malformed_values(blob: bytes, message: str) -> None:
    with pytest.raises(StateFormatError, match=message):
        decode_state(blob)


def test_decode_rejects_another_window_shape() -> None:
    blob = _valid_blob()
    assert decode_state(blob, 4, 2).window == 4
    with pytest.raises(StateFormatError, match="4x2"):
        decode_state(blob, window=8, features=2)
    with pytest.raises(StateFormatError, match="4x2"):
        decode_state(blob, window=4, features=1)


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=300), cut=st.integers(0, 300), junk=st.binary(max_size=8))
def test_decode_raises_only_state_format_error(blob: bytes, cut: int, junk: bytes) -> None:
    valid = _valid_blob()
    for candidate in (blob, b"SAE1" + blob, valid[:cut], valid[:cut] + junk + valid[cut:]):
        with contextlib.suppress(StateFormatError):
            decode_state(candidate, 4, 2)


def _as_version_1(blob: bytes) -> bytes:
    """A state without post-processing state as version 1 wrote it: the same header and body,
    version byte 1, no post-processing count."""
    assert blob[-4:] == b"\x00\x00\x00\x00"
    return blob[:4] + bytes([1]) + blob[5:-4]


def test_a_version_1_state_loads_with_an_empty_post_processing_state() -> None:
    blob = _valid_blob()
    old = _as_version_1(blob)
    assert blob[4] == FORMAT_VERSION == 2 and old[4] == 1
    decoded = decode_state(old, 4, 2)
    assert decoded.same_as(decode_state(blob, 4, 2))
    assert decoded.post.shape == (0,)
    assert encode_state(decoded) == blob  # written back as version 2
    with pytest.raises(StateFormatError, match="bytes"):
        decode_state(old + b"\x00\x00\x00\x00", 4, 2)  # a v2 body under a v1 header


def test_the_post_processing_state_round_trips_bit_for_bit() -> None:
    state = decode_state(_valid_blob(), 4, 2)
    state.post = np.array([0.1, -np.inf, 1e300, 5e-324])
    decoded = decode_state(encode_state(state), 4, 2)
    assert decoded.post.tobytes() == state.post.tobytes()
    with pytest.raises(StateFormatError, match="bytes"):
        decode_state(encode_state(state)[:-8], 4, 2)
