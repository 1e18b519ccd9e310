"""The LSTM autoencoder family, built from a small :class:`ModelSpec`.

- ``reconstruct``: encoder LSTM -> RepeatVector -> decoder LSTM -> TimeDistributed Dense,
  reconstructing the window (or the reversed window, ``reverse=True``, which makes the first
  steps the decoder emits the ones the encoder saw last: easier to learn).
- ``predict``: the encoder reads the first ``window - horizon`` steps, the decoder predicts the
  last ``horizon`` steps.
- ``composite``: one encoder, two decoders: the reconstruction of the input part and the
  prediction of the horizon, trained jointly.

Backend-agnostic Keras 3 (TensorFlow by default, PyTorch or JAX work the same); tanh/sigmoid
LSTMs without recurrent dropout, so cuDNN kernels apply on a GPU. The encoder alone
(:func:`encoder_of`) is the embedding model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

ModelKind = Literal["reconstruct", "predict", "composite"]
# Padded time steps carry this value; the Masking layer makes the encoder skip them.
PAD_VALUE = -1.0e4
CODE_LAYER = "code"


@dataclass(frozen=True)
class ModelSpec:
    """The whole specification of a model: everything needed to rebuild it."""

    kind: ModelKind = "reconstruct"
    window: int = 64
    features: int = 1
    feature_names: tuple[str, ...] = field(default_factory=lambda: ("value",))
    hidden: int = 64
    layers: int = 1
    latent: int | None = None
    dropout: float = 0.0
    reverse: bool = False
    horizon: int = 0
    masking: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("reconstruct", "predict", "composite"):
            raise ValueError(f"unknown model kind {self.kind!r}")
        if len(self.feature_names) != self.features:
            raise ValueError(
                f"{len(self.feature_names)} feature names for {self.features} features"
            )
        if self.window < 2 or self.hidden < 1 or self.layers < 1:
            raise ValueError("window must be >= 2, hidden and layers >= 1")
        if self.kind == "reconstruct" and self.horizon:
            raise ValueError("a reconstruct model has no horizon")
        if self.kind != "reconstruct" and not 1 <= self.horizon < self.window - 1:
            raise ValueError(f"{self.kind} needs 1 <= horizon < window - 1, got {self.horizon}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def input_steps(self) -> int:
        """Time steps the encoder reads."""
        return self.window - self.horizon

    @property
    def code_size(self) -> int:
        return self.latent or self.hidden

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["feature_names"] = list(self.feature_names)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        data["feature_names"] = tuple(data.get("feature_names", ("value",)))
        return cls(**data)


def build_model(spec: ModelSpec, seed: int | None = None) -> Any:
    """A new, untrained Keras model for ``spec`` (outputs in the order of :func:`targets`)."""
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(spec.input_steps, spec.features), name="window")
    x = keras.layers.Masking(mask_value=PAD_VALUE)(inputs) if spec.masking else inputs
    for _ in range(spec.layers - 1):
        x = keras.layers.LSTM(spec.hidden, return_sequences=True)(x)
        if spec.dropout:
            x = keras.layers.Dropout(spec.dropout)(x)
    code = keras.layers.LSTM(spec.code_size, name=CODE_LAYER)(x)

    def decoder(steps: int, name: str) -> Any:
        y = keras.layers.RepeatVector(steps)(code)
        for _ in range(spec.layers):
            y = keras.layers.LSTM(spec.hidden, return_sequences=True)(y)
            if spec.dropout:
                y = keras.layers.Dropout(spec.dropout)(y)
        return keras.layers.TimeDistributed(keras.layers.Dense(spec.features), name=name)(y)

    outputs: list[Any] = []
    if spec.kind in ("reconstruct", "composite"):
        outputs.append(decoder(spec.input_steps, "reconstruction"))
    if spec.kind in ("predict", "composite"):
        outputs.append(decoder(spec.horizon, "prediction"))
    return keras.Model(
        inputs, outputs if len(outputs) > 1 else outputs[0], name=f"lstm_{spec.kind}"
    )


def encoder_of(model: Any) -> Any:
    """The encoder alone (window -> latent code), as a Keras model of its own."""
    import keras

    return keras.Model(model.inputs, model.get_layer(CODE_LAYER).output, name="encoder")


def split_window(spec: ModelSpec, windows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Model inputs and the target of each output for (scaled) windows (N, W, F)."""
    inputs = windows[:, : spec.input_steps]
    targets: list[np.ndarray] = []
    if spec.kind in ("reconstruct", "composite"):
        targets.append(inputs[:, ::-1] if spec.reverse else inputs)
    if spec.kind in ("predict", "composite"):
        targets.append(windows[:, spec.input_steps :])
    return inputs, targets


def window_outputs(spec: ModelSpec, outputs: Sequence[np.ndarray]) -> np.ndarray:
    """The model's output(s) laid back on the window's own steps (N, W, F), NaN where the model
    says nothing (the input steps of a ``predict`` model): the inverse of :func:`split_window`.

    >>> spec = ModelSpec(kind="composite", window=4, horizon=1, reverse=True)
    >>> out = [np.array([[[3.0], [2.0], [1.0]]]), np.array([[[9.0]]])]
    >>> window_outputs(spec, out)[0, :, 0].tolist()
    [1.0, 2.0, 3.0, 9.0]
    """
    n = len(outputs[0]) if len(outputs) else 0
    laid = np.full((n, spec.window, spec.features), np.nan, dtype=np.float32)
    parts = list(outputs)
    if spec.kind in ("reconstruct", "composite"):
        reconstruction = parts.pop(0)
        laid[:, : spec.input_steps] = reconstruction[:, ::-1] if spec.reverse else reconstruction
    if spec.kind in ("predict", "composite"):
        laid[:, spec.input_steps :] = parts.pop(0)
    return laid


def as_output_list(outputs: Any) -> list[np.ndarray]:
    """A model's output(s) as a list of numpy arrays, whatever the backend returned."""
    import keras

    if isinstance(outputs, list | tuple):
        return [np.asarray(keras.ops.convert_to_numpy(o)) for o in outputs]
    if isinstance(outputs, dict):
        return [np.asarray(keras.ops.convert_to_numpy(o)) for o in outputs.values()]
    return [np.asarray(keras.ops.convert_to_numpy(outputs))]
