"""NAB v1.1 scoring over numpy arrays: windows, costs, the threshold sweep, normalisation.

This reproduces the official scorer of the Numenta Anomaly Benchmark (numenta/NAB v1.1:
``nab/sweeper.py``, ``nab/scorer.py``, ``nab/optimizer.py`` and ``Runner.normalize``). Fed a
published detector's results at its published threshold, it gives the per-file ``Score``,
``TP``, ``TN``, ``FP``, ``FN`` and ``Total_Count`` of NAB's ``<detector>_<profile>_scores.csv``.

The rules, for one file of ``n`` rows and one cost profile (A_tp, A_fp, A_fn):

* The first ``min(floor(0.15 n), 0.15 * 5000)`` rows are the probationary period: not scored,
  not counted.
* A row is a detection when its anomaly score is ``>= threshold``.
* Each labelled window rewards only its earliest detection, with
  ``A_tp * sigma(p) / sigma(-1)`` where ``p = -(right - i + 1) / width`` runs from -1 at the left
  edge towards 0 at the right one and ``sigma(x) = 2 / (1 + exp(5x)) - 1`` (NAB's scaled sigmoid).
  A window with no detection costs ``A_fn``.
* A detection outside every window costs ``A_fp * sigma(p)``, ``p = (i - right) / (width - 1)``
  measured from the closest preceding window (negative, and ``-A_fp`` from 3 widths on or when
  no window precedes it).
* True negatives score 0 (the profiles' ``tnWeight`` is unused, as in NAB).

Over a corpus the raw score is the sum of the file scores at one threshold per detector and
profile, chosen by NAB's sweep (every distinct anomaly score is tried), and normalised so that the
null detector (no detections) scores 0 and the perfect detector (one detection on the first row
of every window) scores 100.

Everything here except the ``load_*``/``read_*`` helpers at the bottom is pure: arrays in,
numbers out. Where NAB would crash or silently misbehave the choice made is documented at the
place it is made.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from stream_ae.errors import StreamAEError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
TimeArray = npt.NDArray[np.datetime64]
Window = tuple[np.datetime64, np.datetime64]

DEFAULT_PROBATION_PERCENT = 0.15
# NAB caps the probationary period at the length it has for a 5000-row file (750 rows).
PROBATION_CAP_ROWS = 5000
# NAB's sweep starts here: above every anomaly score in [0, 1], so nothing is detected.
NO_DETECTION_THRESHOLD = 1.1
# NAB's scaled sigmoid is cut to -1 from 3 window widths on (sigma(3) would be -0.9999994).
SIGMOID_CUTOFF = 3.0
# Timestamps are compared at microsecond resolution: NAB's label files carry microseconds.
TIME_UNIT = "datetime64[us]"


class NABScoringError(StreamAEError):
    """NAB inputs are inconsistent: a malformed file, an unknown data file, a bad window.

    Defined here rather than in ``stream_ae.errors`` because only the evaluator raises it; it is
    still a ``StreamAEError``, so callers catching the tree catch it.
    """


@dataclass(frozen=True)
class CostProfile:
    """One NAB application profile: the weights of a true positive, a false positive, a miss."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


class DetectorOutput(NamedTuple):
    """One detector's output on one data file: a time-ordered anomaly score per row."""

    timestamps: TimeArray
    anomaly_scores: FloatArray


@dataclass(frozen=True)
class FileScore:
    """NAB's row for one file: its raw score and counts at one threshold.

    The counts cover the scored rows only (the probationary period is excluded); ``total`` is
    the file's whole length, as in NAB's ``Total_Count`` column.
    """

    score: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int


@dataclass(frozen=True)
class CorpusScore:
    """One detector and profile scored over a corpus at one threshold.

    ``normalised_score`` is ``100 * (raw - null) / (perfect - null)``: 0 for the null detector,
    100 for the perfect one (NaN for a corpus without windows, where both are 0).
    """

    profile: str
    threshold: float
    raw_score: float
    null_score: float
    perfect_score: float
    normalised_score: float
    files: dict[str, FileScore]


