"""Alerts explain themselves: per feature, the observed and the model's expected value (in the
units the events came in) at the step of the largest deviation, for every kind of model."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from stream_ae.api import Detector
from stream_ae.core.alerting import AlertPolicy
from stream_ae.model.artifacts import load_artifact
from stream_ae.model.inference import Scorer
from stream_ae.model.network import ModelSpec, as_output_list, split_window
from tests.support.hotswap_models import write_artifact

SPECS = {
    "reconstruct": ModelSpec(window=12, hidden=4),
    "reversed": ModelSpec(window=12, hidden=4, reverse=True),
    "predict": ModelSpec(kind="predict", window=12, horizon=3, hidden=4),
    "composite": ModelSpec(kind="composite", window=12, horizon=3, hidden=4),
}


def _windows(n: int, window: int, spike_step: int) -> np.ndarray:
    t = np.arange(n)[:, None, None] + np.arange(window)[None, :, None]
    windows = np.sin(t / 5.0)  # the artifact's scaling is fitted on such a sine
    windows[:, spike_step, 0] += 40.0  # far beyond anything the model outputs
    return windows.astype(np.float32)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_the_scorer_returns_the_expected_values_and_the_largest_deviation(
    kind: str, tmp_path: Path
) -> None:
    spec = SPECS[kind]
    scorer = Scorer(load_artifact(write_artifact(tmp_path / kind, f"v-{kind}", spec)), (8,))
    spike = spec.window - 2  # output by every kind of model
    windows = _windows(5, spec.window, spike)
    batch = scorer.score(windows, ["s"] * 5)
    expected, deviations = batch.expected(), batch.deviations()

    # The expected values are the model's own outputs, unscaled, on the window's steps.
    scaling = scorer.artifact.scaling
    inputs, _ = split_window(spec, scaling.apply(windows))
    outputs = as_output_list(scorer.artifact.model.predict_on_batch(inputs))
    mean, std = np.asarray(scaling.mean), np.asarray(scaling.std)
    if kind == "predict":
        assert np.isnan(expected[:, : spec.input_steps]).all()
        np.testing.assert_allclose(
            expected[:, spec.input_steps :], outputs[0] * std + mean, rtol=1e-4, atol=1e-6
        )
    else:
        reconstruction = outputs[0][:, ::-1] if spec.reverse else outputs[0]
        np.testing.assert_allclose(
            expected[:, : spec.input_steps], reconstruction * std + mean, rtol=1e-4, atol=1e-6
        )
    assert not np.isnan(expected[:, spec.input_steps :]).any()

    assert deviations.steps[:, 0].tolist() == [spike] * 5
    np.testing.assert_allclose(deviations.observed[:, 0], windows[:, spike, 0])
    np.testing.assert_allclose(deviations.expected[:, 0], expected[:, spike, 0])
    # The expected value sits near the series' level, not near the spike.
    assert np.all(np.abs(deviations.expected[:, 0]) < 5.0)
    # Asked for some rows, the same values as for all.
    some = np.array([3, 1])
    np.testing.assert_array_equal(batch.expected(some), expected[some])
    np.testing.assert_array_equal(batch.deviations(some).observed, deviations.observed[some])


def test_an_alert_carries_the_observed_and_expected_values(tmp_path: Path) -> None:
    spec = SPECS["reconstruct"]
    detector = Detector.load(
        write_artifact(tmp_path / "a", "v1", spec),
        policy=AlertPolicy(threshold=0.999, open_after=1, resolve_after=1),
    )
    series = np.sin(np.arange(200) / 5.0)
    series[120] = 50.0
    result = detector.score({"cpu": series})
    assert [a["status"] for a in result.alerts] == ["open", "resolved"]
    for alert in result.alerts:
        (feature,) = alert["features"]
        end_row = int(alert["source"]["offset"])
        row = end_row - spec.window + 1 + feature["step"]
        assert feature["observed"] == pytest.approx(series[row], rel=1e-6)
        assert np.isfinite(feature["expected"])
        assert (feature["observed"] > feature["expected"]) == (feature["direction"] == "above")
    opened = result.alerts[0]["features"][0]
    assert opened["observed"] == 50.0 and abs(opened["expected"]) < 5.0
    assert opened["step"] == spec.window - 1  # the window that first holds the spike
