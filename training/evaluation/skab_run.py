"""``stream-ae evaluate skab``: run our detector over SKAB files, as streams, no look-ahead.

Per file (SKAB's protocol, :mod:`training.evaluation.skab_score`): a model is fitted with
:func:`training.fit.fit_series` on the first :data:`TRAIN_ROWS` rows (8 sensor features), written
as an artifact and loaded back as a worker loads it. Then every row of the file is replayed in
time order as a dict-valued event (``{"value": {feature name: number}}``, encoded and decoded
with the worker's own :func:`~stream_ae.core.records.decode_event`) through
:class:`~stream_ae.worker.processor.StreamProcessor` over an :class:`InMemoryWindowStore`. The
training rows only fill the window state; the rows after them are scored.

The 0/1 prediction of a row is the processor's own alert state: 1 from the window that opened
an alert to the window that resolved it (:func:`alert_predictions`). The detector is the one a
worker runs: the model, and the post-processing and alert policy written into the artifact's
``detector.json`` (:class:`Detection` names them SKAB's way: the smoothed distance or the
anomaly likelihood, the running-range check, :mod:`stream_ae.core.postprocess`; the open and
resolve runs, :mod:`stream_ae.core.alerting`). The processor takes the policy from the
artifact, as a worker with no alert settings of its own does. There is no scoring path of the
evaluator's own. The
cross-validation (:mod:`training.evaluation.cv`) varies only what comes after the model, so it
replays the same pure post-processing and policy over the processor's recorded distances
(:func:`predict_rows`), which gives exactly the processor's predictions (tested).

Attribution: the alert that opens a detection carries the per-feature contributions of its
window (the share of the window's error each sensor makes); the report counts, per group of
files, which sensor contributed most to each detection that overlaps a labelled anomaly.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stream_ae.core.alerting import OPEN, AlertPolicy, AlertState
from stream_ae.core.postprocess import (
    DistanceParams,
    LikelihoodParams,
    PostParams,
    RangeParams,
    new_post_state,
    post_batch,
)
from stream_ae.core.records import Event, decode_event, encode_event
from stream_ae.errors import StreamAEError
from stream_ae.io.window_store import InMemoryWindowStore
from stream_ae.model.artifacts import Artifact, load_artifact
from stream_ae.model.inference import ScoredBatch, Scorer
from stream_ae.model.network import ModelKind, ModelSpec
from stream_ae.score_timeline import Timeline, flag_runs, plot_timeline, pyplot
from stream_ae.worker.processor import StreamProcessor
from training.evaluation.skab_score import (
    TRAIN_ROWS,
    PooledScore,
    SkabError,
    SkabFile,
    confusion,
    data_files,
    pooled_score_of,
    predictions_path,
    read_skab_file,
    write_predictions,
)
from training.fit import FitConfig, fit_series, save_fit

REPLAY_TOPIC = "skab"
RUN_FILE = "run.json"
# A JSON event of 8 named floats is about 250 bytes; the worker's default limit is far above.
MAX_EVENT_BYTES = 65_536
# Where a distance threshold lands on the alert policy's [0, 1] score scale (DistanceParams).
DISTANCE_POLICY_LEVEL = 0.5
SCORES = ("calibrated", "distance", "likelihood")


@dataclass(frozen=True)
class Detection:
    """What comes after the model: a post-processing (:class:`PostParams`) and an alert policy,
    both written into the artifact's ``detector.json``, in SKAB's terms.

    ``score``: ``calibrated`` (no post-processing: the processor's calibrated window score at
    the model's calibrated threshold, as a worker without ``detector.json``), ``distance`` (the
    mean of the last ``smoothing`` window distances, scaled so that ``threshold``, in distance
    units, lands at the detector's threshold 0.5; :class:`DistanceParams`) or ``likelihood``
    (the anomaly likelihood over the distances: their mean over ``smoothing`` windows against
    an exponentially weighted history of ``memory`` windows, the training rows' included, as a
    log-scaled tail score in [0, 1]; ``threshold`` in those units).
    ``range_margin``: if set, the running-range check (:class:`RangeParams`): a window whose
    last row has some feature outside the range of the stream's rows before it by more than
    ``range_margin`` times that range scores 1; it starts after the training rows' windows.
    ``drop`` (distance only; None: off): the distance's episodes (:class:`DistanceParams`'s
    ``drop``, with ``drop_after`` windows): an episode ends once the smoothed distance stays
    below ``drop`` times the episode's mean, and the next opens only at that distance over
    ``drop``.
    The alert policy (``detector.json``'s ``"policy"``, which a worker runs unless its
    ``STREAM_AE_*`` alert settings say otherwise) opens after ``open_after`` windows at or above
    the threshold and resolves after ``resolve_after`` windows below
    ``threshold * resolve_ratio``.
    """

    score: str = "calibrated"
    smoothing: int = 1
    range_margin: float | None = None
    threshold: float | None = None
    open_after: int = 1
    resolve_after: int = 3
    resolve_ratio: float = 0.9
    memory: int = 200
    drop: float | None = None
    drop_after: int = 10

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.drop is not None and self.score != "distance":
            raise ValueError(f"drop goes with the distance score, not {self.score!r}")
        if self.smoothing < 1:
            raise ValueError(f"smoothing must be >= 1, got {self.smoothing}")
        if self.score == "calibrated" and (
            self.smoothing != 1 or self.range_margin is not None or self.threshold is not None
        ):
            raise ValueError(
                "a calibrated score has no post-processing: no smoothing, range_margin or "
                "threshold (the model's calibrated threshold applies)"
            )
        if self.score != "calibrated" and self.threshold is None:
            raise ValueError(f"a {self.score} score needs a threshold")
        self.post(1)  # the post-processing's own checks
        self.policy()

    def post(self, learning_windows: int) -> PostParams | None:
        """The post-processing this detection describes (None: the calibrated score), with a
        range check that starts after ``learning_windows`` windows."""
        if self.score == "calibrated":
            return None
        assert self.threshold is not None  # checked above
        range_check = (
            None
            if self.range_margin is None
            else RangeParams(margin=self.range_margin, learning_windows=learning_windows)
        )
        if self.score == "distance":
            return PostParams(
                likelihood=None,
                seasonal=None,
                hold=0,
                threshold=DISTANCE_POLICY_LEVEL,
                distance=DistanceParams(
                    smoothing=self.smoothing,
                    level=self.threshold,
                    drop=self.drop,
                    drop_after=self.drop_after,
                ),
                range=range_check,
            )
        likelihood = LikelihoodParams(short_window=self.smoothing, long_window=self.memory)
        return PostParams(
            likelihood=likelihood,
            seasonal=None,
            hold=0,
            threshold=self.threshold,
            range=range_check,
        )

    def policy(self) -> AlertPolicy:
        """The detector's alert policy (``detector.json``): every rule but the threshold, which
        is the detector's score threshold (the post-processing's, or the model's calibrated
        one)."""
        return AlertPolicy(
            resolve_ratio=self.resolve_ratio,
            open_after=self.open_after,
            resolve_after=self.resolve_after,
        )


@dataclass(frozen=True)
class SkabParams:
    """The detector for every SKAB file: model, fit and detection. Small and quick: 11 fits of
    a few seconds each on 2 cores."""

    kind: ModelKind = "reconstruct"
    window: int = 32
    horizon: int = 0
    hidden: int = 16
    scaling: Literal["global", "stream"] = "global"
    epochs: int = 15
    batch_size: int = 32
    learning_rate: float = 3e-3
    patience: int = 3
    val_fraction: float = 0.2
    calibration_level: float = 0.99
    seed: int = 0
    batch_events: int = 256
    # Chosen by `evaluate cv skab` (docs/skab.md).
    detection: Detection = field(
        default_factory=lambda: Detection(
            "distance",
            threshold=20.0,
            smoothing=5,
            range_margin=0.2,
            resolve_after=10,
            drop=0.8,
            drop_after=10,
        )
    )

    def spec(self, feature_names: Sequence[str]) -> ModelSpec:
        return ModelSpec(
            kind=self.kind,
            window=self.window,
            features=len(feature_names),
            feature_names=tuple(feature_names),
            hidden=self.hidden,
            horizon=self.horizon,
        )

    def post(self) -> PostParams | None:
        """The detector's post-processing (``detector.json``): the range check, if any, starts
        after the windows of the training rows."""
        return self.detection.post(range_learning_windows(self.window))

    def policy(self) -> AlertPolicy:
        """The detector's alert policy (``detector.json``)."""
        return self.detection.policy()

    def fit_config(self) -> FitConfig:
        return FitConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            patience=self.patience,
            val_fraction=self.val_fraction,
            seed=self.seed,
            scaling=self.scaling,
            threshold_level=self.calibration_level,
            verbose=0,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkabParams:
        data = dict(data)
        if "detection" in data:
            data["detection"] = Detection(**data["detection"])
        return cls(**data)


