"""Fitting: each model kind learns, masking ignores padding, artifacts round-trip, seeds hold."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from stream_ae.core.windowing import series_windows
from stream_ae.model.artifacts import load_artifact
from stream_ae.model.network import PAD_VALUE, ModelKind, ModelSpec, build_model, split_window
from tests.support.training_data import KINDS, TINY_FIT, sine_series, tiny_spec
from training.data import Series
from training.fit import FitResult, fit_series, masked_loss, save_fit, train_artifact
from training.model_runner import run_model
from training.windows import (
    Windows,
    pad_sequences,
    pad_side,
    split_series_windows,
    target_weights,
)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_reconstructs_better_than_a_constant(kind: ModelKind) -> None:
    series = [sine_series("a", 500, seed=1), sine_series("b", 500, seed=2)]
    # The reconstruct case also trains with masking on a series shorter than the window.
    masking = kind == "reconstruct"
    if masking:
        series.append(sine_series("short", 9, seed=3))
    spec = tiny_spec(kind, hidden=16, masking=masking)
    result = fit_series(series, spec, replace(TINY_FIT, epochs=5, min_length=5))
    assert result.metrics["padded_windows"] == (1 if masking else 0)
    view = run_model(result.model, result.spec, result.scaling, result.val)
    model_mse = float(np.mean((view.targets - view.outputs) ** 2))
    # The best constant on scaled data is the training mean, ~0 after scaling.
    train_mean = float(np.mean(split_window(result.spec, view.scaled)[1][0]))
    constant_mse = float(np.mean((view.targets - train_mean) ** 2))
    assert model_mse < 0.5 * constant_mse, (kind, model_mse, constant_mse)


def _loss(model: Any, spec: ModelSpec, x: np.ndarray, weights: list[np.ndarray] | None) -> float:
    inputs, targets = split_window(spec, x)
    y = targets if len(targets) > 1 else targets[0]
    w = None if weights is None else (weights if len(weights) > 1 else weights[0])
    result = model.evaluate(inputs, y, sample_weight=w, verbose=0)
    return float(result[0] if isinstance(result, list) else result)  # [total, per output...]


def _compile(model: Any, outputs: int, loss: Any) -> None:
    model.compile(optimizer="adam", loss=[loss] * outputs if outputs > 1 else loss)


@pytest.mark.parametrize(
    ("kind", "reverse"),
    [("reconstruct", False), ("reconstruct", True), ("predict", False), ("composite", True)],
)
def test_masked_padding_does_not_change_the_loss_of_the_unpadded_part(
    kind: ModelKind, reverse: bool
) -> None:
    """A sequence of L steps padded to W and masked has exactly the loss the same weights
    give it unpadded, in a model of window L."""
    long_spec = tiny_spec(kind, window=20, masking=True, reverse=reverse)
    long_model = build_model(long_spec, seed=3)
    outputs = 2 if kind == "composite" else 1
    _compile(long_model, outputs, masked_loss())
    rng = np.random.default_rng(0)
    for length in (11,):
        seq = rng.standard_normal((length, 1)).astype(np.float32)
        short_spec = replace(long_spec, window=length, masking=False)
        short_model = build_model(short_spec, seed=4)
        short_model.set_weights(long_model.get_weights())  # LSTM weights do not depend on W
        _compile(short_model, outputs, "mse")
        unpadded_loss = _loss(short_model, short_spec, seq[None], None)

        padded, lengths = pad_sequences([seq], long_spec.window, pad_side(long_spec))
        assert (padded == PAD_VALUE).sum() == long_spec.window - length
        windows = Windows(padded, np.zeros((1, 1)), np.ones((1, 1)), ["x"], lengths=lengths)
        weights = target_weights(long_spec, windows)
        assert weights is not None
        masked = _loss(long_model, long_spec, padded, weights)
        assert masked == pytest.approx(unpadded_loss, rel=1e-4, abs=1e-6)

        # The same weights without masking read the padding (and, padded at the end, score
        # the padded steps): another loss, so the equality above is not true by accident.
        unmasked_spec = replace(long_spec, masking=False)
        unmasked = build_model(unmasked_spec, seed=5)
        unmasked.set_weights(long_model.get_weights())
        _compile(unmasked, outputs, "mse")
        control = _loss(unmasked, unmasked_spec, padded, None)
        assert abs(control - unpadded_loss) > 1e-3 * unpadded_loss


def test_short_series_become_one_padded_window_when_masking() -> None:
    spec = tiny_spec("reconstruct", masking=True)
    short = Series("short", np.arange(7, dtype=np.float32), 1000 * np.arange(7))
    train, _ = split_series_windows([short], spec.window, 1, 0.2, pad=pad_side(spec), min_length=5)
    assert len(train) == 1 and train.lengths.tolist() == [7]
    assert np.array_equal(train.raw[0, :7, 0], np.arange(7))
    assert np.all(train.raw[0, 7:] == PAD_VALUE)
    # The worker's windowing gives the statistics at the last event.
    reference = series_windows(short.values, 7, 1)
    assert np.allclose(train.stat_mean, reference.stat_mean)
    # Without masking a short series yields no window at all.
    unmasked, _ = split_series_windows([short], spec.window, 1, 0.2)
    assert len(unmasked) == 0


def test_split_is_time_ordered() -> None:
    rising = Series("r", np.arange(200, dtype=np.float32), 1000 * np.arange(200))
    train, val = split_series_windows([rising], 10, 1, 0.25)
    assert len(train) == 143 and len(val) == 48
    assert train.end_ts_ms.max() < val.end_ts_ms.min()
    assert np.all(np.diff(train.end_ts_ms) > 0) and np.all(np.diff(val.end_ts_ms) > 0)


@pytest.fixture(scope="module")
def fitted() -> FitResult:
    return fit_series([sine_series("a", 400), sine_series("b", 400, seed=5)], tiny_spec(), TINY_FIT)


def test_save_load_round_trip_gives_identical_outputs(fitted: FitResult, tmp_path: Path) -> None:
    path = save_fit(fitted, tmp_path / "artifact", name="m", version="v1")
    artifact = load_artifact(path)
    assert artifact.spec == fitted.spec
    assert artifact.scaling == fitted.scaling
    assert artifact.calibration.to_dict() == fitted.calibration.to_dict()
    # Scaling was fitted on the training windows alone, not on the validation ones too.
    everything = np.concatenate([fitted.train.raw, fitted.val.raw])
    assert artifact.scaling.mean[0] == pytest.approx(fitted.train.raw.mean(), rel=1e-6)
    assert artifact.scaling.mean[0] != pytest.approx(everything.mean(), rel=1e-6)
    x = np.random.default_rng(1).standard_normal((33, 12, 1)).astype(np.float32)
    before = keras.ops.convert_to_numpy(fitted.model(x))
    after = keras.ops.convert_to_numpy(artifact.model(x))
    assert np.array_equal(before, after)


def test_train_artifact_with_the_same_seed_gives_the_same_model(
    fitted: FitResult, tmp_path: Path
) -> None:
    """train_artifact (the signature the worker tests and the demo use) is reproducible: the
    same data and seed give the fixture's weights exactly."""
    series = [sine_series("a", 400), sine_series("b", 400, seed=5)]
    pairs = [(s.name, s.values) for s in series]  # plain (name, values), as older callers pass
    path = train_artifact(
        pairs, tiny_spec(), tmp_path / "a", name="demo", version="v7", config=TINY_FIT
    )
    artifact = load_artifact(path)
    assert (artifact.name, artifact.version) == ("demo", "v7")
    weights = zip(fitted.model.get_weights(), artifact.model.get_weights(), strict=True)
    assert all(np.array_equal(a, b) for a, b in weights)