@dataclass(frozen=True)
class ThresholdCurve:
    """The corpus score at every threshold NAB's sweep tries, highest threshold first.

    ``thresholds[0]`` detects nothing (NAB's 1.1); each later entry is a distinct anomaly score,
    and its row counts every scored row whose anomaly score is ``>=`` it.
    """

    thresholds: FloatArray
    scores: FloatArray
    tp: IntArray
    tn: IntArray
    fp: IntArray
    fn: IntArray

    @property
    def best_index(self) -> int:
        """Index of the best score; ties go to the highest threshold, as NAB's stable sort does."""
        return int(np.argmax(self.scores))

    @property
    def best_threshold(self) -> float:
        """The threshold NAB's optimiser would pick."""
        return float(self.thresholds[self.best_index])

    @property
    def best_score(self) -> float:
        """The raw corpus score at the best threshold."""
        return float(self.scores[self.best_index])


@dataclass(frozen=True)
class _FileSweep:
    """A file's scored rows, each with its anomaly score and its weight if it were a detection.

    ``window_id`` is -1 outside windows; ``scored_windows`` lists the windows that have at least
    one scored row (NAB neither rewards nor penalises a window lost in the probationary period).
    """

    anomaly_scores: FloatArray
    weight: FloatArray
    window_id: IntArray
    scored_windows: IntArray
    n_windows: int
    total: int


# --- pure core --------------------------------------------------------------------------------


def probation_length(n_rows: int, probation_percent: float = DEFAULT_PROBATION_PERCENT) -> int:
    """Number of leading rows NAB leaves unscored (NAB's ``getProbationPeriod``).

    >>> probation_length(4032), probation_length(18050)
    (604, 750)
    """
    bound = min(math.floor(probation_percent * n_rows), probation_percent * PROBATION_CAP_ROWS)
    # NAB tests ``row_index >= bound`` with a possibly fractional bound: the first scored row is
    # its ceiling.
    return math.ceil(bound)


def scaled_sigmoid(position: npt.ArrayLike) -> FloatArray:
    """NAB's ``scaledSigmoid``: ``2 / (1 + exp(5 p)) - 1``, and -1 from ``p >= 3`` on.

    Positive for positions inside a window (``-1 <= p < 0``), 0 at its right edge, negative past
    it; ``scaled_sigmoid(-1) = 0.98661`` is the best a true positive can get before scaling.
    """
    p = np.asarray(position, dtype=np.float64)
    with np.errstate(over="ignore"):
        # Written as NAB writes it (2 * sigmoid(-5 p) - 1) so the floats agree to the last bit
        # wherever numpy's exp agrees with libm's.
        value = 2.0 * (1.0 / (1.0 + np.exp(5.0 * p))) - 1.0
    return np.where(p >= SIGMOID_CUTOFF, -1.0, value)


def to_timestamps(values: Iterable[Any]) -> TimeArray:
    """Timestamps (ISO strings, datetimes or datetime64) as a ``datetime64[us]`` array."""
    array = values if isinstance(values, np.ndarray) else np.asarray(list(values))
    return array.astype(TIME_UNIT)


def window_bounds(timestamps: npt.ArrayLike, windows: Sequence[Sequence[Any]]) -> IntArray:
    """Row indices ``[first, last]`` of each window, in row order, as a ``(k, 2)`` array.

    NAB works on row positions, not on time: a window runs from the first row stamped with its
    start to the first row stamped with its end, whatever lies between (one NAB file,
    machine_temperature_system_failure, steps back in time once). Where an end is not a
    timestamp of the file (NAB would refuse the labels, or silently skip the window), the window
    falls back to the first and last rows whose timestamps lie in ``[start, end]``.

    Raises NABScoringError for a window with no row, or for overlapping windows (NAB's sweep
    cannot represent them).
    """
    times = to_timestamps(np.asarray(timestamps))
    spans = []
    for window in windows:
        start, end = to_timestamps(window)[:2]
        exact_first = np.flatnonzero(times == start)
        exact_last = np.flatnonzero(times == end)
        inside = np.flatnonzero((times >= start) & (times <= end))
        if inside.size == 0 and (exact_first.size == 0 or exact_last.size == 0):
            raise NABScoringError(f"window [{start}, {end}] contains no row of the file")
        first = int(exact_first[0]) if exact_first.size else int(inside[0])
        last = int(exact_last[0]) if exact_last.size else int(inside[-1])
        if first > last:
            raise NABScoringError(f"window [{start}, {end}] ends before it starts in the file")
        spans.append((first, last, start, end))
    spans.sort()
    bounds = np.empty((len(spans), 2), dtype=np.int64)
    for j, (first, last, start, end) in enumerate(spans):
        if j > 0 and first <= bounds[j - 1, 1]:
            raise NABScoringError(f"window [{start}, {end}] overlaps the window before it")
        bounds[j] = (first, last)
    return bounds


