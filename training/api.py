"""The trainer behind :meth:`stream_ae.Detector.fit` (entry point ``stream_ae.trainer: fit``).

One function: named series in, an artifact directory out. Options are the fields of
:class:`~stream_ae.model.network.ModelSpec` and :class:`~training.fit.FitConfig` by name, so each
default lives once, in those dataclasses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stream_ae.errors import ConfigError
from stream_ae.model.network import ModelSpec
from training.fit import FitConfig, train_artifact


def fit_detector(
    series: Mapping[str, np.ndarray], out_dir: Path, *, name: str = "default", **options: Any
) -> Path:
    """Fit, calibrate and write an artifact from ``{stream: values (T,) or (T, F)}``."""
    spec_fields = {f.name for f in dataclasses.fields(ModelSpec)}
    fit_fields = {f.name for f in dataclasses.fields(FitConfig)}
    unknown = set(options) - spec_fields - fit_fields
    if unknown:
        raise ConfigError(
            f"unknown training option(s) {sorted(unknown)}; "
            f"known: {sorted((spec_fields | fit_fields) - {'features', 'feature_names'})}"
        )
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in series.items()}
    shapes = {v.reshape(len(v), -1).shape[1] for v in arrays.values()}
    if len(shapes) != 1:
        raise ConfigError(f"every series needs the same number of features, got {sorted(shapes)}")
    (features,) = shapes
    spec_options = {k: v for k, v in options.items() if k in spec_fields}
    spec_options.setdefault("features", features)
    if "feature_names" not in spec_options:
        spec_options["feature_names"] = (
            ("value",) if features == 1 else tuple(f"f{i}" for i in range(features))
        )
    config = FitConfig(**{"verbose": 0, **{k: v for k, v in options.items() if k in fit_fields}})
    return train_artifact(
        [(stream, values.reshape(len(values), -1)) for stream, values in arrays.items()],
        ModelSpec(**spec_options),
        Path(out_dir),
        name=name,
        config=config,
    )
