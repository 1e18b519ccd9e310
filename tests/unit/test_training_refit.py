"""Retraining that holds: a refit starts from the champion's definition and says what it
changes, its time range is event time (never the wall clock), and each failure is one line with
the counts behind it. No model is fitted here: these are the decisions before the fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_ae.core.scoring import fit_calibration
from stream_ae.model.artifacts import Artifact, CalibrationSet, Scaling
from tests.support.training_data import TINY_FIT, sine_series, tiny_spec
from training.data import DataSourceError, ReplayStats, ReplayWindow, Series, parse_absolute_time
from training.fit import FitConfig
from training.refit import (
    RefitError,
    RefitPlan,
    fit_config_of,
    refit_once,
)
from training.registry import Registry

DAY_MS = 86_400_000
OLD_MS = 1_396_310_400_000  # 2014-04-01: data far older than the wall clock
STATS = ReplayStats(
    messages=12, used=0, invalid={"bad_ts": 12}, dropped_by_bound=0, out_of_range=0, seconds=0.1
)


def _champion(**config: object) -> Artifact:
    """An in-memory champion: per-stream scaling, POT thresholds per stream (no model needed
    to decide a definition)."""
    errors = np.random.default_rng(0).normal(size=(200, 1))
    pot = fit_calibration(errors, method="pot", level=0.995)
    recorded = FitConfig(
        scaling="stream",
        threshold_method="pot",
        threshold_level=0.995,
        per_stream_calibration=True,
        **config,
    )  # type: ignore[arg-type]
    return Artifact(
        name="m",
        version="v1",
        path=Path("<memory>"),
        spec=tiny_spec("predict", window=16),
        scaling=Scaling("stream", (0.0,), (1.0,)),
        calibration=CalibrationSet(pot, {"a": pot}),
        metrics={"config": {k: getattr(recorded, k) for k in recorded.__dataclass_fields__}},
        model=None,
        manifest={},
    )


def test_a_refit_keeps_the_champions_definition_and_says_nothing_changed() -> None:
    champion = _champion()
    spec, fit, changes = RefitPlan(name="m").definition(champion)
    assert spec == champion.spec
    assert (fit.scaling, fit.threshold_method, fit.threshold_level) == ("stream", "pot", 0.995)
    assert fit.per_stream_calibration and changes == []


def test_a_refit_changes_only_what_it_is_told_and_says_so() -> None:
    plan = RefitPlan(name="m", spec_changes={"window": 24}, fit_changes={"scaling": "global"})
    spec, fit, changes = plan.definition(_champion())
    assert spec.window == 24 and spec.kind == "predict" and spec.horizon == 3
    assert fit.threshold_method == "pot"
    assert changes == ["window 16 -> 24", "scaling stream -> global"]


def test_the_artifact_itself_wins_over_a_missing_record() -> None:
    champion = _champion()
    bare = Artifact(**{**champion.__dict__, "metrics": {}})
    config = fit_config_of(bare)
    assert (config.scaling, config.threshold_method, config.per_stream_calibration) == (
        "stream",
        "pot",
        True,
    )


def test_no_champion_and_no_spec_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(RefitError, match="has no champion yet: give the model spec"):
        refit_once(Registry(tmp_path), RefitPlan(name="m"), lambda: [])


def test_the_range_is_relative_to_the_newest_event_not_the_wall_clock() -> None:
    ts = OLD_MS + np.arange(10) * DAY_MS  # ten days of 2014, one event a day
    series = [Series("s", np.arange(10, dtype=np.float32), ts)]
    (kept,) = ReplayWindow.from_options("3d", None, None).apply(series, STATS)
    assert kept.ts_ms.tolist() == ts[-4:].tolist()  # the newest event and three days before
    absolute = ReplayWindow.from_options("3d", str(int(ts[2])), str(int(ts[4])))
    assert absolute.since_ms is None and (absolute.start_ms, absolute.end_ms) == (ts[2], ts[4])
    # train --topic --from 3d: the same, relative to the newest event.
    assert ReplayWindow.from_bounds("-3d", None) == ReplayWindow(3 * DAY_MS, None, None)
    assert ReplayWindow.from_bounds("earliest", None) == ReplayWindow(None, None, None)


def test_nothing_in_range_is_one_line_with_the_replays_counts() -> None:
    with pytest.raises(DataSourceError) as caught:
        ReplayWindow.from_options("7d", None, None).apply([], STATS)
    message = str(caught.value)
    assert "\n" not in message
    assert "read 12 messages, 0 usable" in message and "12 bad_ts" in message


def test_absolute_bounds_are_not_durations() -> None:
    assert parse_absolute_time("2014-04-01T00:00:00Z") == OLD_MS
    with pytest.raises(ValueError, match="use --since"):
        parse_absolute_time("7d")


def test_too_little_data_is_one_line_with_counts(tmp_path: Path) -> None:
    plan = RefitPlan(name="m", spec=tiny_spec(window=12), fit=TINY_FIT)
    with pytest.raises(RefitError) as caught:
        refit_once(Registry(tmp_path), plan, lambda: [sine_series("a", 40)])
    message = str(caught.value)
    assert "\n" not in message
    assert "too little data" in message and "1 series, 40 events" in message
