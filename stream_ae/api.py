"""The detector as a Python object: load or fit a model, score series in a notebook or a service.

:class:`Detector` runs exactly what the worker runs (the same :class:`StreamProcessor`, windowing,
scoring and alert policy), over an in-memory window store instead of Redis and without Kafka.
Each call of :meth:`Detector.score` continues the streams where the previous call left them, as
a worker does with the next poll batch, so live data can be fed in pieces.

>>> import numpy as np, tempfile
>>> from stream_ae import Detector
>>> history = {"cpu": np.sin(np.arange(3000) / 10.0)}
>>> detector = Detector.fit(history, tempfile.mkdtemp(), window=16, hidden=8, epochs=2)
>>> live = np.sin(np.arange(3000, 3400) / 10.0)
>>> live[300:306] += 4.0                              # an anomaly
>>> result = detector.score({"cpu": live})
>>> len(result.scores) == len(live) - 15              # one score per completed window
True
>>> [a["status"] for a in result.alerts][:1]
['open']
>>> int(result.rows[result.alert_rows[0]]) >= 300     # it opened on the anomaly, not before
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from stream_ae.core.alerting import AlertPolicy
from stream_ae.core.records import Event
from stream_ae.core.windowing import NO_GAP_CHECK, GapRule
from stream_ae.errors import ConfigError
from stream_ae.io.window_store import InMemoryWindowStore
from stream_ae.model.artifacts import load_artifact
from stream_ae.model.inference import Scorer
from stream_ae.model.registry import resolve_artifact_dir
from stream_ae.worker.processor import StreamProcessor

# The in-process "topic" and "partition" of events fed to a Detector (alerts name them).
SOURCE_TOPIC = "stream-ae.api"
TRAINER_GROUP = "stream_ae.trainer"
_STEP_MS = 60_000  # timestamps of series given without any: one a minute


@dataclass(frozen=True)
class Scores:
    """The result of :meth:`Detector.score`: one row per scored window, and the alerts.

    ``rows`` is each window's last row in its series (0-based, counted across calls),
    ``scores`` the final anomaly score in [0, 1] the alert policy acted on (after calibration
    and post-processing), ``model_scores`` the calibrated score of the model's error alone,
    ``distances`` the distance of the window's error, and ``alert_rows`` the indices (into
    these arrays) of the windows that opened or resolved an alert, in the order of ``alerts``.
    ``gaps``: whether each window spans a gap in its stream (only ever true with a
    :class:`~stream_ae.core.windowing.GapRule` ``mark``).
    """

    streams: list[str]
    rows: np.ndarray
    ts_ms: np.ndarray
    scores: np.ndarray
    model_scores: np.ndarray
    distances: np.ndarray
    alerts: list[dict[str, Any]]
    alert_rows: np.ndarray
    gaps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


class Detector:
    """One model and the worker's whole scoring chain, over an in-memory store.

    ``policy`` overrides the alert policy (threshold, hysteresis), the fields it sets; the
    others are the detector's own (its ``detector.json``), else the built-in ones, as in a
    worker. ``gap_rule`` is the worker's
    rule for windows across a gap in a stream (``STREAM_AE_GAP_POLICY``; by default they are
    scored as any other).
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        policy: AlertPolicy | None = None,
        gap_rule: GapRule = NO_GAP_CHECK,
    ) -> None:
        self.scorer = scorer
        spec = scorer.artifact.spec
        self._next_row: dict[str, int] = {}
        self._processor = StreamProcessor(
            InMemoryWindowStore(spec.window, spec.features),
            lambda: scorer,
            stride=1,
            policy=policy or AlertPolicy(),
            clock_ms=lambda: 0,
            gap_rule=gap_rule,
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        name: str = "default",
        policy: AlertPolicy | None = None,
        gap_rule: GapRule = NO_GAP_CHECK,
    ) -> Detector:
        """A detector from an artifact directory, or from a registry root's champion ``name``
        (a folder, or a URL of object storage such as ``s3://bucket/prefix``)."""
        directory = resolve_artifact_dir(path, name)
        return cls(Scorer(load_artifact(directory)), policy=policy, gap_rule=gap_rule)

    @classmethod
    def fit(
        cls,
        series: Mapping[str, Any],
        out_dir: str | Path,
        *,
        policy: AlertPolicy | None = None,
        **options: Any,
    ) -> Detector:
        """Train on ``{stream: values}`` (arrays of shape (T,) or (T, F)), write the artifact to
        ``out_dir`` and load it. The detector is the shipped default, the one ``stream-ae-train
        train`` fits (model, fit and post-processing); ``options`` change it by name
        (``window``, ``hidden``, ``epochs``, ``kind``, ...: see ``stream-ae-train train
        --help``), and ``post_processing=False`` leaves the post-processing out (the alert
        policy then acts on the calibrated window score).

        The trainer is the ``training`` package, found through the ``stream_ae.trainer``
        entry point: the worker's package never imports it.
        """
        trainers = {ep.name: ep for ep in entry_points(group=TRAINER_GROUP)}
        if "fit" not in trainers:
            raise ConfigError(
                "Detector.fit needs the trainer (the training package): pip install stream-ae"
            )
        fit = trainers["fit"].load()
        path = fit({k: np.asarray(v) for k, v in series.items()}, Path(out_dir), **options)
        return cls.load(path, policy=policy)

    def score(
        self,
        series: Mapping[str, Any],
        timestamps: Mapping[str, Any] | None = None,
    ) -> Scores:
        """Score the next rows of one or many streams: ``{stream: values}`` with values of shape
        (T,) or (T, F), and optionally ``{stream: epoch-ms timestamps}``.

        All streams' rows go through the processor as one batch (one model call).
        """
        spec = self.scorer.artifact.spec
        events: list[Event] = []
        for stream, raw in series.items():
            values = np.asarray(raw, dtype=np.float32).reshape(len(raw), -1)
            if values.shape[1] != spec.features:
                raise ConfigError(
                    f"stream {stream!r} has {values.shape[1]} features; the model takes "
                    f"{spec.features} ({', '.join(spec.feature_names)})"
                )
            first = self._next_row.get(stream, 0)
            rows = np.arange(first, first + len(values))
            ts = (
                np.asarray(timestamps[stream], dtype=np.int64)
                if timestamps is not None and stream in timestamps
                else rows * _STEP_MS
            )
            self._next_row[stream] = first + len(values)
            events.extend(
                Event(stream, int(t), v, SOURCE_TOPIC, 0, int(r))
                for t, v, r in zip(ts, values, rows, strict=True)
            )
        outcome = self._processor.process(events)
        self._processor.save(outcome.touched)
        windows = outcome.windows
        row_of = {
            (stream, int(offset)): i
            for i, (stream, offset) in enumerate(
                zip(windows.streams, windows.end_offsets, strict=True)
            )
        }
        alert_rows = np.array(
            [row_of[(a["stream"], int(a["source"]["offset"]))] for a in outcome.alerts], dtype=int
        )
        return Scores(
            streams=list(windows.streams),
            rows=np.asarray(windows.end_offsets, dtype=np.int64),
            ts_ms=np.asarray(windows.end_ts_ms, dtype=np.int64),
            scores=np.asarray(windows.final_scores),
            model_scores=np.asarray(windows.scores),
            distances=np.asarray(windows.distances),
            alerts=outcome.alerts,
            alert_rows=alert_rows,
            gaps=np.asarray(windows.gaps, dtype=bool),
        )