def _as_scores(anomaly_scores: npt.ArrayLike, n_rows: int) -> FloatArray:
    """Anomaly scores as float64, checked against the number of timestamps.

    NaN is allowed and never counts as a detection (a detector still warming up); infinities
    are rejected because no finite threshold could then detect nothing.
    """
    scores = np.asarray(anomaly_scores, dtype=np.float64)
    if scores.shape != (n_rows,):
        raise NABScoringError(f"{scores.size} anomaly scores for {n_rows} timestamps")
    if bool(np.any(np.isinf(scores))):
        raise NABScoringError("anomaly scores must be finite (or NaN for 'no score')")
    return scores


def _sweep_file(
    timestamps: npt.ArrayLike,
    anomaly_scores: npt.ArrayLike,
    windows: Sequence[Sequence[Any]],
    profile: CostProfile,
    probation_percent: float,
) -> _FileSweep:
    """NAB's ``calcSweepScore``: the weight each row would carry if it were a detection."""
    times = to_timestamps(np.asarray(timestamps))
    n_rows = times.shape[0]
    scores = _as_scores(anomaly_scores, n_rows)
    bounds = window_bounds(times, windows)
    rows = np.arange(n_rows, dtype=np.int64)
    window_id = np.full(n_rows, -1, dtype=np.int64)
    weight = np.empty(n_rows, dtype=np.float64)

    # Inside a window: a true positive, rewarded more the earlier it comes. The `+ 1` keeps NAB's
    # arithmetic (the first row is at -1, the last at -1/width, never at 0); dividing by
    # sigma(-1) makes the earliest detection worth exactly A_tp.
    max_tp = float(scaled_sigmoid(-1.0))
    for j, (first, last) in enumerate(bounds):
        inside = slice(first, last + 1)
        width = float(last - first + 1)
        window_id[inside] = j
        position = -(last - rows[inside] + 1) / width
        weight[inside] = scaled_sigmoid(position) * profile.tp_weight / max_tp

    # Outside: a false positive, its cost growing with the distance past the closest preceding
    # window in units of that window's width (minus one, as NAB has it). With no window before,
    # NAB uses position 3, i.e. the full cost.
    outside = window_id < 0
    ends = bounds[:, 1]
    widths = (bounds[:, 1] - bounds[:, 0] + 1).astype(np.float64)
    previous = np.searchsorted(ends, rows[outside], side="left") - 1
    has_previous = previous >= 0
    position = np.full(previous.shape, SIGMOID_CUTOFF)
    with np.errstate(divide="ignore"):
        # A one-row window has width - 1 == 0, where NAB divides by zero and crashes; here the
        # position is infinite, so such a false positive costs the full A_fp.
        position[has_previous] = np.abs(
            ends[previous[has_previous]] - rows[outside][has_previous]
        ) / (widths[previous[has_previous]] - 1.0)
    weight[outside] = scaled_sigmoid(position) * profile.fp_weight

    scored = rows >= probation_length(n_rows, probation_percent)
    scored_ids = window_id[scored]
    return _FileSweep(
        anomaly_scores=scores[scored],
        weight=weight[scored],
        window_id=scored_ids,
        scored_windows=np.unique(scored_ids[scored_ids >= 0]),
        n_windows=len(bounds),
        total=n_rows,
    )