DEFAULT_SKAB_PARAMS = SkabParams()


def range_learning_windows(window: int) -> int:
    """The windows that end in a file's training rows: the range check starts after them."""
    return TRAIN_ROWS - window + 1


@dataclass
class SkabTrace:
    """What the processor said about every row of one file (NaN where no window ended): the
    model's distances and calibrated scores, the final scores the alert policy acted on, the
    per-feature contributions; the model's window and calibrated threshold, the alerts and
    where the time went."""

    distances: np.ndarray  # (n,)
    calibrated: np.ndarray  # (n,)
    contributions: np.ndarray  # (n, F)
    threshold: float
    alerts: list[dict[str, Any]]
    final: np.ndarray | None = None  # (n,)
    window: int | None = None
    fit_s: float = 0.0
    stream_s: float = 0.0

    @property
    def window_size(self) -> int:
        """The model's window: given, else one more than the rows without a window."""
        if self.window is not None:
            return self.window
        return int(np.argmax(~np.isnan(self.distances))) + 1


class _RecordingScorer(Scorer):
    """The artifact's scorer, keeping each batch's per-window contributions (which the
    processor hands to alerts but not to ``WindowRecords``)."""

    def __init__(self, artifact: Artifact, buckets: Sequence[int]) -> None:
        super().__init__(artifact, buckets)
        self.contributions: list[np.ndarray] = []

    def score(
        self,
        windows: np.ndarray,
        streams: Sequence[str],
        stat_mean: np.ndarray | None = None,
        stat_std: np.ndarray | None = None,
    ) -> ScoredBatch:
        batch = super().score(windows, streams, stat_mean, stat_std)
        self.contributions.append(batch.scores.contributions)
        return batch


