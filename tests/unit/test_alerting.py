"""The alert policy (stream_ae.core.alerting): hysteresis, confirmation runs and cool-down, and the
property that makes it safe across poll batches and restarts: running it over a score sequence
in pieces, carrying the state, is the same as running it in one go."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_ae.core.alerting import NO_OFFSET, OPEN, RESOLVED, AlertPolicy, AlertState


def run(
    policy: AlertPolicy, scores: list[float], state: AlertState | None = None
) -> tuple[AlertState, list[tuple[int, str]]]:
    offsets = np.arange(len(scores)) + 1000
    return policy.step(state or AlertState(), np.array(scores, dtype=np.float64), offsets)


def test_opens_at_the_threshold_and_resolves_after_a_run_below_the_resolve_level() -> None:
    policy = AlertPolicy(threshold=0.9, resolve_ratio=0.9, resolve_after=2)  # resolve level 0.81
    state, events = run(policy, [0.5, 0.9, 0.95, 0.5, 0.4, 0.3])
    assert events == [(1, OPEN), (4, RESOLVED)]
    assert state == AlertState(
        open=False, above_run=0, below_run=0, cooldown_left=0, open_offset=1001
    )


def test_just_below_the_threshold_does_not_open() -> None:
    policy = AlertPolicy(threshold=0.9)
    assert run(policy, [0.8999999, 0.5, 0.8999])[1] == []


def test_hysteresis_scores_between_resolve_level_and_threshold_keep_it_open() -> None:
    policy = AlertPolicy(threshold=0.5, resolve_ratio=0.5, resolve_after=1)  # resolve below 0.25
    state, events = run(policy, [0.6, 0.45, 0.3, 0.25, 0.49, 0.26])
    assert events == [(0, OPEN)] and state.open
    # A score exactly at the resolve level is not below it; just under it is.
    assert run(policy, [0.6, 0.2499999])[1] == [(0, OPEN), (1, RESOLVED)]


def test_a_score_hovering_at_the_threshold_does_not_flap() -> None:
    hovering = [0.91, 0.89, 0.91, 0.89, 0.91, 0.89, 0.91, 0.89]
    with_hysteresis = AlertPolicy(threshold=0.9, resolve_ratio=0.9, resolve_after=1)
    assert run(with_hysteresis, hovering)[1] == [(0, OPEN)]
    without = AlertPolicy(threshold=0.9, resolve_ratio=1.0, resolve_after=1)
    assert len(run(without, hovering)[1]) == len(hovering)  # what hysteresis prevents


def test_open_after_needs_consecutive_windows_above() -> None:
    policy = AlertPolicy(threshold=0.9, open_after=3)
    assert run(policy, [0.95, 0.95, 0.5, 0.95, 0.95])[1] == []  # the dip resets the run
    state, events = run(policy, [0.95, 0.95, 0.5, 0.95, 0.95, 0.99])
    assert events == [(5, OPEN)] and state.open_offset == 1005
    # Partial runs are kept in the state: two now and one in the next batch open it.
    state, events = run(policy, [0.95, 0.95])
    assert events == [] and state.above_run == 2
    assert run(policy, [0.95], state)[1] == [(0, OPEN)]


def test_resolve_after_needs_consecutive_windows_below() -> None:
    policy = AlertPolicy(threshold=0.9, resolve_ratio=0.5, resolve_after=3)  # below 0.45
    scores = [0.95, 0.1, 0.1, 0.6, 0.1, 0.1, 0.1]
    assert run(policy, scores)[1] == [(0, OPEN), (6, RESOLVED)]


def test_cooldown_blocks_new_alerts_then_lets_them_through() -> None:
    policy = AlertPolicy(threshold=0.9, resolve_after=1, cooldown=3)
    scores = [0.95, 0.1, 0.99, 0.99, 0.99, 0.99]
    # Resolved at 1; windows 2-4 are the cool-down; window 5 opens again.
    assert run(policy, scores)[1] == [(0, OPEN), (1, RESOLVED), (5, OPEN)]
    state, _ = run(policy, [0.95, 0.1, 0.99])
    assert state.cooldown_left == 2 and not state.open
    # Runs above the threshold during the cool-down do not count towards open_after.
    slow = AlertPolicy(threshold=0.9, resolve_after=1, cooldown=2, open_after=2)
    # Resolved at 2, cool-down at 3-4, then two windows above: open at 6, not at 5.
    assert run(slow, [0.95, 0.95, 0.1, 0.99, 0.99, 0.99, 0.99])[1] == [
        (1, OPEN),
        (2, RESOLVED),
        (6, OPEN),
    ]


def test_no_cooldown_means_an_immediate_reopen() -> None:
    policy = AlertPolicy(threshold=0.9, resolve_after=1, cooldown=0)
    assert run(policy, [0.95, 0.1, 0.95])[1] == [(0, OPEN), (1, RESOLVED), (2, OPEN)]


def test_open_offset_is_recorded_or_absent() -> None:
    policy = AlertPolicy(threshold=0.5)
    state, _ = policy.step(AlertState(), np.array([0.1, 0.7]), np.array([10, 20]))
    assert state.open_offset == 20
    state, _ = policy.step(AlertState(), np.array([0.7]))
    assert state.open_offset == NO_OFFSET


def test_empty_scores_change_nothing() -> None:
    start = AlertState(open=True, above_run=0, below_run=2, cooldown_left=0, open_offset=5)
    assert AlertPolicy(threshold=0.9).step(start, np.zeros(0)) == (start, [])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0.0},
        {"threshold": 1.5},
        {"threshold": 0.9, "resolve_ratio": 0.0},
        {"threshold": 0.9, "resolve_ratio": 1.1},
        {"threshold": 0.9, "open_after": 0},
        {"threshold": 0.9, "resolve_after": 0},
        {"threshold": 0.9, "cooldown": -1},
    ],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AlertPolicy(**kwargs)  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------------------------

policies = st.builds(
    AlertPolicy,
    threshold=st.sampled_from([0.5, 0.9, 0.99, 1.0]),
    resolve_ratio=st.sampled_from([0.5, 0.9, 1.0]),
    open_after=st.integers(1, 4),
    resolve_after=st.integers(1, 4),
    cooldown=st.integers(0, 5),
)
# Scores cluster at the interesting levels so that runs, ties and crossings happen often.
score_values = st.one_of(
    st.floats(0.0, 1.0), st.sampled_from([0.0, 0.45, 0.5, 0.81, 0.9, 0.891, 0.99, 1.0])
)


@settings(max_examples=300, deadline=None)
@given(policy=policies, scores=st.lists(score_values, max_size=60), data=st.data())
def test_running_in_pieces_equals_running_in_one_go(
    policy: AlertPolicy, scores: list[float], data: st.DataObject
) -> None:
    offsets = np.arange(len(scores), dtype=np.int64) * 3 + 7
    whole_state, whole_events = policy.step(AlertState(), np.array(scores), offsets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(scores)), max_size=6), label="cuts"))
    state, events = AlertState(), []
    for start, stop in zip([0, *cuts], [*cuts, len(scores)], strict=True):
        state, part = policy.step(state, np.array(scores[start:stop]), offsets[start:stop])
        events += [(start + index, status) for index, status in part]
    assert events == whole_events
    assert state == whole_state


@settings(max_examples=200, deadline=None)
@given(policy=policies, scores=st.lists(score_values, max_size=60))
def test_transitions_alternate_and_respect_the_policy(
    policy: AlertPolicy, scores: list[float]
) -> None:
    state, events = policy.step(AlertState(), np.array(scores))
    statuses = [status for _, status in events]
    assert statuses == [OPEN, RESOLVED] * (len(statuses) // 2) + [OPEN] * (len(statuses) % 2)
    assert state.open == (len(statuses) % 2 == 1)
    resolve_level = policy.threshold * policy.resolve_ratio
    for index, status in events:
        if status == OPEN:  # preceded by open_after windows at or above the threshold
            run_ = scores[index - policy.open_after + 1 : index + 1]
            assert index + 1 >= policy.open_after and all(s >= policy.threshold for s in run_)
        else:
            run_ = scores[index - policy.resolve_after + 1 : index + 1]
            assert index + 1 >= policy.resolve_after and all(s < resolve_level for s in run_)
    # After each resolve, no open within the cool-down.
    for (i, first), (j, _) in itertools.pairwise(events):
        if first == RESOLVED:
            assert j - i > policy.cooldown


# --- many streams at once ---------------------------------------------------------------------

alert_states = st.builds(
    AlertState,
    open=st.booleans(),
    above_run=st.integers(0, 5),
    below_run=st.integers(0, 5),
    cooldown_left=st.integers(0, 6),
    open_offset=st.sampled_from([NO_OFFSET, 3, 10**12]),
)
Stream = tuple[AlertState, list[float], float]  # its state, its scores, its default threshold


def stepped_one_by_one(
    policy: AlertPolicy, streams: list[Stream]
) -> tuple[list[AlertState], list[tuple[int, int, str]]]:
    """Each stream through :meth:`AlertPolicy.step` over all its scores: the reference."""
    states, events = [], []
    for k, (state, scores, default) in enumerate(streams):
        offsets = np.arange(len(scores), dtype=np.int64) * 3 + 1000 * k
        state, part = policy.with_default_threshold(default).step(
            state, np.array(scores, dtype=np.float64), offsets
        )
        states.append(state)
        events += [(k, index, status) for index, status in part]
    return states, events


def stepped_in_batches(
    policy: AlertPolicy, streams: list[Stream], data: st.DataObject, batches: int
) -> tuple[list[AlertState], list[tuple[int, int, str]]]:
    """The streams through :meth:`AlertPolicy.step_streams`, each one's scores cut into
    ``batches`` pieces, each batch's rows laid out in a drawn order of the streams."""
    states = [state for state, _, _ in streams]
    cuts = [
        [
            0,
            *sorted(
                data.draw(
                    st.lists(st.integers(0, len(s)), min_size=batches - 1, max_size=batches - 1)
                )
            ),
            len(s),
        ]
        for _, s, _ in streams
    ]
    defaults = np.array([default for _, _, default in streams])
    events = []
    for b in range(batches):
        layout = data.draw(st.permutations(range(len(streams))), label="layout")
        starts = np.zeros(len(streams), dtype=np.int64)
        lengths = np.zeros(len(streams), dtype=np.int64)
        scores: list[float] = []
        offsets: list[int] = []
        for k in layout:
            lo, hi = cuts[k][b], cuts[k][b + 1]
            starts[k], lengths[k] = len(scores), hi - lo
            scores += streams[k][1][lo:hi]
            offsets += [3 * i + 1000 * k for i in range(lo, hi)]
        states, part = policy.step_streams(
            states,
            np.array(scores, dtype=np.float64),
            starts,
            lengths,
            np.array(offsets, dtype=np.int64),
            thresholds=defaults,
        )
        assert [k for k, _, _ in part] == sorted(k for k, _, _ in part)  # by stream
        events += [(k, cuts[k][b] + row - int(starts[k]), status) for k, row, status in part]
    # By stream, then in time order, as the reference.
    return states, sorted(events, key=lambda e: (e[0], e[1]))