def _score_sweep(sweep: _FileSweep, profile: CostProfile, threshold: float) -> FileScore:
    """A file's NAB score and counts at one threshold (NAB's ``scoreDataSet``)."""
    # NaN >= threshold is False: a row without a score is never a detection.
    detected = sweep.anomaly_scores >= threshold
    inside = sweep.window_id >= 0
    tp = int(np.count_nonzero(detected & inside))
    fp = int(np.count_nonzero(detected & ~inside))
    fp_score = float(np.sum(sweep.weight[detected & ~inside]))
    window_score = 0.0
    for j in sweep.scored_windows:
        hits = sweep.weight[detected & (sweep.window_id == j)]
        # Weights fall through a window, so the maximum is the earliest detection's: later
        # detections in the same window add nothing.
        best = float(hits.max()) if hits.size else -math.inf
        window_score += max(-profile.fn_weight, best)
    return FileScore(
        score=fp_score + window_score,
        tp=tp,
        tn=int(np.count_nonzero(~inside)) - fp,
        fp=fp,
        fn=int(np.count_nonzero(inside)) - tp,
        total=sweep.total,
    )


def score_file(
    timestamps: npt.ArrayLike,
    anomaly_scores: npt.ArrayLike,
    windows: Sequence[Sequence[Any]],
    profile: CostProfile,
    threshold: float,
    probation_percent: float = DEFAULT_PROBATION_PERCENT,
) -> FileScore:
    """Score one file's anomaly scores at ``threshold`` as NAB does.

    ``windows`` are the file's labelled ``(start, end)`` timestamp pairs; a row is a detection
    when its anomaly score is ``>= threshold``.
    """
    sweep = _sweep_file(timestamps, anomaly_scores, windows, profile, probation_percent)
    return _score_sweep(sweep, profile, threshold)


def _threshold_curve(sweeps: Sequence[_FileSweep], profile: CostProfile) -> ThresholdCurve:
    """NAB's ``calcScoreByThreshold`` over all files' scored rows together."""
    scores = np.concatenate([s.anomaly_scores for s in sweeps] or [np.empty(0)])
    weight = np.concatenate([s.weight for s in sweeps] or [np.empty(0)])
    # Window ids made unique across files by offsetting each file's ids.
    offsets = np.cumsum([0] + [s.n_windows for s in sweeps])
    window_id = np.concatenate(
        [
            np.where(s.window_id >= 0, s.window_id + off, -1)
            for s, off in zip(sweeps, offsets[:-1], strict=True)
        ]
        or [np.empty(0, dtype=np.int64)]
    )
    n_inside = int(np.count_nonzero(window_id >= 0))
    n_outside = window_id.size - n_inside
    null_score = -profile.fn_weight * sum(s.scored_windows.size for s in sweeps)

    # Rows without a score can never be detected: they are left out of the sweep (but stay in
    # the TN/FN counts above).
    has_score = ~np.isnan(scores)
    order = np.argsort(-scores[has_score], kind="stable")
    ranked = scores[has_score][order]
    ranked_weight = weight[has_score][order]
    ranked_window = window_id[has_score][order]
    outside = ranked_window < 0

    # Lowering the threshold past a row changes the score by its weight if it is a false
    # positive, and by how much it raises its window's best detection (from -A_fn) otherwise.
    step = np.where(outside, ranked_weight, 0.0)
    inside_rows = np.flatnonzero(~outside)
    by_window = inside_rows[np.argsort(ranked_window[inside_rows], kind="stable")]
    cuts = np.flatnonzero(np.diff(ranked_window[by_window])) + 1
    for rows in np.split(by_window, cuts):
        if rows.size:
            running = np.maximum.accumulate(
                np.concatenate(([-profile.fn_weight], ranked_weight[rows]))
            )
            step[rows] = np.diff(running)

    # One curve point per distinct anomaly score: the state after every row at that score.
    last_of_group = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    if ranked.size == 0:
        last_of_group = np.empty(0, dtype=np.int64)
    # NAB starts from 1.1; should a detector score above it, start just above its maximum so
    # that the first point still detects nothing.
    top = NO_DETECTION_THRESHOLD
    if ranked.size and ranked[0] >= NO_DETECTION_THRESHOLD:
        top = float(np.nextafter(ranked[0], np.inf))
    tp = np.concatenate(([0], np.cumsum(~outside)[last_of_group])).astype(np.int64)
    fp = np.concatenate(([0], np.cumsum(outside)[last_of_group])).astype(np.int64)
    return ThresholdCurve(
        thresholds=np.concatenate(([top], ranked[last_of_group])),
        scores=np.concatenate(([null_score], null_score + np.cumsum(step)[last_of_group])),
        tp=tp,
        tn=n_outside - fp,
        fp=fp,
        fn=n_inside - tp,
    )