def replay_events(data: SkabFile) -> list[Event]:
    """The file's rows as dict-valued events of one stream, decoded as the worker decodes
    them; offsets = row numbers."""
    names = list(data.feature_names)
    return [
        decode_event(
            data.key.encode(),
            encode_event(data.key, int(ts), dict(zip(names, row, strict=True))),
            topic=REPLAY_TOPIC,
            partition=0,
            offset=i,
            feature_names=names,
            max_bytes=MAX_EVENT_BYTES,
        )
        for i, (ts, row) in enumerate(zip(data.ts_ms.tolist(), data.values.tolist(), strict=True))
    ]


def fit_file(data: SkabFile, params: SkabParams, directory: Path) -> Artifact:
    """Fit on the file's training rows, write the artifact, load it back."""
    spec = params.spec(data.feature_names)
    try:
        result = fit_series([(data.key, data.values[:TRAIN_ROWS])], spec, params.fit_config())
    except ValueError as exc:
        raise SkabError(f"{data.key}: cannot fit on its {TRAIN_ROWS} training rows: {exc}") from exc
    save_fit(
        result, directory, name=data.key, version="skab", post=params.post(), policy=params.policy()
    )
    return load_artifact(directory, expect=spec)


def stream_file(data: SkabFile, params: SkabParams, artifact_dir: Path) -> SkabTrace:
    """Fit on the training rows, then replay every row through the processor, which runs the
    whole detector from the artifact (its post-processing and alert policy: no alert settings
    of the evaluator's own, as a worker with none set)."""
    started = time.perf_counter()
    artifact = fit_file(data, params, artifact_dir)
    scorer = _RecordingScorer(artifact, buckets=(params.batch_events,))
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    n, features = data.values.shape
    final = np.full(n, np.nan)
    trace = SkabTrace(
        distances=np.full(n, np.nan),
        calibrated=np.full(n, np.nan),
        contributions=np.full((n, features), np.nan),
        threshold=float(artifact.calibration.default.threshold),
        alerts=[],
        final=final,
        window=params.window,
        fit_s=fit_s,
    )
    batch_time_ms = [0]  # alerts carry the batch's event time: replays are reproducible
    processor = StreamProcessor(
        InMemoryWindowStore(params.window, features),
        lambda: scorer,
        stride=1,
        policy=AlertPolicy(),
        clock_ms=lambda: batch_time_ms[0],
    )
    events = replay_events(data)
    for lo in range(0, n, params.batch_events):
        batch = events[lo : lo + params.batch_events]
        batch_time_ms[0] = batch[-1].ts_ms
        scorer.contributions.clear()
        outcome = processor.process(batch)
        processor.save(outcome.touched)
        rows = outcome.windows.end_offsets
        trace.distances[rows] = outcome.windows.distances
        trace.calibrated[rows] = outcome.windows.scores
        final[rows] = outcome.windows.final_scores
        if len(rows):
            trace.contributions[rows] = np.concatenate(scorer.contributions)
        trace.alerts.extend(outcome.alerts)
    trace.stream_s = time.perf_counter() - started
    return trace


