"""The trainer behind :meth:`stream_ae.Detector.fit` (entry point ``stream_ae.trainer: fit``).

One function: named series in, an artifact directory out. It starts from the shipped detector,
:data:`training.detector.DEFAULT_DETECTOR` (model, fit and post-processing), as
``stream-ae-train train`` does; options are the fields of
:class:`~stream_ae.model.network.ModelSpec` and :class:`~training.fit.FitConfig` by name, and
``post_processing=False`` leaves the detector's post-processing out (``train
--no-post-processing``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stream_ae.errors import ConfigError
from stream_ae.model.network import ModelSpec
from training import fit as fitting
from training.detector import DEFAULT_DETECTOR, model_spec
from training.fit import FitConfig

POST_OPTION = "post_processing"


def fit_detector(
    series: Mapping[str, np.ndarray], out_dir: Path, *, name: str = "default", **options: Any
) -> Path:
    """Fit, calibrate and write an artifact from ``{stream: values (T,) or (T, F)}``."""
    spec_fields = {f.name for f in dataclasses.fields(ModelSpec)} - {"features", "feature_names"}
    fit_fields = {f.name for f in dataclasses.fields(FitConfig)}
    unknown = set(options) - spec_fields - fit_fields - {POST_OPTION, "feature_names"}
    if unknown:
        raise ConfigError(
            f"unknown training option(s) {sorted(unknown)}; "
            f"known: {sorted(spec_fields | fit_fields | {POST_OPTION})}"
        )
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in series.items()}
    shapes = {v.reshape(len(v), -1).shape[1] for v in arrays.values()}
    if len(shapes) != 1:
        raise ConfigError(f"every series needs the same number of features, got {sorted(shapes)}")
    (features,) = shapes
    names = options.get("feature_names") or (
        ("value",) if features == 1 else tuple(f"f{i}" for i in range(features))
    )
    spec = model_spec(
        DEFAULT_DETECTOR.model, {k: v for k, v in options.items() if k in spec_fields}, names
    )
    config = dataclasses.replace(
        DEFAULT_DETECTOR.fit,
        **{"verbose": 0, **{k: v for k, v in options.items() if k in fit_fields}},
    )
    post = DEFAULT_DETECTOR.post if options.get(POST_OPTION, True) else None
    result = fitting.fit_series(
        [(stream, values.reshape(len(values), -1)) for stream, values in arrays.items()],
        spec,
        config,
    )
    return fitting.save_fit(
        result, Path(out_dir), name=name, post=post, policy=DEFAULT_DETECTOR.policy
    )
