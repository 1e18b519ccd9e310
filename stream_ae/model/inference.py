"""The model runtime: one call of the autoencoder per batch of windows, bucketed.

Windows are padded up to the next of a few fixed batch sizes (``buckets``), so a compiled
graph is reused instead of retraced for every new batch size; batches larger than the largest
bucket are cut into chunks of it. Everything after the model call is pure numpy
(:mod:`stream_ae.core.scoring`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stream_ae.core.scoring import Deviations, WindowScores, largest_deviations, score_windows
from stream_ae.model.artifacts import Artifact
from stream_ae.model.network import as_output_list, split_window, window_outputs

_ALL = slice(None)


Rows = slice | np.ndarray


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of a batch of windows plus the model's version and the time its call took, and
    what explains them: the model's expected values and the largest deviations from them.

    Those are computed on request, for the rows asked (the windows that raised an alert, or
    the few an ``explain`` shows): the model's outputs are kept as they came, so a batch
    nobody asks about costs nothing more.
    """

    scores: WindowScores
    thresholds: np.ndarray  # (N,) the alert threshold of each window's calibration
    model_version: str
    model_latency_s: float
    windows: np.ndarray  # (N, W, F) raw values, as scored
    outputs: list[np.ndarray]  # the model's output(s), scaled, as split_window's targets
    artifact: Artifact
    stat_mean: np.ndarray | None = None
    stat_std: np.ndarray | None = None

    def expected(self, rows: Rows = _ALL) -> np.ndarray:
        """The model's output laid on the windows' steps in original units (n, W, F) for
        ``rows``; NaN on steps the model does not output (the input part of a ``predict``
        model)."""
        laid = window_outputs(self.artifact.spec, [o[rows] for o in self.outputs])
        mean = None if self.stat_mean is None else self.stat_mean[rows]
        std = None if self.stat_std is None else self.stat_std[rows]
        return self.artifact.scaling.invert(laid, mean, std)

    def deviations(self, rows: Rows = _ALL) -> Deviations:
        """Per window of ``rows`` and feature, the step of the largest deviation from the
        expected values and both values there (see :func:`largest_deviations`)."""
        return largest_deviations(self.windows[rows], self.expected(rows))


class Scorer:
    """Scores windows with one artifact. Thread-safe for one caller at a time per instance.

    ``jit``: on the TensorFlow backend, compile the model's inference with XLA (Keras's
    ``jit_compile``): the LSTM's step loop becomes one compiled kernel instead of a graph
    loop run op by op, 2-4x faster on small batches and 20-35% on large ones on a CPU, for
    about 1.5 s of compiling per bucket size at its first call (:meth:`warm_up` does them all
    up front). Outputs differ from the uncompiled model's by float32 rounding (about 1e-7)
    and do not depend on the batch a window is scored in. Other backends are left as they
    are: JAX compiles anyway, and on torch ``jit_compile`` means ``torch.compile``, whose
    compile times and graph breaks do not pay for one model call per batch.
    """

    def __init__(
        self,
        artifact: Artifact,
        buckets: Sequence[int] = (32, 128, 512, 2048),
        *,
        jit: bool = True,
    ) -> None:
        self.artifact = artifact
        self.buckets = tuple(sorted(set(buckets)))
        self.jit = jit
        self._lock = threading.Lock()
        if jit:
            import keras

            model = artifact.model
            # Compiled already (a recycled model of a swap): compiling again would drop its
            # compiled calls, and the next batch would pay for them.
            if (
                keras.backend.backend() == "tensorflow"
                and isinstance(model, keras.Model)
                and not (model.compiled and model.jit_compile is True)
            ):
                model.compile(jit_compile=True)

    @property
    def version(self) -> str:
        return self.artifact.version

    def bucket_for(self, n: int) -> int:
        """The padded batch size for ``n`` windows."""
        for size in self.buckets:
            if n <= size:
                return size
        return self.buckets[-1]

    def predict(self, inputs: np.ndarray) -> list[np.ndarray]:
        """The model's output(s) for scaled inputs (N, T, F), in bucket-sized calls."""
        n = len(inputs)
        outputs: list[list[np.ndarray]] = []
        largest = self.buckets[-1]
        with self._lock:
            for start in range(0, max(n, 1), largest):
                chunk = inputs[start : start + largest]
                size = self.bucket_for(len(chunk))
                padded = np.zeros((size, *inputs.shape[1:]), dtype=np.float32)
                padded[: len(chunk)] = chunk
                result = as_output_list(self.artifact.model.predict_on_batch(padded))
                outputs.append([r[: len(chunk)] for r in result])
        return [np.concatenate([o[i] for o in outputs]) for i in range(len(outputs[0]))]

    def warm_up(self) -> None:
        """Call the model once at every bucket size so the first real batch is not slow."""
        spec = self.artifact.spec
        for size in self.buckets:
            self.predict(np.zeros((size, spec.input_steps, spec.features), dtype=np.float32))

    def score(
        self,
        windows: np.ndarray,
        streams: Sequence[str],
        stat_mean: np.ndarray | None = None,
        stat_std: np.ndarray | None = None,
    ) -> ScoredBatch:
        """Score raw windows (N, W, F) of the given streams: one model call for the batch."""
        artifact = self.artifact
        scaled = artifact.scaling.apply(windows, stat_mean, stat_std)
        inputs, targets = split_window(artifact.spec, scaled)
        started = time.perf_counter()
        outputs = self.predict(inputs) if len(inputs) else [np.zeros_like(t) for t in targets]
        latency = time.perf_counter() - started
        target = np.concatenate(targets, axis=1)
        output = np.concatenate(outputs, axis=1)
        scores, thresholds = self._score_by_calibration(streams, target, output)
        return ScoredBatch(
            scores,
            thresholds,
            artifact.version,
            latency,
            windows,
            outputs,
            artifact,
            stat_mean if artifact.scaling.mode == "stream" else None,
            stat_std if artifact.scaling.mode == "stream" else None,
        )

    def _score_by_calibration(
        self, streams: Sequence[str], target: np.ndarray, output: np.ndarray
    ) -> tuple[WindowScores, np.ndarray]:
        """Each window scored by its stream's calibration (see ``CalibrationSet.route``)."""
        groups = self.artifact.calibration.route(streams)
        if len(groups) == 1:  # the common case: one calibration for the whole batch
            only, _ = groups[0]
            return score_windows(only, target, output), np.full(len(streams), only.threshold)
        n, features = len(streams), target.shape[2]
        distances, scores = np.zeros(n), np.zeros(n)
        contributions, directions = np.zeros((n, features)), np.zeros((n, features), dtype=int)
        thresholds = np.zeros(n)
        for calibration, rows in groups:
            part = score_windows(calibration, target[rows], output[rows])
            distances[rows], scores[rows] = part.distances, part.scores
            contributions[rows], directions[rows] = part.contributions, part.directions
            thresholds[rows] = calibration.threshold
        return WindowScores(distances, scores, contributions, directions), thresholds
