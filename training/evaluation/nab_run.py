"""``stream-ae evaluate nab``: run our detector over NAB data files, as streams, no look-ahead.

Each data file is one stream, replayed in time order through the worker's own code path:
:class:`~stream_ae.worker.processor.StreamProcessor` over an :class:`InMemoryWindowStore`
(states are encoded and fenced as in Redis), a :class:`~stream_ae.model.inference.Scorer` over
an artifact written
and loaded in the artifact format, fitted with :mod:`training.fit`. The artifact carries the
detector's post-processing (``detector.json``), so the processor computes the final score of
every window as the worker does; the anomaly score of a row is the final score of the window
that ended on it (``BatchOutcome.windows.final_scores``), and the evaluator has no scoring path
of its own. The alerts are the processor's too: the worker's alert policy on the final score.

What the detector may learn from, for a file of ``n`` rows:

* the first fit sees only NAB's probationary period (the first ``probation_length(n)`` rows,
  15%), and nothing is scored before it; the windows that ended inside the probationary period
  are then scored with that model (NAB does not score those rows: they only seed the
  post-processing's history);
* every ``refit_every`` rows after it, a refit on the most recent ``refit_history`` rows already
  seen (never a later row) replaces the model between two poll batches, as a hot swap does in
  the worker;
* one :class:`DetectorParams` for every file: nothing is tuned per file.

Outputs, in NAB's layout under the results directory: ``<category>/<detector>_<file>.csv``
with ``timestamp,value,anomaly_score,label`` (``label`` is 1 inside a labelled window, as in
NAB's own results files), and ``run.json`` with the parameters and per-file timings.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stream_ae.core.alerting import AlertPolicy
from stream_ae.core.postprocess import PostParams
from stream_ae.core.records import Event
from stream_ae.core.state import StreamState
from stream_ae.errors import StreamAEError
from stream_ae.io.series_files import SeriesFileError, read_series_file
from stream_ae.io.window_store import InMemoryWindowStore
from stream_ae.model.artifacts import Artifact, load_artifact
from stream_ae.model.inference import Scorer
from stream_ae.model.network import ModelSpec
from stream_ae.score_timeline import Timeline, alert_marks, plot_timeline
from stream_ae.worker.processor import StreamProcessor
from training.data import NAB_READ
from training.detector import DEFAULT_DETECTOR
from training.evaluation.alert_quality import AlertQuality, alert_quality, opened_times
from training.evaluation.nab_score import (
    CorpusScore,
    CostProfile,
    NABScoringError,
    load_profiles,
    load_windows,
    probation_length,
    read_results_csv,
    read_results_dir,
    score_corpus,
    window_bounds,
)
from training.fit import FitConfig, fit_series, save_fit

DETECTOR_NAME = "streamae"
RESULTS_COLUMNS = ("timestamp", "value", "anomaly_score", "label")
RUN_FILE = "run.json"
# The topic the replayed events pretend to come from; one partition, offsets = row numbers.
REPLAY_TOPIC = "nab"
FEATURE_NAMES = ("value",)


class NabRunError(StreamAEError):
    """A NAB data file or directory cannot be used (missing, malformed, too short)."""


# The detector measured here is the one `stream-ae-train train` ships (training.detector);
# only Keras's progress output differs.
NAB_MODEL = DEFAULT_DETECTOR.model
NAB_FIT = replace(DEFAULT_DETECTOR.fit, verbose=0)
# Old flat names of run.json and --params files, kept readable.
_RENAMED = {"calibration_level": "threshold_level"}


@dataclass(frozen=True)
class DetectorParams:
    """Everything that defines the detector: one set for every file of the corpus.

    ``model``: the LSTM autoencoder (:class:`ModelSpec`). ``fit``: how it is fitted
    (:class:`FitConfig`: Adam, early stopping on the last ``val_fraction`` of the windows, which
    also calibrate the error model); a refit runs ``refit_epochs`` instead and starts from the
    previous weights when ``warm_start``. Refits: every ``refit_every`` rows after the
    probationary period (0: never), each on the last ``refit_history`` rows seen.
    ``batch_events``: events per poll batch. Score: the post-processing ``post``
    (:mod:`stream_ae.core.postprocess`) of the windows' distances.
    """

    model: ModelSpec = NAB_MODEL
    fit: FitConfig = NAB_FIT
    refit_epochs: int = 5
    refit_every: int = 0
    refit_history: int = 4000
    warm_start: bool = True
    batch_events: int = 1024
    post: PostParams = DEFAULT_DETECTOR.post

    @property
    def window(self) -> int:
        return self.model.window

    def spec(self) -> ModelSpec:
        """The model spec these parameters describe."""
        return self.model

    def fit_config(self, refit: bool) -> FitConfig:
        """The training configuration of a first fit or of a refit."""
        return replace(self.fit, epochs=self.refit_epochs) if refit else self.fit

    def with_changes(self, **changes: Any) -> DetectorParams:
        """These parameters with ``changes`` applied, by flat name: a field of this class, of
        :class:`ModelSpec` or of :class:`FitConfig` (``--params`` files use these names)."""
        changes = {_RENAMED.get(k, k): v for k, v in changes.items()}
        own = {f.name for f in fields(self)} - {"model", "fit"}
        model_keys = {f.name for f in fields(ModelSpec)} - {"features", "feature_names"}
        fit_keys = {f.name for f in fields(FitConfig)}
        unknown = set(changes) - own - model_keys - fit_keys
        if unknown:
            raise ValueError(f"unknown detector parameter(s) {sorted(unknown)}")
        model = replace(self.model, **{k: v for k, v in changes.items() if k in model_keys})
        if model.kind == "reconstruct" and "horizon" not in changes:
            model = replace(model, horizon=0)
        fit = replace(self.fit, **{k: v for k, v in changes.items() if k in fit_keys})
        top = {k: v for k, v in changes.items() if k in own}
        if isinstance(top.get("post"), dict):
            top["post"] = PostParams.from_dict(top["post"])
        return replace(self, model=model, fit=fit, **top)

    @classmethod
    def of(cls, **changes: Any) -> DetectorParams:
        """The NAB defaults with ``changes`` (flat names, see :meth:`with_changes`)."""
        return cls().with_changes(**changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.to_dict(),
            "fit": asdict(self.fit),
            **{k: v for k, v in asdict(self).items() if k not in ("model", "fit")},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorParams:
        """From :meth:`to_dict`'s layout, flat names (see :meth:`with_changes`), or both."""
        data = dict(data)
        base = cls(
            model=ModelSpec.from_dict(data.pop("model")) if "model" in data else NAB_MODEL,
            fit=FitConfig(**data.pop("fit")) if "fit" in data else NAB_FIT,
        )
        return base.with_changes(**data)


