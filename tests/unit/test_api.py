"""The embeddable API: ``Detector`` runs the worker's processor over an in-memory store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_ae import Detector
from stream_ae.core.windowing import GapRule
from stream_ae.errors import ConfigError


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    history = {
        "a": np.sin(np.arange(1500) / 8.0),
        "b": 3 + 2 * np.cos(np.arange(1500) / 5.0),
    }
    detector = Detector.fit(
        history, tmp_path_factory.mktemp("api"), window=12, hidden=6, epochs=1, scaling="stream"
    )
    return detector.scorer.artifact.path


def live() -> dict[str, np.ndarray]:
    a = np.sin(np.arange(1500, 1800) / 8.0)
    b = 3 + 2 * np.cos(np.arange(1500, 1800) / 5.0)
    b[150:155] += 9.0
    return {"a": a, "b": b}


def test_scoring_in_pieces_equals_one_call(artifact: Path) -> None:
    whole = Detector.load(artifact).score(live())
    assert whole.alerts, "the injected anomaly of stream b opens an alert"
    pieces = Detector.load(artifact)
    parts = [pieces.score({k: v[i : i + 37] for k, v in live().items()}) for i in range(0, 300, 37)]
    for stream in ("a", "b"):
        mask = np.array(whole.streams) == stream
        joined = np.concatenate([p.scores[np.array(p.streams) == stream] for p in parts])
        np.testing.assert_array_equal(whole.scores[mask], joined)
    assert [a["alert_id"] for a in whole.alerts] == [a["alert_id"] for p in parts for a in p.alerts]


def test_one_score_per_completed_window_and_alerts_point_at_their_rows(artifact: Path) -> None:
    result = Detector.load(artifact).score(live())
    assert len(result.scores) == 2 * (300 - 12 + 1)
    for alert, row in zip(result.alerts, result.alert_rows, strict=True):
        assert result.streams[row] == alert["stream"]
        assert int(result.rows[row]) == alert["source"]["offset"]


def test_the_gap_rule_marks_or_drops_the_windows_across_a_pause(artifact: Path) -> None:
    """Stream a pauses for an hour (60 periods) after its row 100: under mark the 11 windows
    whose 12 rows straddle the pause are flagged, under restart they are not scored."""
    ts = np.arange(300, dtype=np.int64) * 60_000
    ts[101:] += 3_600_000
    series, stamps = {"a": live()["a"]}, {"a": ts}
    plain = Detector.load(artifact).score(series, stamps)
    mark = Detector.load(artifact, gap_rule=GapRule("mark", 10.0)).score(series, stamps)
    restart = Detector.load(artifact, gap_rule=GapRule("restart", 10.0)).score(series, stamps)
    assert not plain.gaps.any() and len(plain.gaps) == len(plain.scores) == 300 - 12 + 1
    np.testing.assert_array_equal(mark.scores, plain.scores)
    assert mark.rows[mark.gaps].tolist() == list(range(101, 112))
    assert restart.rows.tolist() == [r for r in plain.rows.tolist() if not 101 <= r < 112]


def test_a_wrong_feature_count_is_one_clear_error(artifact: Path) -> None:
    with pytest.raises(ConfigError, match="has 2 features; the model takes 1"):
        Detector.load(artifact).score({"a": np.zeros((20, 2))})


def test_unknown_training_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown training option"):
        Detector.fit({"a": np.zeros(100)}, tmp_path, windw=8)


def test_fit_and_train_make_the_same_detector_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Detector.fit (through the stream_ae.trainer entry point) and `stream-ae-train train`
    start from one definition: training.detector.DEFAULT_DETECTOR (model, fit, post)."""
    import dataclasses
    import json

    from stream_ae.model.artifacts import DETECTOR_FILE, load_artifact
    from training import fit as fitting
    from training.cli import main as train_main
    from training.detector import DEFAULT_DETECTOR

    seen: list[tuple[object, object]] = []
    real_fit = fitting.fit_series

    def recording_fit(series: object, spec: object, config: object) -> object:
        seen.append((spec, dataclasses.replace(config, verbose=0)))  # type: ignore[type-var]
        # The definition is what is compared; one short epoch keeps the test quick.
        quick = dataclasses.replace(config, epochs=1, verbose=0)  # type: ignore[type-var]
        return real_fit(series, spec, quick)  # type: ignore[arg-type]

    monkeypatch.setattr(fitting, "fit_series", recording_fit)
    values = np.sin(np.arange(600) / 7.0)
    csv = tmp_path / "cpu.csv"
    csv.write_text(
        "timestamp,value\n" + "".join(f"{60 * i},{v}\n" for i, v in enumerate(values.tolist()))
    )
    assert train_main(["train", "--csv", str(csv), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    detector = Detector.fit({"cpu": values}, tmp_path / "api")
    (cli_spec, cli_fit), (api_spec, api_fit) = seen
    assert api_spec == cli_spec and api_fit == cli_fit
    assert (api_spec.kind, api_spec.window, api_spec.horizon) == (
        DEFAULT_DETECTOR.model.kind,
        DEFAULT_DETECTOR.model.window,
        DEFAULT_DETECTOR.model.horizon,
    )
    assert api_fit == dataclasses.replace(DEFAULT_DETECTOR.fit, verbose=0)
    cli = load_artifact(tmp_path / "cli")
    assert detector.scorer.artifact.post == cli.post == DEFAULT_DETECTOR.post
    assert json.loads((tmp_path / "cli" / DETECTOR_FILE).read_text()) == json.loads(
        (detector.scorer.artifact.path / DETECTOR_FILE).read_text()
    )
    # Options still change it, the horizon following the kind as on the command line.
    bare = Detector.fit(
        {"cpu": values}, tmp_path / "bare", kind="reconstruct", post_processing=False
    )
    assert bare.scorer.artifact.spec.horizon == 0 and bare.scorer.artifact.post is None
