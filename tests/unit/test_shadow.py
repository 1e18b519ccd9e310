"""The shadow gate: both models replay the same traffic through the worker's processor."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from stream_ae.model.artifacts import Artifact, load_artifact
from training.api import fit_detector
from training.data import Series
from training.shadow import compare, format_verdict, shadow_gate, shadow_run

STEP_MS = 60_000


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    t = np.arange(2000)
    history = {f"s{i}": np.sin(t / (6.0 + i)) for i in range(3)}
    # Without post-processing: the challengers below move the calibrated score's threshold.
    path = fit_detector(
        history,
        tmp_path_factory.mktemp("shadow"),
        window=12,
        hidden=6,
        epochs=2,
        post_processing=False,
    )
    return load_artifact(path)


def with_threshold(artifact: Artifact, threshold: float, version: str) -> Artifact:
    """The same model with another alert threshold (a stand-in for a worse challenger)."""
    calibration = dataclasses.replace(
        artifact.calibration,
        default=dataclasses.replace(artifact.calibration.default, threshold=threshold),
    )
    return dataclasses.replace(artifact, calibration=calibration, version=version)


def insensitive(artifact: Artifact, version: str) -> Artifact:
    """The same model calibrated as if errors 1000 times larger were normal: it sees nothing."""
    default = artifact.calibration.default
    calibration = dataclasses.replace(
        artifact.calibration,
        default=dataclasses.replace(
            default,
            ref_distances=default.ref_distances * 1e3,
            tail_start=default.tail_start * 1e3,
            tail_scale=default.tail_scale * 1e3,
        ),
    )
    return dataclasses.replace(artifact, calibration=calibration, version=version)


def traffic(labels: bool = False) -> list[Series]:
    t = np.arange(2000, 3440)  # one day a stream
    out = []
    for i in range(3):
        values = np.sin(t / (6.0 + i))
        values[700:706] += 5.0
        window = ((t[690] * STEP_MS, t[720] * STEP_MS),) if labels else ()
        out.append(Series(f"s{i}", values, t * STEP_MS, labels=window))
    return out


def test_a_challenger_that_would_flood_the_pager_is_rejected(champion: Artifact) -> None:
    noisy = with_threshold(champion, 0.5, "noisy")
    verdict = shadow_gate(champion, noisy, traffic())
    assert not verdict.passed
    assert verdict.challenger.alerts_opened > 3 * max(verdict.champion.alerts_opened, 1)
    assert "alerts against the champion's" in verdict.reason
    assert "REJECT" in format_verdict(verdict)


def test_an_equal_challenger_passes_and_sees_the_same_alerts(champion: Artifact) -> None:
    same = dataclasses.replace(champion, version="same")
    verdict = shadow_gate(champion, same, traffic())
    assert verdict.passed, verdict.reason
    ids = [a["alert_id"] for a in verdict.champion.alerts]
    assert ids and len(ids) == len(verdict.challenger.alerts)


def test_labels_give_hits_and_a_blind_challenger_is_rejected(champion: Artifact) -> None:
    blind = insensitive(champion, "blind")
    verdict = shadow_gate(champion, blind, traffic(labels=True))
    assert verdict.champion.quality and verdict.champion.quality.hits == 3
    assert verdict.challenger.quality and verdict.challenger.quality.hits == 0
    assert not verdict.passed and "labelled windows" in verdict.reason


def test_alerts_inside_the_training_span_are_counted(champion: Artifact) -> None:
    series = traffic()
    span = (int(series[0].ts_ms[0]), int(series[0].ts_ms[-1]))
    result = shadow_run(champion, series, training_span_ms=span)
    assert result.opened_in_training == result.alerts_opened > 0
    assert compare(None, result).passed


def test_stream_days_and_rates(champion: Artifact, tmp_path: Path) -> None:
    result = shadow_run(champion, traffic())
    assert result.stream_days == pytest.approx(3 * 1439 / 1440)
    assert result.alerts_per_stream_day == pytest.approx(result.alerts_opened / result.stream_days)
    assert sum(result.rows.values()) == 3 * (1440 - 12 + 1)
