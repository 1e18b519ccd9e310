"""Checking a new model version before it may replace the running one.

A model that cannot be used is refused before it is staged: a corrupt, truncated, unreadable or
unloadable artifact, one with non-finite weights or outputs (:class:`ArtifactError`), or one
whose window or features differ from the running model's, or whose model input/output shapes
do (:class:`IncompatibleModelError`: it would need new window states). The checks run in the
order of their cost, so a bad version is refused before TensorFlow is asked to load it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stream_ae.errors import ArtifactError, IncompatibleModelError
from stream_ae.model.artifacts import (
    Artifact,
    StateShape,
    check_compatible,
    load_artifact,
    read_manifest,
)
from stream_ae.model.inference import Scorer


def load_candidate(directory: Path, version: str, running: Artifact) -> tuple[Artifact, list[Any]]:
    """The artifact of ``version`` in ``directory``, checked against the ``running`` one, and
    its weights (finite). Raises :class:`IncompatibleModelError` or :class:`ArtifactError`
    naming the problem."""
    # 1. Every file against the manifest's sha256: corrupt, truncated or missing files.
    manifest = read_manifest(directory, verify=True)
    if str(manifest.get("version")) != version or manifest.get("name") != running.name:
        raise ArtifactError(
            f"{directory}: the artifact says {manifest.get('name')}/"
            f"{manifest.get('version')}, the registry path {running.name}/{version}"
        )
    # 2. Window and features from the manifest, before paying for a Keras load.
    running_shape = StateShape.of(running.spec)
    check_compatible(StateShape.of_manifest(manifest), running_shape, str(directory))
    # 3. The model itself, with safe_mode (no arbitrary code); its spec checked again.
    artifact = load_artifact(directory, expect=running_shape)
    for what, new, old in (
        ("input", artifact.model.input_shape, running.model.input_shape),
        ("output", artifact.model.output_shape, running.model.output_shape),
    ):
        if model_shape(new) != model_shape(old):
            raise IncompatibleModelError(
                f"{directory}: model {what} shape {model_shape(new)} differs from the running "
                f"model's {model_shape(old)}"
            )
    # Checked before any copy: NaN weights must never reach a model kept for recycling.
    weights = artifact.model.get_weights()
    if not all(np.isfinite(w).all() for w in weights):
        raise ArtifactError(f"{directory}: the model has non-finite weights")
    return artifact, weights


def probe(scorer: Scorer) -> None:
    """One call on zeros: a model that outputs NaN would turn every score into garbage."""
    spec = scorer.artifact.spec
    windows = np.zeros((scorer.buckets[0], spec.input_steps, spec.features), dtype=np.float32)
    if not all(np.isfinite(out).all() for out in scorer.predict(windows)):
        raise ArtifactError(f"{scorer.artifact.path}: the model outputs non-finite values")


def model_shape(shape: Any) -> Any:
    """A Keras input/output shape as nested tuples (lists for multi-output models)."""
    if isinstance(shape, list):
        return [model_shape(s) for s in shape]
    if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple | list):
        return tuple(model_shape(s) for s in shape)
    return tuple(shape)
