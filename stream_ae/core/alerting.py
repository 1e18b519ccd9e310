"""The alert policy and its per-stream state: threshold with hysteresis, confirmation runs and a
cool-down. Pure.

An alert *opens* after ``open_after`` consecutive windows score at or above ``threshold``; it
*resolves* after ``resolve_after`` consecutive windows score below ``threshold * resolve_ratio``
(hysteresis, so a score hovering at the threshold does not flap); after a resolve no alert
opens for ``cooldown`` windows. The policy's :class:`AlertState` lives in the stream's state
(:mod:`stream_ae.core.state`), so it survives restarts and is replayed exactly.

:class:`AlertPolicy` is the one shape of these settings: the worker's settings build it
(:meth:`stream_ae.settings.Settings.alert_policy`), a detector carries one in its artifact
(``detector.json``), the processor and the evaluators use it, and its bounds are checked here
only. Any field may be left out (None): the processor runs the operator's policy over the
detector's (:meth:`AlertPolicy.over`), field by field, and what neither sets is the built-in
default (:data:`BUILT_IN`); a threshold neither sets is the detector's own score threshold
(:meth:`AlertPolicy.with_default_threshold`).

>>> import numpy as np
>>> policy = AlertPolicy(threshold=0.9, resolve_after=2)
>>> state, events = policy.step(AlertState(), np.array([0.1, 0.95, 0.89, 0.5, 0.4, 0.2]))
>>> events
[(1, 'open'), (4, 'resolved')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from numbers import Integral
from operator import attrgetter
from types import MappingProxyType

import numpy as np

OPEN = "open"
RESOLVED = "resolved"
# A Kafka offset no record has: "no alert open" in AlertState, "nothing applied" in a state.
NO_OFFSET = -1
# step_streams runs window index by window index across the streams still having windows while
# at least this many do; the last few long ones go on one by one through step (a numpy
# operation over a handful of streams costs more than the Python loop over them).
_MIN_VECTOR_STREAMS = 8
_STATE_FIELDS = ("open", "above_run", "below_run", "cooldown_left", "open_offset")
# The rules where neither the operator nor the detector sets them (the threshold has none: it
# is the detector's own score threshold then).
BUILT_IN: Mapping[str, float | int] = MappingProxyType(
    {"resolve_ratio": 0.9, "open_after": 1, "resolve_after": 3, "cooldown": 0}
)


@dataclass(frozen=True)
class AlertState:
    """Where a stream stands in the alert policy."""

    open: bool = False
    above_run: int = 0
    below_run: int = 0
    cooldown_left: int = 0
    # Offset of the window's last event that opened the current alert (NO_OFFSET if none).
    open_offset: int = NO_OFFSET


@dataclass(frozen=True)
class AlertPolicy:
    """When alerts open and resolve; see the module docstring.

    ``threshold`` in (0, 1] on the final anomaly score; ``resolve_ratio`` in (0, 1];
    ``open_after`` and ``resolve_after`` at least 1 window; ``cooldown`` at least 0 windows.
    None (every field's default): not set here, so another policy's (:meth:`over`), else the
    built-in one (:data:`BUILT_IN`; for the threshold, the detector's own).

    >>> AlertPolicy(resolve_after=10).rules()
    (0.9, 1, 10, 0)
    """

    threshold: float | None = None
    resolve_ratio: float | None = None
    open_after: int | None = None
    resolve_after: int | None = None
    cooldown: int | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.resolve_ratio is not None and not 0.0 < self.resolve_ratio <= 1.0:
            raise ValueError(f"resolve_ratio must be in (0, 1], got {self.resolve_ratio}")
        for name, least in (("open_after", 1), ("resolve_after", 1), ("cooldown", 0)):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, Integral) or isinstance(value, bool) or value < least
            ):
                raise ValueError(f"{name} must be an integer >= {least}, got {value}")

    def over(self, other: AlertPolicy) -> AlertPolicy:
        """This policy's fields where set, ``other``'s where not: the operator's policy over the
        detector's.

        >>> AlertPolicy(open_after=2).over(AlertPolicy(open_after=5, resolve_after=10)).as_dict()
        {'open_after': 2, 'resolve_after': 10}
        """
        return AlertPolicy(
            *(
                mine if mine is not None else theirs
                for mine, theirs in zip(astuple(self), astuple(other), strict=True)
            )
        )

    def as_dict(self) -> dict[str, float | int]:
        """The fields set (not None), by name: what ``detector.json`` holds as its policy.

        >>> AlertPolicy(resolve_after=10).as_dict()
        {'resolve_after': 10}
        """
        return {
            name: value
            for name in ("threshold", *BUILT_IN)
            if (value := getattr(self, name)) is not None
        }

    def as_run(self) -> dict[str, float | int]:
        """The rules as run, by name: this policy's fields, the built-in ones where it sets
        none (the threshold only where set: else it is the detector's own).

        >>> AlertPolicy(resolve_after=10).as_run()
        {'resolve_ratio': 0.9, 'open_after': 1, 'resolve_after': 10, 'cooldown': 0}
        """
        return {**BUILT_IN, **self.as_dict()}

    def rules(self) -> tuple[float, int, int, int]:
        """``resolve_ratio``, ``open_after``, ``resolve_after`` and ``cooldown`` as run: this
        policy's, the built-in ones where it sets none."""
        full = self.as_run()
        return (
            float(full["resolve_ratio"]),
            int(full["open_after"]),
            int(full["resolve_after"]),
            int(full["cooldown"]),
        )

    def with_default_threshold(self, threshold: float) -> AlertPolicy:
        """This policy, with ``threshold`` where it has none of its own.

        >>> AlertPolicy().with_default_threshold(0.99).threshold
        0.99
        >>> AlertPolicy(threshold=0.5).with_default_threshold(0.99).threshold
        0.5
        """
        return self if self.threshold is not None else replace(self, threshold=threshold)

    def step(
        self, state: AlertState, scores: np.ndarray, offsets: np.ndarray | None = None
    ) -> tuple[AlertState, list[tuple[int, str]]]:
        """Run the policy over one stream's window scores, in time order.

        Returns the new state and the transitions as ``(window index, status)``; ``offsets``
        (the windows' last-event offsets) are recorded as ``open_offset`` when an alert opens.
        """
        if self.threshold is None:
            raise ValueError("the policy has no threshold: use with_default_threshold first")
        threshold = self.threshold
        resolve_ratio, open_after, resolve_after, cooldown_windows = self.rules()
        is_open = state.open
        above, below, cooldown = state.above_run, state.below_run, state.cooldown_left
        open_offset = state.open_offset
        resolve_level = threshold * resolve_ratio
        transitions: list[tuple[int, str]] = []
        for i, score in enumerate(np.asarray(scores, dtype=np.float64).tolist()):
            if is_open:
                below = below + 1 if score < resolve_level else 0
                if below >= resolve_after:
                    is_open, below, cooldown = False, 0, cooldown_windows
                    transitions.append((i, RESOLVED))
            elif cooldown > 0:
                cooldown -= 1
                above = 0
            else:
                above = above + 1 if score >= threshold else 0
                if above >= open_after:
                    is_open, above, below = True, 0, 0
                    open_offset = int(offsets[i]) if offsets is not None else NO_OFFSET
                    transitions.append((i, OPEN))
        return AlertState(is_open, above, below, cooldown, open_offset), transitions

    def step_streams(
        self,
        states: Sequence[AlertState],
        scores: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        offsets: np.ndarray | None = None,
        thresholds: np.ndarray | None = None,
    ) -> tuple[list[AlertState], list[tuple[int, int, str]]]:
        """:meth:`step` of many streams at once, with the same results bit for bit.

        Stream ``k`` (state ``states[k]``) has the ``lengths[k]`` windows at rows
        ``starts[k]:starts[k] + lengths[k]`` of ``scores`` (and ``offsets``), in time order.
        ``thresholds``: each stream's threshold where the policy has none of its own (as
        :meth:`with_default_threshold`). Returns the new states (the very objects of ``states``
        where nothing changed) and the transitions as ``(stream k, row, status)``, by stream,
        then in time order: what :meth:`step` gives stream by stream.

        The policy runs window index by window index, each step an array operation across the
        streams with that many windows: the Python work per poll batch is per window index, not
        per stream.

        >>> policy = AlertPolicy(threshold=0.9, resolve_after=1)
        >>> states, events = policy.step_streams(
        ...     [AlertState(), AlertState(open=True)],
        ...     np.array([0.95, 0.2, 0.1, 0.95]), np.array([0, 2]), np.array([2, 2]))
        >>> events
        [(0, 0, 'open'), (0, 1, 'resolved'), (1, 2, 'resolved'), (1, 3, 'open')]
        """
        m = len(states)
        resolve_ratio, open_after, resolve_after, cooldown_windows = self.rules()
        starts = np.asarray(starts, dtype=np.int64)
        lengths = np.asarray(lengths, dtype=np.int64)
        if self.threshold is not None:
            threshold = np.full(m, self.threshold, dtype=np.float64)
        elif thresholds is None:
            raise ValueError("the policy has no threshold: use with_default_threshold first")
        else:
            threshold = np.asarray(thresholds, dtype=np.float64).reshape(m)
            for value in np.unique(threshold).tolist():
                self.with_default_threshold(value)  # the same checks as stream by stream
        scores = np.asarray(scores, dtype=np.float64)
        given = {
            name: np.fromiter(map(attrgetter(name), states), dtype=np.int64, count=m)
            for name in _STATE_FIELDS
        }
        # Quiet streams, most of them: no alert open, no cool-down, every score below the
        # threshold. Each of their windows resets the run above to 0 and changes nothing else.
        owner = np.repeat(np.arange(m), lengths)
        first_row = np.cumsum(lengths) - lengths
        rows_of = np.repeat(starts - first_row, lengths) + np.arange(len(owner))
        hot = np.zeros(m, dtype=bool)
        hot[owner[scores[rows_of] >= threshold[owner]]] = True
        quiet = (lengths > 0) & (given["open"] == 0) & (given["cooldown_left"] == 0) & ~hot
        new_states = list(states)
        for k in np.flatnonzero(quiet & (given["above_run"] != 0)).tolist():
            new_states[k] = replace(states[k], above_run=0)
        # The others, longest first: the streams that still have a window j are a prefix.
        busy = np.flatnonzero((lengths > 0) & ~quiet)
        order = busy[np.argsort(-lengths[busy], kind="stable")]
        length, first = lengths[order], starts[order]
        fields = {name: values[order] for name, values in given.items()}
        # Working copies: ``fields`` keeps the states as they came, to tell which changed.
        is_open = fields["open"].astype(bool)
        above, below = fields["above_run"].copy(), fields["below_run"].copy()
        cooldown, open_offset = fields["cooldown_left"].copy(), fields["open_offset"].copy()
        level = threshold[order]
        resolve_level = level * resolve_ratio
        found: list[tuple[np.ndarray, np.ndarray, bool]] = []  # (sorted streams, rows, opened)
        active, j = len(order), 0
        while active >= _MIN_VECTOR_STREAMS:
            a = slice(0, active)
            rows = first[a] + j
            score = scores[rows]
            was_open, cooling = is_open[a], ~is_open[a] & (cooldown[a] > 0)
            watching = ~was_open & ~cooling
            new_below = np.where(score < resolve_level[a], below[a] + 1, 0)
            new_above = np.where(score >= level[a], above[a] + 1, 0)
            resolving = was_open & (new_below >= resolve_after)
            opening = watching & (new_above >= open_after)
            below[a] = np.where(resolving | opening, 0, np.where(was_open, new_below, below[a]))
            above[a] = np.where(cooling | opening, 0, np.where(watching, new_above, above[a]))
            cooldown[a] = np.where(resolving, cooldown_windows, cooldown[a] - cooling)
            is_open[a] = (was_open & ~resolving) | opening
            if opening.any():
                opened = np.flatnonzero(opening)
                open_offset[opened] = NO_OFFSET if offsets is None else offsets[rows[opened]]
                found.append((opened, rows[opened], True))
            if resolving.any():
                resolved = np.flatnonzero(resolving)
                found.append((resolved, rows[resolved], False))
            j += 1
            active = int(np.count_nonzero(length > j))

        changed = (
            (is_open != fields["open"].astype(bool))
            | (above != fields["above_run"])
            | (below != fields["below_run"])
            | (cooldown != fields["cooldown_left"])
            | (open_offset != fields["open_offset"])
        )
        moved = np.flatnonzero(changed)
        columns = (is_open, above, below, cooldown, open_offset)
        settled = zip(order[moved].tolist(), *(c[moved].tolist() for c in columns), strict=True)
        for k, *values in settled:
            new_states[k] = AlertState(*values)  # Python bool and ints, as step makes them
        # The last few streams with windows left: one by one from where the arrays stand.
        for i in range(active):
            k, start = int(order[i]), int(first[i]) + j
            tail = slice(start, int(first[i]) + int(length[i]))
            policy = replace(self, threshold=float(level[i]))
            new_states[k], rest = policy.step(
                new_states[k], scores[tail], None if offsets is None else offsets[tail]
            )
            found.extend(
                (np.array([i]), np.array([start + index]), status == OPEN) for index, status in rest
            )

        if not found:
            return new_states, []
        stream = order[np.concatenate([f[0] for f in found])]
        row = np.concatenate([f[1] for f in found])
        opened = np.concatenate([np.full(len(f[0]), f[2]) for f in found])
        by_stream = np.lexsort((row, stream))
        transitions = [
            (k, r, OPEN if o else RESOLVED)
            for k, r, o in zip(
                stream[by_stream].tolist(),
                row[by_stream].tolist(),
                opened[by_stream].tolist(),
                strict=True,
            )
        ]
        return new_states, transitions