# --- from window outputs to row predictions (pure) -------------------------------------------


def file_windows(values: np.ndarray, window: int) -> np.ndarray:
    """Every window of a file's rows, as the processor holds them (float32), one per row from
    row ``window - 1`` on: (n - window + 1, window, F)."""
    x = np.asarray(values, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    return np.lib.stride_tricks.sliding_window_view(x, window, axis=0).transpose(0, 2, 1)


def detection_scores(trace: SkabTrace, values: np.ndarray, detection: Detection) -> np.ndarray:
    """The final score of every row (NaN where no window ended) under ``detection``: the
    post-processing :func:`~stream_ae.core.postprocess.post_batch` over the processor's
    recorded distances, from a fresh state, as the processor runs it in a worker."""
    window = trace.window_size
    post = detection.post(range_learning_windows(window))
    if post is None:
        return np.asarray(trace.calibrated, dtype=np.float64).copy()
    rows = np.flatnonzero(~np.isnan(trace.distances))
    windows = file_windows(values, window)[rows - (window - 1)]
    features = windows.shape[2]
    result = post_batch(
        post,
        new_post_state(post, features)[None],
        trace.distances[rows],
        np.zeros(len(rows), dtype=np.int64),  # end times: only a time-of-day profile reads them
        np.array([len(rows)]),
        windows if post.range is not None else None,
    )
    scores = np.full(len(trace.distances), np.nan)
    scores[rows] = result.scores
    return scores


def policy_predictions(scores: np.ndarray, policy: AlertPolicy) -> tuple[np.ndarray, list[int]]:
    """Run the alert policy over the rows' scores in order; a row is 1 from the window that
    opens an alert up to (not including) the window that resolves it. Returns the predictions
    and the rows where alerts opened."""
    rows = np.flatnonzero(~np.isnan(scores))
    _, transitions = policy.step(AlertState(), scores[rows])
    return _open_spans(((int(rows[i]), status) for i, status in transitions), len(scores))


def predict_rows(
    trace: SkabTrace, values: np.ndarray, detection: Detection, scores: np.ndarray | None = None
) -> tuple[np.ndarray, list[int]]:
    """What the processor predicts under ``detection``, replayed from a trace: 0/1 per row of
    the whole file (training rows included) and the rows alerts opened at. For the detection
    the trace was streamed with, this is exactly :func:`alert_predictions` of its alerts.

    ``scores``: the detection's scores if already computed (:func:`detection_scores`)."""
    post = detection.post(range_learning_windows(trace.window_size))
    default = post.threshold if post is not None else trace.threshold
    policy = detection.policy().with_default_threshold(default)
    if scores is None:
        scores = detection_scores(trace, values, detection)
    return policy_predictions(scores, policy)


def alert_predictions(
    alerts: Sequence[dict[str, Any]], n_rows: int
) -> tuple[np.ndarray, list[int]]:
    """The processor's own alerts as 0/1 per row (1 from an open to its resolve), and the rows
    alerts opened at."""
    return _open_spans(((int(a["source"]["offset"]), a["status"]) for a in alerts), n_rows)


def _open_spans(
    transitions: Iterable[tuple[int, str]], n_rows: int
) -> tuple[np.ndarray, list[int]]:
    """0/1 per row from ``(row, status)`` transitions in row order (1 from an open up to, not
    including, the row that resolves it; to the end if none does), and the rows opened at."""
    predictions = np.zeros(n_rows, dtype=np.int64)
    opened: list[int] = []
    open_row: int | None = None
    for row, status in transitions:
        if status == OPEN:
            open_row = row
            opened.append(row)
        elif open_row is not None:
            predictions[open_row:row] = 1
            open_row = None
    if open_row is not None:
        predictions[open_row:] = 1
    return predictions, opened


def detected_attributions(
    data: SkabFile, trace: SkabTrace, predictions: np.ndarray, opened: Sequence[int]
) -> list[np.ndarray]:
    """The contributions of the windows that opened a detection overlapping a labelled anomaly
    (one (F,) array per such detection, as its alert carries them)."""
    ends = [*opened[1:], len(predictions)]
    out = []
    for start, end in zip(opened, ends, strict=True):
        run_end = start + int(np.argmin(np.r_[predictions[start:end], 0]))
        if start >= TRAIN_ROWS and data.anomaly[start:run_end].any():
            out.append(trace.contributions[start])
    return out


# --- the corpus run -------------------------------------------------------------------------------


@dataclass
class SkabFileRun:
    """How one file went."""

    key: str
    rows: int
    fit_s: float
    stream_s: float
    alerts_opened: int
    score: dict[str, float]


def run_skab(
    data_dir: Path,
    out_dir: Path,
    params: SkabParams = DEFAULT_SKAB_PARAMS,
    *,
    only: Sequence[str] | None = None,
    trace_dir: Path | None = None,
    plot: Sequence[str] = (),
) -> tuple[PooledScore, list[SkabFileRun], dict[str, list[np.ndarray]]]:
    """Run the detector over every labelled file and write ``<out>/<group>/<n>.csv``.

    Returns the pooled score, the per-file runs and, per group, the contributions of each
    detection that overlaps a labelled anomaly. ``trace_dir`` keeps each file's trace (what the
    cross-validation reads). The files whose key contains one of ``plot`` get a score timeline
    in ``<out>/plots`` (:func:`plot_file`).
    """
    files = data_files(data_dir)
    if only:
        files = {k: p for k, p in files.items() if any(o in k for o in only)}
    runs: list[SkabFileRun] = []
    scores: list[PooledScore] = []
    attributions: dict[str, list[np.ndarray]] = {}
    artifacts_root = Path(tempfile.mkdtemp())
    try:
        for key, path in files.items():
            data = read_skab_file(key, path)
            trace = stream_file(data, params, artifacts_root / key.replace("/", "__"))
            # The processor's own alerts: no scoring path of the evaluator's.
            predictions, opened = alert_predictions(trace.alerts, len(data.timestamps))
            if any(text in key for text in plot):
                plot_file(out_dir / "plots", data, trace, params.detection, predictions, opened)
            test = data.test_rows
            write_predictions(
                predictions_path(out_dir, key), data.timestamps[test], predictions[test]
            )
            score = confusion(data.anomaly[test], predictions[test])
            scores.append(score)
            attributions.setdefault(data.group, []).extend(
                detected_attributions(data, trace, predictions, opened)
            )
            if trace_dir is not None:
                save_trace(trace_dir, key, trace)
            runs.append(
                SkabFileRun(
                    key=key,
                    rows=len(data.timestamps),
                    fit_s=round(trace.fit_s, 2),
                    stream_s=round(trace.stream_s, 2),
                    alerts_opened=len(opened),
                    score=score.as_dict(),
                )
            )
    finally:
        shutil.rmtree(artifacts_root, ignore_errors=True)
    return pooled_score_of(scores), runs, attributions


def save_trace(trace_dir: Path, key: str, trace: SkabTrace) -> Path:
    """One file's trace as ``<trace_dir>/<group>__<n>.npz``."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    path = trace_dir / f"{key.replace('/', '__')}.npz"
    np.savez(
        path,
        distances=trace.distances,
        calibrated=trace.calibrated,
        contributions=trace.contributions,
        threshold=np.array(trace.threshold),
        window=np.array(trace.window_size),
    )
    return path


def load_trace(trace_dir: Path, key: str) -> SkabTrace:
    """A trace written by :func:`save_trace` (without its alerts and final scores)."""
    with np.load(trace_dir / f"{key.replace('/', '__')}.npz") as saved:
        return SkabTrace(
            distances=saved["distances"],
            calibrated=saved["calibrated"],
            contributions=saved["contributions"],
            threshold=float(saved["threshold"]),
            alerts=[],
            window=int(saved["window"]) if "window" in saved.files else None,
        )


def attribution_summary(
    attributions: dict[str, list[np.ndarray]], feature_names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per group: how often each sensor contributed most to a detection, and the mean share
    of each sensor over those detections."""
    summary: dict[str, dict[str, Any]] = {}
    for group, rows in attributions.items():
        if not rows:
            summary[group] = {"detections": 0, "top": {}, "mean_share": {}}
            continue
        shares = np.vstack(rows)
        means = shares.mean(axis=0).round(4).tolist()
        top = Counter(feature_names[i] for i in np.argmax(shares, axis=1).tolist())
        summary[group] = {
            "detections": len(rows),
            "top": dict(top.most_common()),
            "mean_share": dict(zip(feature_names, means, strict=True)),
        }
    return summary


def plot_file(
    plot_dir: Path,
    data: SkabFile,
    trace: SkabTrace,
    detection: Detection,
    predictions: np.ndarray,
    opened: Sequence[int],
) -> Path:
    """``<plot_dir>/<group>__<n>.png``: the file's score timeline, the drawing every command
    shares (:mod:`stream_ae.score_timeline`): the sensors (standardised), the score the alert
    policy acted on and the model's calibrated score, the policy's threshold, where detections
    opened and ended, the labelled anomalies shaded and the end of the training rows. Needs
    matplotlib (the ``plots`` extra)."""
    n = len(data.ts_ms)
    ended = [last + 1 for _, last in flag_runs(predictions) if last + 1 < n]
    post = detection.post(range_learning_windows(trace.window_size))
    policy = detection.policy().with_default_threshold(
        post.threshold if post is not None else trace.threshold
    )
    final = (
        trace.final if trace.final is not None else detection_scores(trace, data.values, detection)
    )
    timeline = Timeline(
        ts_ms=data.ts_ms,
        values=data.values,
        value_names=data.feature_names,
        scores={
            f"{detection.score} score": final,
            "model score (calibrated)": trace.calibrated,
        },
        threshold=policy.threshold,
        opened_ms=[int(data.ts_ms[row]) for row in opened],
        resolved_ms=[int(data.ts_ms[row]) for row in ended],
        labelled_ms=[
            (int(data.ts_ms[first]), int(data.ts_ms[last]))
            for first, last in flag_runs(data.anomaly)
        ],
        marks_ms={"end of the training rows": int(data.ts_ms[min(TRAIN_ROWS, n - 1)])},
        title=data.key,
    )
    return plot_timeline(timeline, plot_dir / f"{data.key.replace('/', '__')}.png", dpi=80)


def plot_attributions(
    path: Path, summary: dict[str, dict[str, Any]], feature_names: Sequence[str]
) -> Path:
    """One PNG: per group, the mean contribution of each sensor over the detections that
    overlap a labelled anomaly. Needs matplotlib (the ``plots`` extra)."""
    plt = pyplot()
    groups = sorted(summary)
    fig, axis = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / max(len(groups), 1)
    positions = np.arange(len(feature_names))
    for i, group in enumerate(groups):
        shares = [summary[group]["mean_share"].get(name, 0.0) for name in feature_names]
        label = f"{group} ({summary[group]['detections']} detections)"
        axis.bar(positions + i * width, shares, width, label=label)
    axis.set_xticks(positions + width * (len(groups) - 1) / 2)
    axis.set_xticklabels(feature_names, rotation=20, ha="right", fontsize=8)
    axis.set_ylabel("mean share of the window error")
    axis.set_title("SKAB: which sensors the alerts name for detected anomalies")
    axis.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# --- command line ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stream-ae evaluate skab``."""
    parser.add_argument(
        "data_dir",
        type=Path,
        nargs="?",
        metavar="DATA_DIR",
        help="SKAB's root (with data/) or its data folder (<group>/<n>.csv); required",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="RESULTS_DIR",
        help="where <group>/<n>.csv predictions, run.json and attribution.png go; required",
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=None,
        metavar="JSON",
        help="detector parameters overriding the defaults (keys of SkabParams)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="TEXT",
        help="run only the files whose <group>/<n> contains TEXT (repeatable)",
    )
    parser.add_argument(
        "--trace-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep each file's per-window outputs there (input of `evaluate cv skab`)",
    )
    parser.add_argument(
        "--plot",
        action="append",
        default=[],
        metavar="TEXT",
        help="write RESULTS_DIR/plots/<group>__<n>.png, the score timeline (sensors, score, "
        "threshold, detections opened and ended, labelled anomalies shaded), for the files "
        "whose <group>/<n> contains TEXT (repeatable; needs matplotlib)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``evaluate skab``; returns the exit status."""
    if args.data_dir is None or args.out is None:
        print("error: usage: stream-ae evaluate skab DATA_DIR --out RESULTS_DIR", file=sys.stderr)
        return 2
    params = DEFAULT_SKAB_PARAMS
    started = time.perf_counter()
    try:
        if args.params is not None:
            overrides = json.loads(args.params.read_text())
            params = SkabParams.from_dict({**DEFAULT_SKAB_PARAMS.to_dict(), **overrides})
        score, runs, attributions = run_skab(
            args.data_dir,
            args.out,
            params,
            only=args.only,
            trace_dir=args.trace_dir,
            plot=args.plot,
        )
    except (StreamAEError, OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    names = read_skab_file(runs[0].key, data_files(args.data_dir)[runs[0].key]).feature_names
    summary = attribution_summary(attributions, names)
    plot = plot_attributions(args.out / "attribution.png", summary, names)
    rows = sum(r.rows for r in runs)
    print(f"{len(runs)} files, {rows} rows in {elapsed:.1f} s -> {args.out}")
    print(f"SKAB pooled: F1 {score.f1:.3f}  FAR {score.far:.2f} %  MAR {score.mar:.2f} %")
    for group, info in sorted(summary.items()):
        top = ", ".join(f"{name} {count}" for name, count in info["top"].items())
        print(f"  {group}: {info['detections']} detections in anomalies; top sensor: {top}")
    print(f"  plot {plot}")
    if args.plot:
        print(f"  score timelines in {args.out / 'plots'}")
    report = {
        "params": params.to_dict(),
        "elapsed_s": round(elapsed, 1),
        "score": score.as_dict(),
        "files": [asdict(r) for r in runs],
        "attribution": summary,
    }
    (args.out / RUN_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return 0
