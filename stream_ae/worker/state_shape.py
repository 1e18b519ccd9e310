"""The shape of the window states a worker group keeps in Redis, recorded next to them so that a
model that cannot use them is refused at start-up, as it is on a hot-swap.

A running worker refuses a new champion of another window length or other features
(:func:`~stream_ae.model.artifacts.check_compatible`, in :mod:`stream_ae.worker.candidate`).
A restarted one has no running model to compare with: it would load that champion and then
fail on every stored state it reads. So the first worker of a key prefix records its model's
:class:`~stream_ae.model.artifacts.StateShape` under ``<redis_key_prefix>:state-shape`` (set
only if absent, so concurrent starts agree), and every start compares its model with it through
the same check. A different window shape belongs under a new key prefix (a new worker group,
see :mod:`stream_ae.worker.swap`); deleting the prefix's keys, the record included, is the way
to start its states afresh.
"""

from __future__ import annotations

import json
from typing import Any

from stream_ae.errors import ArtifactError, StateFormatError
from stream_ae.model.artifacts import StateShape, check_compatible


def state_shape_key(prefix: str) -> str:
    """The Redis key of the recorded shape (no hash tag: it is read on its own).

    >>> state_shape_key("sae")
    'sae:state-shape'
    """
    return f"{prefix}:state-shape"


def check_stored_states(client: Any, prefix: str, shape: StateShape, model: str) -> StateShape:
    """Record ``shape`` as the shape of the states under ``prefix`` unless one is recorded,
    and return the recorded one. Raises :class:`~stream_ae.errors.IncompatibleModelError`
    (naming ``model``) when it differs from ``shape``, :class:`StateFormatError` when the
    record is unreadable. Redis errors are the caller's to retry."""
    key = state_shape_key(prefix)
    record = {"window": shape.window, "features": list(shape.feature_names)}
    client.set(key, json.dumps(record), nx=True)
    raw = client.get(key)
    try:
        recorded = StateShape.of_manifest(json.loads(raw))
    except (ArtifactError, ValueError, TypeError) as exc:  # not the model's fault: the record's
        raise StateFormatError(f"{key}: unreadable record of the states' shape: {exc}") from None
    check_compatible(shape, recorded, f"{model}, for the window states under {prefix!r}")
    return recorded