@settings(max_examples=300, deadline=None)
@given(
    policy=policies,
    own_threshold=st.booleans(),
    streams=st.lists(
        st.tuples(
            alert_states,
            st.lists(score_values, max_size=25),
            st.sampled_from([0.5, 0.81, 0.9, 1.0]),
        ),
        max_size=30,
    ),
    batches=st.integers(1, 3),
    data=st.data(),
)
def test_step_streams_equals_step_per_stream_for_any_split_into_batches(
    policy: AlertPolicy,
    own_threshold: bool,
    streams: list[Stream],
    batches: int,
    data: st.DataObject,
) -> None:
    policy = policy if own_threshold else replace(policy, threshold=None)
    expected_states, expected_events = stepped_one_by_one(policy, streams)
    states, events = stepped_in_batches(policy, streams, data, batches)
    assert events == expected_events
    assert states == expected_states


@pytest.mark.parametrize("seed", range(5))
def test_step_streams_over_many_streams_of_many_lengths(seed: int) -> None:
    """Hundreds of streams (the array path throughout) and a few long ones (the tail one by
    one), scores around the threshold: the same as stream by stream."""
    rng = np.random.default_rng(seed)
    policy = AlertPolicy(threshold=None, open_after=2, resolve_after=2, cooldown=3)
    lengths = np.concatenate([rng.integers(0, 4, 400), rng.integers(20, 60, 5)])
    streams: list[Stream] = [
        (
            AlertState(open=bool(rng.integers(2)), cooldown_left=int(rng.integers(3))),
            rng.choice([0.2, 0.8, 0.85, 0.9, 0.95], size=n).tolist(),
            float(rng.choice([0.85, 0.9])),
        )
        for n in lengths.tolist()
    ]
    expected_states, expected_events = stepped_one_by_one(policy, streams)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    scores = np.concatenate([np.array(s, dtype=np.float64) for _, s, _ in streams])
    offsets = np.concatenate(
        [np.arange(n, dtype=np.int64) * 3 + 1000 * k for k, n in enumerate(lengths.tolist())]
    )
    states, events = policy.step_streams(
        [s for s, _, _ in streams],
        scores,
        starts,
        lengths,
        offsets,
        thresholds=np.array([d for _, _, d in streams]),
    )
    assert [(k, row - int(starts[k]), status) for k, row, status in events] == expected_events
    assert states == expected_states
    assert len(expected_events) > 20


def test_step_streams_without_any_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="no threshold"):
        AlertPolicy().step_streams([AlertState()], np.zeros(1), np.zeros(1), np.ones(1))
    with pytest.raises(ValueError, match="threshold must be in"):
        AlertPolicy().step_streams(
            [AlertState()], np.zeros(1), np.zeros(1), np.ones(1), thresholds=np.array([1.5])
        )