DEFAULT_PARAMS = DetectorParams()


@dataclass(frozen=True)
class NabSeries:
    """One NAB data file: its relative path (``<category>/<file>.csv``) and its rows."""

    key: str
    timestamps: list[str]  # as written in the file, copied verbatim into the results
    ts_ms: np.ndarray  # (n,) int64
    values: np.ndarray  # (n,) float64

    @property
    def category(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def file_name(self) -> str:
        return self.key.split("/", 1)[1]


@dataclass
class StreamTrace:
    """What the processor said about every row of one file (NaN where no window ended): the
    window's distance, calibrated score and final score, and the alerts it opened and resolved.

    ``model_index[i]`` is the fit that scored row ``i`` (0 the first fit, k the k-th refit,
    -1 none); ``fit_rows`` the row count each fit had seen; ``final_state`` the stream's window
    state as the in-memory store holds it at the end (what Redis would hold).
    """

    distances: np.ndarray
    calibrated: np.ndarray
    final_scores: np.ndarray
    model_index: np.ndarray
    fit_rows: list[int]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    fit_s: float = 0.0
    stream_s: float = 0.0
    final_state: StreamState | None = None  # the stream's window state after the last row


# --- pure helpers -------------------------------------------------------------------------------


def refit_rows(n_rows: int, probation_rows: int, params: DetectorParams) -> list[int]:
    """Row counts at which a refit happens: every ``refit_every`` rows after the first fit.

    A refit at ``r`` sees rows ``< r`` and scores rows ``>= r``.

    >>> refit_rows(1000, 150, DetectorParams(refit_every=300))
    [450, 750]
    """
    if params.refit_every <= 0:
        return []
    return list(range(probation_rows + params.refit_every, n_rows, params.refit_every))


def row_labels(timestamps: Sequence[str], windows: Sequence[Sequence[Any]]) -> np.ndarray:
    """NAB's ``label`` column: 1 on the rows of a labelled window, else 0."""
    labels = np.zeros(len(timestamps), dtype=np.int64)
    if len(windows):
        for first, last in window_bounds(np.asarray(timestamps), windows):
            labels[first : last + 1] = 1
    return labels


def anomaly_scores(trace: StreamTrace) -> np.ndarray:
    """The row scores NAB sees: the processor's final score of each window on the row of its
    last event, 0 where no window ended (the first ``window - 1`` rows)."""
    return np.nan_to_num(trace.final_scores, nan=0.0)


# --- fitting and streaming ------------------------------------------------------------------------


def fit_detector(
    values: np.ndarray,
    seen_rows: int,
    params: DetectorParams,
    directory: Path,
    *,
    name: str,
    version: str,
    previous: Artifact | None = None,
) -> Artifact:
    """Fit on the last ``refit_history`` rows before ``seen_rows``, write an artifact to
    ``directory`` and load it back, as a worker loads a published model.

    The fit is :func:`training.fit.fit_series`: the windows' time split (the latest
    ``val_fraction`` validate and calibrate), scaling fitted on the training windows, early
    stopping. A refit starts from ``previous``'s weights when ``warm_start``.
    """
    first_row = max(0, seen_rows - params.refit_history)
    history = values[first_row:seen_rows].reshape(-1, 1)
    weights = previous.model.get_weights() if previous is not None and params.warm_start else None
    try:
        result = fit_series(
            [(name, history)],
            params.spec(),
            params.fit_config(refit=previous is not None),
            initial_weights=weights,
        )
    except ValueError as exc:  # too few windows
        raise NabRunError(f"{name}: cannot fit on rows {first_row}..{seen_rows}: {exc}") from exc
    save_fit(
        result,
        directory,
        name=name,
        version=version,
        extra_metrics={"first_row": first_row, "seen_rows": seen_rows},
        post=params.post,
    )
    return load_artifact(directory, expect=result.spec)


def replay_events(series: NabSeries, topic: str = REPLAY_TOPIC) -> list[Event]:
    """The file's rows as decoded events of one stream from partition 0 of ``topic``,
    offsets = row numbers."""
    values = series.values.astype(np.float32).reshape(-1, 1)
    return [
        Event(series.key, int(ts), values[i], topic, 0, i)
        for i, ts in enumerate(series.ts_ms.tolist())
    ]


def stream_file(
    series: NabSeries,
    params: DetectorParams,
    probation_rows: int,
    artifacts_dir: Path,
    progress: tqdm | None = None,
    *,
    policy: AlertPolicy | None = None,
    topic: str = REPLAY_TOPIC,
) -> StreamTrace:
    """Replay one file through the processor, fitting and refitting on rows already seen.

    ``artifacts_dir`` receives one artifact per fit (``fit-<k>``). Alerts come from ``policy``
    (the fields it sets; the detector's own policy, else the built-in one, fill the rest, as in
    a worker) and name ``topic`` as their source, as a worker's
    would (their ids hash both).
    """
    n = len(series.values)
    spec = params.spec()
    fit_rows = [probation_rows, *refit_rows(n, probation_rows, params)]
    segment_ends = [*fit_rows[1:], n]
    events = replay_events(series, topic)
    trace = StreamTrace(
        distances=np.full(n, np.nan),
        calibrated=np.full(n, np.nan),
        final_scores=np.full(n, np.nan),
        model_index=np.full(n, -1, dtype=np.int64),
        fit_rows=fit_rows,
    )
    current: list[Scorer] = []  # the model in service; a refit replaces it between batches
    # Alerts carry the event time of the batch in hand, not wall time: replays are reproducible.
    batch_time_ms = [0]
    processor = StreamProcessor(
        InMemoryWindowStore(spec.window, spec.features),
        lambda: current[0],
        stride=1,
        policy=policy or AlertPolicy(),
        clock_ms=lambda: batch_time_ms[0],
    )
    artifact: Artifact | None = None
    start = 0
    for k, (seen, end) in enumerate(zip(fit_rows, segment_ends, strict=True)):
        fit_started = time.perf_counter()
        artifact = fit_detector(
            series.values,
            seen,
            params,
            artifacts_dir / f"fit-{k}",
            name=series.key,
            version=f"{k:03d}-{seen}",
            previous=artifact,
        )
        scorer = Scorer(artifact, buckets=(params.batch_events,))
        current[:] = [scorer]
        trace.fit_s += time.perf_counter() - fit_started
        stream_started = time.perf_counter()
        for lo in range(start, end, params.batch_events):
            batch = events[lo : min(lo + params.batch_events, end)]
            batch_time_ms[0] = batch[-1].ts_ms
            outcome = processor.process(batch)
            processor.save(outcome.touched)
            rows = outcome.windows.end_offsets
            trace.distances[rows] = outcome.windows.distances
            trace.calibrated[rows] = outcome.windows.scores
            trace.final_scores[rows] = outcome.windows.final_scores
            trace.alerts.extend(outcome.alerts)
            trace.model_index[rows] = k
            if progress is not None:
                progress.update(len(batch))
        trace.stream_s += time.perf_counter() - stream_started
        start = end
        if progress is not None:
            progress.set_postfix(fits=k + 1, refresh=False)
    final_state = processor.store.load([series.key])[series.key]
    trace.final_state = final_state if isinstance(final_state, StreamState) else None
    return trace


def stream_fleet(
    corpus: Sequence[NabSeries],
    params: DetectorParams,
    artifacts_dir: Path,
    progress: tqdm | None = None,
) -> dict[str, StreamTrace]:
    """Fleet mode: one model serves every file, as one worker serves many streams.

    The model is fitted once on the probationary rows of every file (each file a series of its
    own: no window spans two files), with per-stream scaling (one global scaling cannot serve
    streams whose levels differ by orders of magnitude). Then every file streams through one
    processor, their events interleaved by row number, so a poll batch holds rows of many
    streams; each stream keeps its own window, post-processing and alert state. No refits.
    """
    spec = params.spec()
    probations = {s.key: probation_length(len(s.values)) for s in corpus}
    fit_started = time.perf_counter()
    try:
        result = fit_series(
            [(s.key, s.values[: probations[s.key]].reshape(-1, 1)) for s in corpus],
            spec,
            replace(params.fit, scaling="stream"),
        )
    except ValueError as exc:
        raise NabRunError(f"fleet: cannot fit on the probationary rows: {exc}") from exc
    save_fit(result, artifacts_dir, name="fleet", version="fleet", post=params.post)
    scorer = Scorer(
        load_artifact(artifacts_dir, expect=result.spec), buckets=(params.batch_events,)
    )
    fit_s = time.perf_counter() - fit_started

    traces = {
        s.key: StreamTrace(
            distances=np.full(len(s.values), np.nan),
            calibrated=np.full(len(s.values), np.nan),
            final_scores=np.full(len(s.values), np.nan),
            model_index=np.full(len(s.values), -1, dtype=np.int64),
            fit_rows=[probations[s.key]],
            fit_s=fit_s,
        )
        for s in corpus
    }
    # Every file's events, ordered by row number, then by file.
    events = [event for s in corpus for event in replay_events(s)]
    rows = np.concatenate([np.arange(len(s.values)) for s in corpus])
    files = np.concatenate([np.full(len(s.values), k) for k, s in enumerate(corpus)])
    events = [events[i] for i in np.lexsort((files, rows))]
    batch_time_ms = [0]
    processor = StreamProcessor(
        InMemoryWindowStore(spec.window, spec.features),
        lambda: scorer,
        stride=1,
        policy=AlertPolicy(),
        clock_ms=lambda: batch_time_ms[0],
    )
    stream_started = time.perf_counter()
    for lo in range(0, len(events), params.batch_events):
        batch = events[lo : lo + params.batch_events]
        batch_time_ms[0] = max(e.ts_ms for e in batch)
        outcome = processor.process(batch)
        processor.save(outcome.touched)
        windows = outcome.windows
        streams = np.asarray(windows.streams)
        for key in np.unique(streams).tolist():
            mine = streams == key
            trace, ended = traces[key], windows.end_offsets[mine]
            trace.distances[ended] = windows.distances[mine]
            trace.calibrated[ended] = windows.scores[mine]
            trace.final_scores[ended] = windows.final_scores[mine]
            trace.model_index[ended] = 0
        for alert in outcome.alerts:
            traces[alert["stream"]].alerts.append(alert)
        if progress is not None:
            progress.update(len(batch))
    stream_s = time.perf_counter() - stream_started
    stored = processor.store.load(list(traces))
    for key, trace in traces.items():
        trace.stream_s = stream_s
        state = stored.get(key)
        trace.final_state = state if isinstance(state, StreamState) else None
    return traces


# --- files ---------------------------------------------------------------------------------------


def data_files(data_dir: Path) -> dict[str, Path]:
    """The NAB data files under ``data_dir`` (NAB's root or its ``data`` folder), by key."""
    root = data_dir / "data" if (data_dir / "data").is_dir() else data_dir
    files = {f"{p.parent.name}/{p.name}": p for p in sorted(root.glob("*/*.csv"))}
    if not files:
        raise NabRunError(f"no NAB data files (<category>/<file>.csv) under {root}")
    return files


def read_series(key: str, path: Path) -> NabSeries:
    """Read a NAB data file (``timestamp,value``) with the reader every command shares
    (:mod:`stream_ae.io.series_files`: the same checks and one-line errors)."""
    try:
        (found,), _ = read_series_file(path, NAB_READ, name=key)
    except SeriesFileError as exc:
        raise NabRunError(str(exc)) from None
    # NAB's own timestamp format, which its results files repeat.
    stamps = np.datetime_as_string(found.ts_ms.astype("datetime64[ms]").astype("datetime64[s]"))
    return NabSeries(
        key, [s.replace("T", " ") for s in stamps.tolist()], found.ts_ms, found.values[:, 0]
    )


def write_results(path: Path, series: NabSeries, scores: np.ndarray, labels: np.ndarray) -> None:
    """One NAB results CSV: ``timestamp,value,anomaly_score,label``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RESULTS_COLUMNS)
        for stamp, value, score, label in zip(
            series.timestamps, series.values.tolist(), scores.tolist(), labels.tolist(), strict=True
        ):
            writer.writerow([stamp, repr(value), f"{score:.12g}", label])


def results_path(out_dir: Path, key: str, detector: str = DETECTOR_NAME) -> Path:
    """``<out>/<category>/<detector>_<file>.csv``, NAB's results layout."""
    category, name = key.split("/", 1)
    return out_dir / category / f"{detector}_{name}"


# --- the corpus run -------------------------------------------------------------------------------


@dataclass
class FileRun:
    """How one file went: its fits, where the time went, and its alerts: the window end times
    of the alerts the processor opened (and resolved) on scored rows (after the probation), the
    labelled windows' ``(start_ms, end_ms)`` and the threshold the alert policy acted on."""

    key: str
    rows: int
    probation_rows: int
    fit_rows: list[int]
    fit_s: float
    stream_s: float
    total_s: float
    opened_ms: list[int] = field(default_factory=list)
    windows_ms: list[tuple[int, int]] = field(default_factory=list)
    resolved_ms: list[int] = field(default_factory=list)
    alert_threshold: float | None = None


def alert_figures(runs: Sequence[FileRun]) -> tuple[dict[str, AlertQuality], AlertQuality]:
    """Alert-level quality (:mod:`training.evaluation.alert_quality`) per file and pooled over
    ``runs``: labelled windows with an alert opened inside, alerts opened outside every window
    per 10k scored rows, median delay from a window's start to its first alert."""
    opened = {r.key: r.opened_ms for r in runs}
    windows = {r.key: r.windows_ms for r in runs}
    rows = {r.key: r.rows - r.probation_rows for r in runs}
    per_file = {
        key: alert_quality({key: opened[key]}, {key: windows[key]}, rows={key: rows[key]})
        for key in opened
    }
    return per_file, alert_quality(opened, windows, rows=rows)


def scored_alerts(
    series: NabSeries, trace: StreamTrace, probation_rows: int, labelled: Sequence[Any]
) -> tuple[list[int], list[tuple[int, int]]]:
    """The window end times of the alerts opened on rows NAB scores (after the probation), and
    the labelled windows as ``(start_ms, end_ms)`` of their first and last rows."""
    first_scored_ms = int(series.ts_ms[probation_rows])
    opened = [t for t in opened_times(trace.alerts).get(series.key, []) if t >= first_scored_ms]
    if not len(labelled):
        return opened, []
    bounds = window_bounds(np.asarray(series.timestamps), labelled)
    spans = [(int(series.ts_ms[first]), int(series.ts_ms[last])) for first, last in bounds]
    return opened, spans


def alert_threshold(trace: StreamTrace, params: DetectorParams) -> float | None:
    """The threshold the alert policy acted on: as the alerts carry it, else the detector's."""
    if trace.alerts:
        return float(trace.alerts[-1]["threshold"])
    return params.post.threshold if params.post is not None else None


def run_corpus(
    data_dir: Path,
    out_dir: Path,
    windows: dict[str, Any],
    params: DetectorParams = DEFAULT_PARAMS,
    *,
    only: Sequence[str] | None = None,
    keep_artifacts: bool = False,
    progress: bool = True,
    trace_dir: Path | None = None,
    fleet: bool = False,
) -> list[FileRun]:
    """Run the detector over every data file (or those whose key contains one of ``only``)
    and write the results CSVs; ``trace_dir`` also keeps each file's :class:`StreamTrace`.

    Per file (NAB's protocol): one model per file, fitted on its probationary rows. ``fleet``:
    one model for all files (:func:`stream_fleet`); a file's times then are the fleet's.
    """
    files = data_files(data_dir)
    if only:
        files = {k: p for k, p in files.items() if any(o in k for o in only)}
    runs: list[FileRun] = []
    artifacts_root = out_dir / "artifacts" if keep_artifacts else Path(tempfile.mkdtemp())
    corpus = {key: read_series(key, path) for key, path in files.items()}
    unlabelled = sorted(set(corpus) - set(windows))
    if unlabelled:
        raise NabRunError(f"{unlabelled[0]}: no labelled windows for this file")
    fleet_traces: dict[str, StreamTrace] = {}
    if fleet:
        total = sum(len(s.values) for s in corpus.values())
        bar = tqdm(total=total, desc="fleet", unit="row", file=sys.stderr, disable=not progress)
        with bar:
            fleet_traces = stream_fleet(
                list(corpus.values()), params, artifacts_root / "fleet", bar
            )
    try:
        for key, series in corpus.items():
            started = time.perf_counter()
            n = len(series.values)
            probation = probation_length(n)
            if fleet:
                trace = fleet_traces[key]
            else:
                bar = tqdm(
                    total=n, desc=key, unit="row", file=sys.stderr, disable=not progress, leave=True
                )
                with bar:
                    trace = stream_file(
                        series, params, probation, artifacts_root / key.replace("/", "__"), bar
                    )
            scores = anomaly_scores(trace)
            labels = row_labels(series.timestamps, windows[key])
            write_results(results_path(out_dir, key), series, scores, labels)
            opened_ms, windows_ms = scored_alerts(series, trace, probation, windows[key])
            resolved_ms = [
                t for t in alert_marks(trace.alerts, key)[1] if t >= int(series.ts_ms[probation])
            ]
            if trace_dir is not None:
                trace_dir.mkdir(parents=True, exist_ok=True)
                np.savez(
                    trace_dir / f"{key.replace('/', '__')}.npz",
                    distances=trace.distances,
                    calibrated=trace.calibrated,
                    model_index=trace.model_index,
                )
            runs.append(
                FileRun(
                    key=key,
                    rows=n,
                    probation_rows=probation,
                    fit_rows=trace.fit_rows,
                    fit_s=trace.fit_s,
                    stream_s=trace.stream_s,
                    total_s=time.perf_counter() - started,
                    opened_ms=opened_ms,
                    windows_ms=windows_ms,
                    resolved_ms=resolved_ms,
                    alert_threshold=alert_threshold(trace, params),
                )
            )
    finally:
        if not keep_artifacts:
            shutil.rmtree(artifacts_root, ignore_errors=True)
    return runs


# --- command line ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stream-ae evaluate nab``."""
    # Both are required; run() says so. They are optional to argparse so that the parser can
    # be built and inspected without them (the CLI wiring tests parse a bare `evaluate nab`).
    parser.add_argument(
        "data_dir",
        type=Path,
        nargs="?",
        metavar="DATA_DIR",
        help="NAB's root (with data/, combined_windows.json, config-profiles.json) or its data "
        "folder (<category>/<file>.csv); required",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="RESULTS_DIR",
        help="where the results CSVs and run.json go; required",
    )
    parser.add_argument(
        "--windows",
        type=Path,
        default=None,
        metavar="PATH",
        help="combined_windows.json (default: found in DATA_DIR or its parent)",
    )
    parser.add_argument(
        "--profiles",
        type=Path,
        default=None,
        metavar="PATH",
        help="NAB cost profiles, to score the run at the end (default: config-profiles.json "
        "next to the windows; scoring is skipped if there is none)",
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=None,
        metavar="JSON",
        help="detector parameters overriding the defaults (keys of DetectorParams)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="TEXT",
        help="run only the files whose <category>/<file> contains TEXT (repeatable)",
    )
    parser.add_argument(
        "--keep-artifacts",
        action="store_true",
        help="keep every fitted artifact under RESULTS_DIR/artifacts",
    )
    parser.add_argument(
        "--baseline-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="results of another detector in NAB's layout (e.g. NAB's results-numenta) to "
        "score with the same scorer on the same files, side by side",
    )
    parser.add_argument(
        "--plot",
        action="append",
        default=None,
        metavar="TEXT",
        help="write RESULTS_DIR/plots/<file>.png, the score timeline (values, score, alert "
        "threshold, alerts opened and resolved, labelled windows shaded), for the files whose "
        "<category>/<file> contains TEXT (repeatable; needs matplotlib)",
    )
    parser.add_argument(
        "--trace-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep each file's per-window outputs there (input of `evaluate cv nab`)",
    )
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="fleet mode: one model for every file, fitted on all the probationary rows, and "
        "all files streamed through one processor (as one worker serves many streams)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _find(data_dir: Path, given: Path | None, name: str) -> Path | None:
    if given is not None:
        return given
    for folder in (data_dir, data_dir.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def run(args: argparse.Namespace) -> int:
    """Run ``evaluate nab``; returns the exit status."""
    if args.data_dir is None or args.out is None:
        print("error: usage: stream-ae evaluate nab DATA_DIR --out RESULTS_DIR", file=sys.stderr)
        return 2
    data_dir: Path = args.data_dir
    out_dir: Path = args.out
    windows_path = _find(data_dir, args.windows, "combined_windows.json")
    if windows_path is None:
        print(f"error: no combined_windows.json in {data_dir}; pass --windows", file=sys.stderr)
        return 2
    params = DEFAULT_PARAMS
    try:
        if args.params is not None:
            params = DetectorParams.from_dict(json.loads(args.params.read_text()))
        windows = load_windows(windows_path)
        started = time.perf_counter()
        runs = run_corpus(
            data_dir,
            out_dir,
            windows,
            params,
            only=args.only,
            keep_artifacts=args.keep_artifacts,
            progress=not args.no_progress,
            trace_dir=args.trace_dir,
            fleet=args.fleet,
        )
        elapsed = time.perf_counter() - started
    except (StreamAEError, OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "detector": DETECTOR_NAME,
        "mode": "fleet" if args.fleet else "per-file",
        "params": params.to_dict(),
        "elapsed_s": elapsed,
        "files": [asdict(r) for r in runs],
    }
    print(f"{len(runs)} files, {sum(r.rows for r in runs)} rows in {elapsed:.1f} s -> {out_dir}")
    per_file, pooled = alert_figures(runs)
    report["alerts"] = {
        "pooled": pooled.to_dict(),
        "files": {key: q.to_dict() for key, q in per_file.items()},
    }
    print("Alerts (the worker's alert policy on the final score; rows after the probation):")
    for key, quality in [*per_file.items(), ("pooled", pooled)]:
        print(f"  {key:<58} {describe_alerts(quality)}")
    keys = [r.key for r in runs]
    profiles_path = _find(windows_path.parent, args.profiles, "config-profiles.json")
    thresholds: dict[str, float] = {}
    if profiles_path is not None:
        try:
            profiles = load_profiles(profiles_path)
            ours = score_results(out_dir, windows, profiles, keys, DETECTOR_NAME)
            report["scores"] = {name: c.normalised_score for name, c in ours.items()}
            report["thresholds"] = thresholds = {name: c.threshold for name, c in ours.items()}
            baseline = None
            if args.baseline_dir is not None:
                baseline = score_results(args.baseline_dir, windows, profiles, keys)
                report["baseline"] = {
                    "dir": str(args.baseline_dir),
                    "scores": {name: c.normalised_score for name, c in baseline.items()},
                    "thresholds": {name: c.threshold for name, c in baseline.items()},
                }
        except NABScoringError as exc:
            print(f"error: scoring failed: {exc}", file=sys.stderr)
            return 2
        print(f"NAB normalised scores on {len(keys)} files (null detector 0, perfect 100):")
        for name, score in ours.items():
            line = f"  {name:<20} {DETECTOR_NAME} {score.normalised_score:7.2f}"
            if baseline is not None:
                line += f"   baseline {baseline[name].normalised_score:7.2f}"
            print(line)
    if args.plot:
        plot_dir = out_dir / "plots"
        baseline_thresholds = report.get("baseline", {}).get("thresholds", {})
        for file_run in runs:
            if any(text in file_run.key for text in args.plot):
                path = plot_file(
                    plot_dir,
                    file_run,
                    out_dir,
                    threshold=thresholds.get("standard"),
                    baseline_dir=args.baseline_dir,
                    baseline_threshold=baseline_thresholds.get("standard"),
                )
                print(f"  plot {path}")
    (out_dir / RUN_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def describe_alerts(quality: AlertQuality) -> str:
    """One line: windows hit, false alerts per 10k rows, median delay.

    >>> describe_alerts(AlertQuality(4, 3, 1, 2, 6, 10_000, 1_800_000.0))
    'windows hit 3/4, false alerts 2 (2.0 per 10k rows), median delay 0.50 h'
    """
    delay = "-" if quality.median_delay_ms is None else f"{quality.median_delay_ms / 3.6e6:.2f} h"
    return (
        f"windows hit {quality.hits}/{quality.windows}, false alerts {quality.false_alerts} "
        f"({quality.false_per_10k_rows:.1f} per 10k rows), median delay {delay}"
    )


def score_results(
    results_dir: Path,
    windows: dict[str, Any],
    profiles: dict[str, CostProfile],
    keys: Sequence[str],
    detector: str | None = None,
) -> dict[str, CorpusScore]:
    """NAB's score, per profile, of the results for ``keys`` in ``results_dir``, each profile
    at the threshold NAB's sweep picks over these files."""
    results = read_results_dir(results_dir, known_files=windows.keys(), detector=detector)
    missing = sorted(set(keys) - set(results))
    if missing:
        raise NABScoringError(f"{results_dir} has no results for {missing}")
    chosen = {key: results[key] for key in keys}
    return {name: score_corpus(chosen, windows, profile) for name, profile in profiles.items()}


def plot_file(
    plot_dir: Path,
    run: FileRun,
    results_dir: Path,
    *,
    threshold: float | None = None,
    baseline_dir: Path | None = None,
    baseline_threshold: float | None = None,
) -> Path:
    """A PNG of one file, the score timeline every command draws
    (:mod:`stream_ae.score_timeline`): its values and our final score over time (the baseline's
    score faint, when given), the alert threshold with the alerts opened and resolved after the
    probation, the labelled windows shaded, the end of the probation marked and the thresholds
    NAB's sweep chose for the standard profile dotted. Needs matplotlib (the ``plots``
    extra)."""
    ours = read_results_csv(results_path(results_dir, run.key))
    ts_ms = ours.timestamps.astype("datetime64[ms]").astype(np.int64)
    with results_path(results_dir, run.key).open(newline="") as handle:
        values = np.array([float(row["value"]) for row in csv.DictReader(handle)])
    scores = {DETECTOR_NAME: ours.anomaly_scores}
    levels = {}
    if threshold is not None:
        levels["NAB threshold (standard)"] = threshold
    if baseline_dir is not None:
        scores["baseline (HTM)"] = read_results_dir(baseline_dir, known_files=[run.key])[
            run.key
        ].anomaly_scores
        if baseline_threshold is not None:
            levels["baseline NAB threshold (standard)"] = baseline_threshold
    timeline = Timeline(
        ts_ms=ts_ms,
        values=values,
        scores=scores,
        threshold=run.alert_threshold,
        levels=levels,
        opened_ms=run.opened_ms,
        resolved_ms=run.resolved_ms,
        labelled_ms=run.windows_ms,
        marks_ms={"end of probation": int(ts_ms[run.probation_rows])},
        title=run.key,
    )
    return plot_timeline(timeline, plot_dir / f"{Path(run.key).stem}.png", dpi=80)
