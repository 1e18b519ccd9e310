"""Per-stream calibration routing: one rule (``CalibrationSet.route``) for the worker and the
offline tools."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_ae.core.scoring import fit_calibration
from stream_ae.model.artifacts import CalibrationSet
from training.calibrate import fit_calibration_set, scores_and_thresholds

RNG = np.random.default_rng(0)
GLOBAL = fit_calibration(RNG.normal(size=(200, 2)), method="quantile", level=0.99)
OWN = {name: fit_calibration(RNG.normal(loc=i, size=(200, 2))) for i, name in enumerate("ab")}
CALIBRATION = CalibrationSet(GLOBAL, OWN)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=40))
def test_every_window_is_routed_once_to_its_streams_calibration(streams: list[str]) -> None:
    seen = np.zeros(len(streams), dtype=int)
    for calibration, rows in CALIBRATION.route(streams):
        seen[rows] += 1
        for row in rows:
            assert calibration is CALIBRATION.for_stream(streams[row])
    assert np.all(seen == 1)


def test_offline_scores_use_each_streams_own_threshold() -> None:
    streams = ["a", "c", "b", "a", "d"]
    errors = RNG.normal(size=(len(streams), 2))
    distances, scores, thresholds = scores_and_thresholds(CALIBRATION, errors, streams)
    for i, stream in enumerate(streams):
        own = CALIBRATION.for_stream(stream)
        assert distances[i] == own.distance(errors[i : i + 1])[0]
        assert scores[i] == own.score(distances[i : i + 1])[0]
        assert thresholds[i] == own.threshold


def test_streams_with_too_few_windows_fall_back_to_the_global_calibration() -> None:
    errors = RNG.normal(size=(130, 1))
    streams = ["big"] * 100 + ["small"] * 30
    calibration = fit_calibration_set(errors, streams, per_stream=True, min_windows=50)
    assert set(calibration.per_stream) == {"big"}
