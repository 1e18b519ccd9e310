"""The alert policy and its per-stream state: threshold with hysteresis, confirmation runs and a
cool-down. Pure.

An alert *opens* after ``open_after`` consecutive windows score at or above ``threshold``; it
*resolves* after ``resolve_after`` consecutive windows score below ``threshold * resolve_ratio``
(hysteresis, so a score hovering at the threshold does not flap); after a resolve no alert
opens for ``cooldown`` windows. The policy's :class:`AlertState` lives in the stream's state
(:mod:`stream_ae.core.state`), so it survives restarts and is replayed exactly.

:class:`AlertPolicy` is the one shape of these settings: the worker's settings build it
(:meth:`stream_ae.settings.Settings.alert_policy`), the processor and the evaluators use it,
and its bounds are checked here only. Its ``threshold`` may be left out (None): the detector's
own threshold then applies (:meth:`AlertPolicy.with_default_threshold`).

>>> import numpy as np
>>> policy = AlertPolicy(threshold=0.9, resolve_after=2)
>>> state, events = policy.step(AlertState(), np.array([0.1, 0.95, 0.89, 0.5, 0.4, 0.2]))
>>> events
[(1, 'open'), (4, 'resolved')]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

OPEN = "open"
RESOLVED = "resolved"
# A Kafka offset no record has: "no alert open" in AlertState, "nothing applied" in a state.
NO_OFFSET = -1


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

    ``threshold`` in (0, 1] on the final anomaly score, or None for the detector's own;
    ``resolve_ratio`` in (0, 1]; ``open_after`` and ``resolve_after`` at least 1 window;
    ``cooldown`` at least 0 windows.
    """

    threshold: float | None = None
    resolve_ratio: float = 0.9
    open_after: int = 1
    resolve_after: int = 3
    cooldown: int = 0

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0.0 < self.resolve_ratio <= 1.0:
            raise ValueError(f"resolve_ratio must be in (0, 1], got {self.resolve_ratio}")
        if self.open_after < 1 or self.resolve_after < 1 or self.cooldown < 0:
            raise ValueError(
                "open_after and resolve_after must be >= 1 and cooldown >= 0, got "
                f"{self.open_after}, {self.resolve_after}, {self.cooldown}"
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
        is_open = state.open
        above, below, cooldown = state.above_run, state.below_run, state.cooldown_left
        open_offset = state.open_offset
        resolve_level = threshold * self.resolve_ratio
        transitions: list[tuple[int, str]] = []
        for i, score in enumerate(np.asarray(scores, dtype=np.float64).tolist()):
            if is_open:
                below = below + 1 if score < resolve_level else 0
                if below >= self.resolve_after:
                    is_open, below, cooldown = False, 0, self.cooldown
                    transitions.append((i, RESOLVED))
            elif cooldown > 0:
                cooldown -= 1
                above = 0
            else:
                above = above + 1 if score >= threshold else 0
                if above >= self.open_after:
                    is_open, above, below = True, 0, 0
                    open_offset = int(offsets[i]) if offsets is not None else NO_OFFSET
                    transitions.append((i, OPEN))
        return AlertState(is_open, above, below, cooldown, open_offset), transitions