def _sweep_corpus(
    results: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    windows: Mapping[str, Sequence[Sequence[Any]]],
    profile: CostProfile,
    probation_percent: float,
) -> dict[str, _FileSweep]:
    """The sweep of every result file, keyed and ordered by NAB relative path."""
    unknown = sorted(key for key in results if key not in windows)
    if unknown:
        raise NABScoringError(f"no labelled windows for result files {unknown}")
    sweeps = {}
    for key in sorted(results):
        timestamps, anomaly_scores = results[key]
        try:
            sweeps[key] = _sweep_file(
                timestamps, anomaly_scores, windows[key], profile, probation_percent
            )
        except NABScoringError as exc:
            raise NABScoringError(f"{key}: {exc}") from exc
    return sweeps


def sweep_thresholds(
    results: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    windows: Mapping[str, Sequence[Sequence[Any]]],
    profile: CostProfile,
    probation_percent: float = DEFAULT_PROBATION_PERCENT,
) -> ThresholdCurve:
    """The raw corpus score at every candidate threshold (NAB's optimiser sweep).

    ``results`` maps NAB relative paths (``<category>/<file>.csv``) to ``(timestamps,
    anomaly_scores)``; ``windows`` maps the same paths to their labelled windows.
    """
    sweeps = _sweep_corpus(results, windows, profile, probation_percent)
    return _threshold_curve(list(sweeps.values()), profile)


def normalised_score(raw_score: float, null_score: float, perfect_score: float) -> float:
    """NAB's normalisation: 0 for the null detector, 100 for the perfect one (NaN if equal)."""
    if perfect_score == null_score:
        return math.nan
    return 100.0 * (raw_score - null_score) / (perfect_score - null_score)


def score_corpus(
    results: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    windows: Mapping[str, Sequence[Sequence[Any]]],
    profile: CostProfile,
    threshold: float | None = None,
    probation_percent: float = DEFAULT_PROBATION_PERCENT,
) -> CorpusScore:
    """Score a detector over the corpus formed by ``results``, for one profile.

    ``threshold=None`` picks the threshold with NAB's sweep (the best raw corpus score, ties to
    the highest threshold). The null score is that of no detection at all; the perfect score is
    ``A_tp`` times the number of windows of the scored files (NAB counts them from the label
    file, whether or not they fall in a probationary period).
    """
    sweeps = _sweep_corpus(results, windows, profile, probation_percent)
    if threshold is None:
        threshold = _threshold_curve(list(sweeps.values()), profile).best_threshold
    files = {key: _score_sweep(sweep, profile, threshold) for key, sweep in sweeps.items()}
    raw = math.fsum(f.score for f in files.values())
    null = -profile.fn_weight * sum(s.scored_windows.size for s in sweeps.values())
    perfect = profile.tp_weight * sum(s.n_windows for s in sweeps.values())
    return CorpusScore(
        profile=profile.name,
        threshold=float(threshold),
        raw_score=raw,
        null_score=null,
        perfect_score=perfect,
        normalised_score=normalised_score(raw, null, perfect),
        files=files,
    )


def nab_key(
    category: str,
    file_name: str,
    known_files: Collection[str] | None = None,
    detector: str | None = None,
) -> str:
    """The NAB relative path (``<category>/<file>.csv``) of a results file.

    Results files are named ``<detector>_<file>.csv`` (NAB's layout) or ``<file>.csv``. The
    detector prefix is stripped when ``detector`` is given; otherwise, with ``known_files``
    (the labelled paths), the name is matched to the known file it ends with — the longest,
    since ``numenta_nyc_taxi.csv`` ends with ``nyc_taxi.csv`` and with ``taxi.csv`` alike.
    Without either the name is kept as is.
    """
    if detector is not None:
        prefix = f"{detector}_"
        name = file_name[len(prefix) :] if file_name.startswith(prefix) else file_name
        return f"{category}/{name}"
    key = f"{category}/{file_name}"
    if known_files is None or key in known_files:
        return key
    matches = [
        known
        for known in known_files
        if known.startswith(f"{category}/") and file_name.endswith("_" + known[len(category) + 1 :])
    ]
    return max(matches, key=len) if matches else key


