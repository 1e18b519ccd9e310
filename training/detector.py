"""The default detector: the one the NAB evaluation chose (``docs/nab.md``), in one place.

A *detector* is a model and its whole scoring chain: the model spec, how it is fitted (which
also fixes its scaling and calibration), the post-processing of its window distances and its
alert policy (``detector.json`` in the artifact, run by the worker's processor).
``stream-ae-train train`` and ``refit``'s first fit start from :data:`DEFAULT_DETECTOR`, and
``stream-ae evaluate nab`` measures it, so what is measured is what ships. Only what differs
from :class:`ModelSpec`'s, :class:`FitConfig`'s and :class:`PostParams`' own defaults is
written here.

>>> DEFAULT_DETECTOR.model.kind, DEFAULT_DETECTOR.model.window, DEFAULT_DETECTOR.model.horizon
('predict', 32, 4)

:meth:`stream_ae.Detector.fit` (through :func:`training.api.fit_detector`) starts from the same
definition, so a detector fitted in a notebook is the one ``train`` writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_ae.core.alerting import AlertPolicy
from stream_ae.core.postprocess import PostParams
from stream_ae.model.network import ModelSpec
from training.fit import FitConfig


@dataclass(frozen=True)
class DetectorDefinition:
    """A detector's definition: ``model`` and ``fit`` make the artifact's model, scaling and
    calibration; ``post`` is its post-processing and ``policy`` its alert policy, the fields
    it sets (the artifact's ``detector.json``; the operator's settings win over it)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    fit: FitConfig = field(default_factory=FitConfig)
    post: PostParams = field(default_factory=PostParams)
    policy: AlertPolicy = field(default_factory=AlertPolicy)


# A small predictive model, fitted briefly (a refit warm-starts from it), and the shipped
# post-processing (likelihood, time-of-day profile, running-range check, peak hold); the
# built-in alert policy (docs/nab.md measured it).
DEFAULT_DETECTOR = DetectorDefinition(
    model=ModelSpec(kind="predict", window=32, horizon=4, hidden=32),
    fit=FitConfig(epochs=15, learning_rate=2e-3, patience=3),
    post=PostParams(),
)


# The horizon of a forecasting model when the kind is changed to one from reconstruct.
DEFAULT_HORIZON = 8


def model_spec(base: ModelSpec, changes: dict[str, Any], names: Sequence[str]) -> ModelSpec:
    """``base`` with the fields in ``changes`` and features ``names``. A horizon not given
    follows the kind: 0 for ``reconstruct``, :data:`DEFAULT_HORIZON` for a forecasting kind
    when ``base`` had none.

    >>> spec = model_spec(DEFAULT_DETECTOR.model, {"kind": "reconstruct"}, ["value"])
    >>> spec.kind, spec.horizon, spec.window
    ('reconstruct', 0, 32)
    """
    changes = dict(changes)
    kind = changes.get("kind", base.kind)
    if "horizon" not in changes:
        if kind == "reconstruct":
            changes["horizon"] = 0
        elif not base.horizon or base.kind == "reconstruct":
            changes["horizon"] = DEFAULT_HORIZON
    return dataclasses.replace(base, **changes, features=len(names), feature_names=tuple(names))