# --- loaders (the only I/O in this module) ------------------------------------------------------


def load_windows(path: str | Path) -> dict[str, list[Window]]:
    """Read NAB's ``combined_windows.json``: relative path -> list of ``(start, end)``."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise NABScoringError(f"cannot read windows file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise NABScoringError(f"{path}: expected an object of file -> windows")
    windows: dict[str, list[Window]] = {}
    for key, limits in raw.items():
        if not isinstance(limits, list) or any(
            not isinstance(w, list) or len(w) != 2 for w in limits
        ):
            raise NABScoringError(f"{path}: windows of {key!r} are not [start, end] pairs")
        try:
            windows[key] = [(to_timestamps(w)[0], to_timestamps(w)[1]) for w in limits]
        except ValueError as exc:
            raise NABScoringError(f"{path}: bad timestamp in windows of {key!r}: {exc}") from exc
    return windows


def load_profiles(path: str | Path) -> dict[str, CostProfile]:
    """Read NAB's ``config/profiles.json``: profile name -> its cost matrix."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise NABScoringError(f"cannot read profiles file {path}: {exc}") from exc
    profiles = {}
    try:
        for name, body in raw.items():
            costs = body["CostMatrix"]
            profiles[name] = CostProfile(
                name=name,
                tp_weight=float(costs["tpWeight"]),
                fp_weight=float(costs["fpWeight"]),
                fn_weight=float(costs["fnWeight"]),
            )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise NABScoringError(f"{path}: not a NAB profiles file ({exc!r})") from exc
    return profiles


def read_results_csv(path: str | Path) -> DetectorOutput:
    """Read one NAB results CSV; only its ``timestamp`` and ``anomaly_score`` columns are used.

    An empty anomaly score reads as NaN (never a detection).
    """
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or not {"timestamp", "anomaly_score"} <= set(header):
                raise NABScoringError(
                    f"{path}: needs 'timestamp' and 'anomaly_score' columns, has {header}"
                )
            time_col, score_col = header.index("timestamp"), header.index("anomaly_score")
            stamps, scores = [], []
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    stamps.append(row[time_col])
                    text = row[score_col].strip()
                    scores.append(float(text) if text else math.nan)
                except (IndexError, ValueError) as exc:
                    raise NABScoringError(f"{path}:{line_no}: bad row {row}: {exc}") from exc
        return DetectorOutput(to_timestamps(stamps), np.asarray(scores, dtype=np.float64))
    except OSError as exc:
        raise NABScoringError(f"cannot read results file {path}: {exc}") from exc
    except ValueError as exc:  # unparsable timestamps
        raise NABScoringError(f"{path}: bad timestamp: {exc}") from exc


def results_files(results_dir: str | Path) -> list[Path]:
    """The results CSVs of a NAB-layout directory: ``<category>/*.csv``, NAB's own
    ``*_scores.csv`` summaries excluded, sorted."""
    root = Path(results_dir)
    if not root.is_dir():
        raise NABScoringError(f"results directory {root} does not exist")
    return sorted(
        p for p in root.glob("*/*.csv") if p.is_file() and not p.name.endswith("_scores.csv")
    )


def read_results_dir(
    results_dir: str | Path,
    known_files: Collection[str] | None = None,
    detector: str | None = None,
    paths: Iterable[Path] | None = None,
) -> dict[str, DetectorOutput]:
    """Read every results CSV of a NAB-layout directory, keyed by NAB relative path.

    See ``nab_key`` for how ``<category>/<detector>_<file>.csv`` and ``<category>/<file>.csv``
    map to ``<category>/<file>.csv``. ``paths`` (from ``results_files``) lets a caller wrap the
    file list, e.g. in a progress bar.
    """
    root = Path(results_dir)
    results: dict[str, DetectorOutput] = {}
    sources: dict[str, Path] = {}
    for path in results_files(root) if paths is None else paths:
        key = nab_key(path.parent.name, path.name, known_files, detector)
        if key in results:
            raise NABScoringError(f"{path} and {sources[key]} are both results for {key}")
        results[key] = read_results_csv(path)
        sources[key] = path
    if not results:
        raise NABScoringError(f"no results CSVs (<category>/<file>.csv) under {root}")
    return results
