"""Cross-validated choice of the post-processing and alert parameters, for NAB and SKAB.

Parameters chosen on the files they are scored on flatter the detector. Here every choice is
made on training folds and scored on the fold left out: leave one NAB category out, leave one
SKAB group out. The held-out parts are pooled (their raw NAB scores, their SKAB counts) into one
held-out score, reported beside the in-sample one (the best candidate chosen and scored on all
files), which is only an upper bound.

The model runs once per file: the candidates differ only in what comes after it, so each works
from the per-window outputs that ``evaluate nab --trace-dir`` and ``evaluate skab --trace-dir``
keep (distances, calibrated scores). A candidate's row scores are computed once per file and
cached; a fold only re-sweeps thresholds or re-counts.

* **NAB** (:class:`NabCandidate`): the chain of :mod:`stream_ae.core.postprocess` (anomaly
  likelihood, time-of-day profile, running-range check, peak hold) with its parameters varied;
  the range check (a row whose value lies outside the range of the rows before it by more than
  the margin times that range scores 1, before the peak hold) is replayed on the rows as the
  processor runs it on windows. On the training folds the candidate with the best raw
  standard-profile score is chosen, then each profile's threshold by NAB's sweep; both are
  applied to the held-out category.
* **SKAB** (:class:`SkabCandidate`): a trace set (a model) and a
  :class:`~training.evaluation.skab_run.Detection` (score, smoothing, the distance's
  episodes, running-range check, threshold, alert-policy runs): the post-processing and alert
  policy the artifact carries (``detector.json``), replayed by the same pure functions the
  processor runs; chosen by pooled F1 on the training group.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from stream_ae.core.postprocess import (
    DEFAULT_RANGE,
    LikelihoodParams,
    PostParams,
    RangeParams,
    SeasonalParams,
    hold_peaks,
    likelihood_scores,
    new_hold_state,
    new_state,
    seasonal_scores,
)
from stream_ae.errors import StreamAEError
from training.evaluation.nab_score import (
    DEFAULT_PROBATION_PERCENT,
    CostProfile,
    FileScore,
    _FileSweep,
    _score_sweep,
    _sweep_file,
    _threshold_curve,
    load_profiles,
    load_windows,
    normalised_score,
)
from training.evaluation.skab_run import (
    Detection,
    SkabTrace,
    detection_scores,
    load_trace,
    predict_rows,
)
from training.evaluation.skab_score import (
    PooledScore,
    SkabFile,
    confusion,
    data_files,
    pooled_score_of,
    read_skab_file,
)

STANDARD = "standard"


class CrossValidationError(StreamAEError):
    """Cross-validation inputs are missing or inconsistent (traces, files, folds)."""


def leave_one_out_folds(keys: Iterable[str], by: str = "group") -> dict[str, list[str]]:
    """Folds by the part of each key before its first ``/`` (NAB category, SKAB group), or
    one file per fold (``by="file"``).

    >>> leave_one_out_folds(["a/1", "b/1", "a/2"])
    {'a': ['a/1', 'a/2'], 'b': ['b/1']}
    >>> leave_one_out_folds(["a/1", "b/1"], by="file")
    {'a/1': ['a/1'], 'b/1': ['b/1']}
    """
    if by not in ("group", "file"):
        raise CrossValidationError(f"folds by 'group' or 'file', not {by!r}")
    folds: dict[str, list[str]] = {}
    for key in sorted(keys):
        folds.setdefault(key if by == "file" else key.split("/", 1)[0], []).append(key)
    return folds


def running_range_flags(values: np.ndarray, margin: float, start: int) -> np.ndarray:
    """True on rows from ``start`` on where some feature lies outside the range of the rows
    before it (all of them, from row 0) by more than ``margin`` times that range (the NAB
    candidates' range check). No look-ahead: row ``i`` is compared with rows ``< i`` only.

    >>> running_range_flags(np.array([[0.0], [1.0], [0.5], [1.05], [1.2], [-0.5]]), 0.1, 2)
    array([False, False, False, False,  True,  True])
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    low = np.minimum.accumulate(x, axis=0)
    high = np.maximum.accumulate(x, axis=0)
    # The range of the rows before row i: shift by one.
    low_before, high_before = low[:-1], high[:-1]
    span = high_before - low_before
    outside = (x[1:] > high_before + margin * span) | (x[1:] < low_before - margin * span)
    flags = np.r_[False, outside.any(axis=1)]
    flags[:start] = False
    return flags


# --- NAB ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NabCandidate:
    """One post-processing of the window distances into NAB row scores."""

    post: PostParams

    def __post_init__(self) -> None:
        if self.post.likelihood is None:
            raise CrossValidationError("a NAB candidate scores by the anomaly likelihood")

    @property
    def likelihood(self) -> LikelihoodParams:
        """The post-processing's likelihood (always there: checked above)."""
        assert self.post.likelihood is not None
        return self.post.likelihood

    def label(self) -> str:
        like = self.likelihood
        seasonal = "off" if self.post.seasonal is None else f"{self.post.seasonal.slots}"
        margin = "off" if self.post.range is None else f"{self.post.range.margin:g}"
        return (
            f"smooth={like.short_window} min_std={like.min_std:g} slots={seasonal} "
            f"hold={self.post.hold} range={margin}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"post": self.post.to_dict()}


@dataclass(frozen=True)
class NabInput:
    """What one NAB file's cross-validation needs: its rows, windows and the trace's distances."""

    key: str
    timestamps: np.ndarray  # datetime64
    ts_ms: np.ndarray
    values: np.ndarray
    distances: np.ndarray
    windows: Sequence[Any]


def nab_grid(
    short_windows: Sequence[int] = (5, 10, 20),
    min_stds: Sequence[float] = (0.1, 0.2, 0.4),
    slots: Sequence[int | None] = (None, 12),
    holds: Sequence[int] = (100, 250, 500),
    range_margins: Sequence[float | None] = (None, 0.0, 0.01, 0.02, 0.05, 0.1, 0.3),
) -> list[NabCandidate]:
    """Every combination of the given values (the defaults: 378 candidates); the range check
    starts, as the default one, after the likelihood's learning period."""
    out = []
    for short, min_std, slot, hold, margin in itertools.product(
        short_windows, min_stds, slots, holds, range_margins
    ):
        likelihood = replace(LikelihoodParams(), short_window=short, min_std=min_std)
        seasonal = None if slot is None else replace(SeasonalParams(), slots=slot)
        range_check = None if margin is None else replace(DEFAULT_RANGE, margin=margin)
        out.append(NabCandidate(PostParams(likelihood, seasonal, hold, range=range_check)))
    return out


class NabScoreCache:
    """Row scores of each candidate on each file, computed once; stages shared between
    candidates (the likelihood, the profile, the range flags) are computed once too."""

    def __init__(self, inputs: Mapping[str, NabInput]) -> None:
        self.inputs = inputs
        self._likelihood: dict[tuple[str, LikelihoodParams], np.ndarray] = {}
        self._seasonal: dict[tuple[str, SeasonalParams], np.ndarray] = {}
        self._range: dict[tuple[str, RangeParams], np.ndarray] = {}
        self._sweeps: dict[tuple[NabCandidate, str, str], _FileSweep] = {}

    def scores(self, candidate: NabCandidate, key: str) -> np.ndarray:
        data = self.inputs[key]
        post = candidate.post
        likelihood = candidate.likelihood
        like_key = (key, likelihood)
        if like_key not in self._likelihood:
            state = new_state(likelihood)
            self._likelihood[like_key] = likelihood_scores(likelihood, state, data.distances)[0]
        scores = self._likelihood[like_key]
        if post.seasonal is not None:
            season_key = (key, post.seasonal)
            if season_key not in self._seasonal:
                state = np.zeros(post.seasonal.state_size)
                self._seasonal[season_key] = seasonal_scores(
                    post.seasonal, state, data.distances, data.ts_ms
                )[0]
            scores = np.fmax(scores, self._seasonal[season_key])
        if post.range is not None:
            range_key = (key, post.range)
            if range_key not in self._range:
                self._range[range_key] = _range_flags_of(data, post.range)
            scores = np.where(self._range[range_key] & ~np.isnan(scores), 1.0, scores)
        held, _ = hold_peaks(post.hold, new_hold_state(), scores)
        return np.nan_to_num(held, nan=0.0)

    def sweep(self, candidate: NabCandidate, key: str, profile: CostProfile) -> _FileSweep:
        cache_key = (candidate, key, profile.name)
        if cache_key not in self._sweeps:
            data = self.inputs[key]
            self._sweeps[cache_key] = _sweep_file(
                data.timestamps,
                self.scores(candidate, key),
                data.windows,
                profile,
                DEFAULT_PROBATION_PERCENT,
            )
        return self._sweeps[cache_key]

    def best(
        self, candidate: NabCandidate, keys: Sequence[str], profile: CostProfile
    ) -> tuple[float, float]:
        """NAB's sweep over ``keys``: the best raw score and its threshold."""
        curve = _threshold_curve([self.sweep(candidate, k, profile) for k in keys], profile)
        i = curve.best_index
        return float(curve.scores[i]), float(curve.thresholds[i])

    def at(
        self, candidate: NabCandidate, key: str, profile: CostProfile, threshold: float
    ) -> FileScore:
        return _score_sweep(self.sweep(candidate, key, profile), profile, threshold)


def _range_flags_of(data: NabInput, params: RangeParams) -> np.ndarray:
    """The processor's range check on one file's rows: a window (a row with a distance) is
    checked once ``learning_windows`` windows came before it, its last row against every row
    before it (NAB's files have one feature and windows of consecutive rows)."""
    windows = np.flatnonzero(~np.isnan(data.distances))
    if params.learning_windows >= len(windows):
        return np.zeros(len(data.values), dtype=bool)
    return running_range_flags(data.values, params.margin, int(windows[params.learning_windows]))


@dataclass
class NabFold:
    """One held-out category: the candidate chosen on the others, its thresholds, and the
    held-out raw scores per profile."""

    held_out: str
    files: list[str]
    chosen: str
    train_standard: float
    thresholds: dict[str, float]
    held_out_raw: dict[str, float]


@dataclass
class NabReport:
    """In-sample and cross-validated NAB scores (normalised, per profile)."""

    candidates: int
    in_sample: dict[str, float]
    in_sample_choice: dict[str, Any]
    in_sample_thresholds: dict[str, float]
    cross_validated: dict[str, float]
    folds: list[NabFold]
    top_in_sample: list[tuple[str, float]] = field(default_factory=list)
    elapsed_s: float = 0.0


def _choose(
    cache: NabScoreCache,
    candidates: Sequence[NabCandidate],
    keys: Sequence[str],
    profile: CostProfile,
) -> tuple[NabCandidate, float, list[tuple[float, NabCandidate]]]:
    """The candidate with the best raw score over ``keys`` (ties: the first in grid order)."""
    ranked = [(cache.best(c, keys, profile)[0], c) for c in candidates]
    best_score, best = max(ranked, key=lambda item: item[0])
    return best, best_score, ranked


def _bounds(inputs: Mapping[str, NabInput], profile: CostProfile) -> tuple[float, float]:
    """The null and perfect raw scores of the whole corpus (independent of the detector)."""
    null = perfect = 0.0
    for data in inputs.values():
        sweep = _sweep_file(
            data.timestamps,
            np.zeros(len(data.ts_ms)),
            data.windows,
            profile,
            DEFAULT_PROBATION_PERCENT,
        )
        null -= profile.fn_weight * sweep.scored_windows.size
        perfect += profile.tp_weight * sweep.n_windows
    return null, perfect


def cross_validate_nab(
    inputs: Mapping[str, NabInput],
    profiles: Mapping[str, CostProfile],
    candidates: Sequence[NabCandidate],
    folds_by: str = "group",
) -> NabReport:
    """Leave-one-category-out: choose candidate (standard profile) and thresholds (each
    profile) on the other categories, score the category left out; pool the held-out raw
    scores and normalise them over the whole corpus. Also the in-sample figures."""
    started = time.perf_counter()
    if STANDARD not in profiles:
        raise CrossValidationError(f"no {STANDARD!r} profile among {sorted(profiles)}")
    cache = NabScoreCache(inputs)
    keys = sorted(inputs)
    standard = profiles[STANDARD]
    bounds = {name: _bounds(inputs, profile) for name, profile in profiles.items()}

    best, _, ranked = _choose(cache, candidates, keys, standard)
    in_sample: dict[str, float] = {}
    in_sample_thresholds: dict[str, float] = {}
    for name, profile in profiles.items():
        raw, threshold = cache.best(best, keys, profile)
        in_sample[name] = normalised_score(raw, *bounds[name])
        in_sample_thresholds[name] = threshold
    null, perfect = bounds[STANDARD]
    top = sorted(ranked, key=lambda item: -item[0])[:10]

    folds: list[NabFold] = []
    pooled = dict.fromkeys(profiles, 0.0)
    for held_out, held_keys in leave_one_out_folds(keys, folds_by).items():
        train_keys = [k for k in keys if k not in held_keys]
        chosen, train_score, _ = _choose(cache, candidates, train_keys, standard)
        thresholds = {
            name: cache.best(chosen, train_keys, profile)[1] for name, profile in profiles.items()
        }
        held_raw = {
            name: math.fsum(cache.at(chosen, k, profile, thresholds[name]).score for k in held_keys)
            for name, profile in profiles.items()
        }
        for name in profiles:
            pooled[name] += held_raw[name]
        folds.append(
            NabFold(held_out, held_keys, chosen.label(), train_score, thresholds, held_raw)
        )
    return NabReport(
        candidates=len(candidates),
        in_sample=in_sample,
        in_sample_choice={"label": best.label(), **best.to_dict()},
        in_sample_thresholds=in_sample_thresholds,
        cross_validated={name: normalised_score(pooled[name], *bounds[name]) for name in profiles},
        folds=folds,
        top_in_sample=[(c.label(), normalised_score(s, null, perfect)) for s, c in top],
        elapsed_s=time.perf_counter() - started,
    )


def cross_validate_thresholds(
    results: Mapping[str, tuple[np.ndarray, np.ndarray]],
    windows: Mapping[str, Sequence[Any]],
    profiles: Mapping[str, CostProfile],
    folds_by: str = "group",
) -> dict[str, float]:
    """Normalised NAB scores of fixed row scores (``key -> (timestamps, anomaly_scores)``, e.g.
    a published detector's results) with only the threshold cross-validated: each profile's
    threshold swept on the training folds, applied to the held-out one, pooled."""
    out = {}
    keys = sorted(results)
    for name, profile in profiles.items():
        sweeps = {
            k: _sweep_file(
                results[k][0], results[k][1], windows[k], profile, DEFAULT_PROBATION_PERCENT
            )
            for k in keys
        }
        null = -profile.fn_weight * sum(s.scored_windows.size for s in sweeps.values())
        perfect = profile.tp_weight * sum(s.n_windows for s in sweeps.values())
        raw = 0.0
        for held_keys in leave_one_out_folds(keys, folds_by).values():
            train = [sweeps[k] for k in keys if k not in held_keys]
            curve = _threshold_curve(train, profile)
            threshold = float(curve.thresholds[curve.best_index])
            raw += math.fsum(_score_sweep(sweeps[k], profile, threshold).score for k in held_keys)
        out[name] = normalised_score(raw, null, perfect)
    return out


def read_nab_inputs(data_dir: Path, trace_dir: Path, windows_path: Path) -> dict[str, NabInput]:
    """The NAB files that have a trace in ``trace_dir`` (``evaluate nab --trace-dir``)."""
    from training.evaluation.nab_run import data_files as nab_files
    from training.evaluation.nab_run import read_series

    windows = load_windows(windows_path)
    inputs = {}
    for key, path in nab_files(data_dir).items():
        trace_path = trace_dir / f"{key.replace('/', '__')}.npz"
        if not trace_path.is_file():
            continue
        series = read_series(key, path)
        with np.load(trace_path) as saved:
            distances = saved["distances"]
        if len(distances) != len(series.values):
            raise CrossValidationError(f"{trace_path}: {len(distances)} rows, {key} has more")
        inputs[key] = NabInput(
            key=key,
            timestamps=np.array(series.timestamps, dtype="datetime64[us]"),
            ts_ms=series.ts_ms,
            values=series.values,
            distances=distances,
            windows=windows.get(key, []),
        )
    if not inputs:
        raise CrossValidationError(f"no NAB traces (<category>__<file>.csv.npz) in {trace_dir}")
    return inputs


# --- SKAB --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkabCandidate:
    """A model (the name of its trace set) and a detection over its outputs."""

    model: str
    detection: Detection

    def label(self) -> str:
        d = self.detection
        threshold = "calibrated" if d.threshold is None else f"{d.threshold:g}"
        margin = "off" if d.range_margin is None else f"{d.range_margin:g}"
        memory = f" memory={d.memory}" if d.score == "likelihood" else ""
        drop = f" drop={d.drop:g} drop_after={d.drop_after}" if d.drop is not None else ""
        return (
            f"model={self.model} score={d.score}{memory}{drop} threshold={threshold} "
            f"smooth={d.smoothing} range={margin} open_after={d.open_after} "
            f"resolve_after={d.resolve_after}"
        )


def skab_grid(
    models: Sequence[str],
    thresholds: Sequence[float] = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 30.0),
    likelihood_thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.5, 0.7),
    memories: Sequence[int] = (100, 400),
    smoothings: Sequence[int] = (1, 5, 10, 20),
    range_margins: Sequence[float | None] = (None, 0.05, 0.2),
    open_afters: Sequence[int] = (1, 3),
    resolve_afters: Sequence[int] = (3, 10, 30),
    drops: Sequence[float] = (0.6, 0.7, 0.8, 0.9),
) -> list[SkabCandidate]:
    """For every model and alert policy (``open_afters`` x ``resolve_afters``): the calibrated
    score at the model's own threshold (no post-processing), and for every smoothing and range
    margin the distance at each of ``thresholds`` (plain, and with episodes at each of
    ``drops``, their ``drop_after`` the policy's ``resolve_after``) and the likelihood at each
    of ``likelihood_thresholds`` and ``memories``. Every candidate is a detector the worker
    runs (its ``detector.json``: post-processing and alert policy)."""
    out = []
    for model, open_after, resolve_after in itertools.product(models, open_afters, resolve_afters):
        policy: dict[str, Any] = {"open_after": open_after, "resolve_after": resolve_after}
        out.append(SkabCandidate(model, Detection(**policy)))
        for smoothing, margin in itertools.product(smoothings, range_margins):
            common = {"smoothing": smoothing, "range_margin": margin, **policy}
            for threshold, drop in itertools.product(thresholds, (None, *drops)):
                detection = Detection(
                    "distance", threshold=threshold, drop=drop, drop_after=resolve_after, **common
                )
                out.append(SkabCandidate(model, detection))
            for threshold, memory in itertools.product(likelihood_thresholds, memories):
                detection = Detection("likelihood", threshold=threshold, memory=memory, **common)
                out.append(SkabCandidate(model, detection))
    return out


@dataclass
class SkabFold:
    held_out: str
    files: list[str]
    chosen: str
    train_f1: float
    held_out_score: dict[str, float]


@dataclass
class SkabReport:
    candidates: int
    in_sample: dict[str, float]
    in_sample_choice: str
    cross_validated: dict[str, float]
    folds: list[SkabFold]
    top_in_sample: list[tuple[str, float]] = field(default_factory=list)
    elapsed_s: float = 0.0


def cross_validate_skab(
    files: Mapping[str, SkabFile],
    traces: Mapping[str, Mapping[str, SkabTrace]],
    candidates: Sequence[SkabCandidate],
    folds_by: str = "group",
) -> SkabReport:
    """Leave-one-group-out by pooled F1; ``traces[model][key]`` are each model's traces."""
    started = time.perf_counter()
    counts: dict[tuple[SkabCandidate, str], PooledScore] = {}

    # Scores depend on fewer fields than predictions: shared by the alert-policy variants.
    scores: dict[tuple[Any, ...], np.ndarray] = {}

    def count(candidate: SkabCandidate, key: str) -> PooledScore:
        if (candidate, key) not in counts:
            data = files[key]
            trace = traces[candidate.model][key]
            d = candidate.detection
            # A distance score is scaled by its threshold; the others do not depend on it.
            threshold = d.threshold if d.score == "distance" else None
            score_key: tuple[Any, ...] = (
                candidate.model,
                key,
                d.score,
                d.smoothing,
                d.range_margin,
                d.memory,
                threshold,
                d.drop,
                d.drop_after if d.drop is not None else None,
            )
            if score_key not in scores:
                scores[score_key] = detection_scores(trace, data.values, d)
            predictions, _ = predict_rows(trace, data.values, d, scores[score_key])
            test = data.test_rows
            counts[candidate, key] = confusion(data.anomaly[test], predictions[test])
        return counts[candidate, key]

    def pooled(candidate: SkabCandidate, keys: Sequence[str]) -> PooledScore:
        return pooled_score_of(count(candidate, k) for k in keys)

    def choose(keys: Sequence[str]) -> tuple[SkabCandidate, float, list[tuple[float, str]]]:
        ranked = [(pooled(c, keys).f1, c) for c in candidates]
        f1, best = max(ranked, key=lambda item: item[0])
        return best, f1, [(s, c.label()) for s, c in ranked]

    keys = sorted(files)
    best, _, ranked = choose(keys)
    folds = []
    held_total = PooledScore(0, 0, 0, 0)
    for held_out, held_keys in leave_one_out_folds(keys, folds_by).items():
        train_keys = [k for k in keys if k not in held_keys]
        chosen, train_f1, _ = choose(train_keys)
        score = pooled(chosen, held_keys)
        held_total = held_total + score
        folds.append(SkabFold(held_out, held_keys, chosen.label(), train_f1, score.as_dict()))
    return SkabReport(
        candidates=len(candidates),
        in_sample=pooled(best, keys).as_dict(),
        in_sample_choice=best.label(),
        cross_validated=held_total.as_dict(),
        folds=folds,
        top_in_sample=[(label, f1) for f1, label in sorted(ranked, key=lambda r: -r[0])[:10]],
        elapsed_s=time.perf_counter() - started,
    )


def read_skab_inputs(
    data_dir: Path, trace_dirs: Mapping[str, Path]
) -> tuple[dict[str, SkabFile], dict[str, dict[str, SkabTrace]]]:
    """SKAB's labelled files and, per model name, their traces (``evaluate skab --trace-dir``)."""
    files = {key: read_skab_file(key, path) for key, path in data_files(data_dir).items()}
    traces: dict[str, dict[str, SkabTrace]] = {}
    for model, trace_dir in trace_dirs.items():
        try:
            traces[model] = {key: load_trace(trace_dir, key) for key in files}
        except OSError as exc:
            raise CrossValidationError(
                f"model {model}: missing trace in {trace_dir}: {exc}"
            ) from exc
    return files, traces


# --- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stream-ae evaluate cv``."""
    parser.add_argument("benchmark", choices=("nab", "skab"), help="which benchmark")
    parser.add_argument(
        "data_dir", type=Path, metavar="DATA_DIR", help="the benchmark's root folder"
    )
    parser.add_argument(
        "--traces",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="per-window outputs of `evaluate nab|skab --trace-dir DIR`; for SKAB repeatable, "
        "one per model (NAME labels it)",
    )
    parser.add_argument(
        "--folds",
        choices=("group", "file"),
        default="group",
        help="leave one NAB category / SKAB group out (default), or one file",
    )
    parser.add_argument(
        "--out", type=Path, default=None, metavar="JSON", help="write the report here as well"
    )


def _named_dirs(specs: Sequence[str]) -> dict[str, Path]:
    out = {}
    for spec in specs:
        name, _, path = spec.rpartition("=")
        out[name or Path(path).name] = Path(path)
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``evaluate cv``; returns the exit status."""
    dirs = _named_dirs(args.traces)
    try:
        if args.benchmark == "nab":
            if len(dirs) != 1:
                raise CrossValidationError("NAB takes one --traces directory")
            windows = args.data_dir / "combined_windows.json"
            inputs = read_nab_inputs(args.data_dir, next(iter(dirs.values())), windows)
            profiles = load_profiles(args.data_dir / "config-profiles.json")
            grid = nab_grid()
            report: NabReport | SkabReport = cross_validate_nab(inputs, profiles, grid, args.folds)
        else:
            files, traces = read_skab_inputs(args.data_dir, dirs)
            report = cross_validate_skab(files, traces, skab_grid(sorted(traces)), args.folds)
    except (StreamAEError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_report(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")
    return 0


def _print_report(report: NabReport | SkabReport) -> None:
    say: Callable[[str], None] = print
    say(f"{report.candidates} candidates, {report.elapsed_s:.1f} s")
    if isinstance(report, NabReport):
        say("NAB normalised scores   in-sample   cross-validated (held-out folds pooled)")
        for name, value in report.in_sample.items():
            say(f"  {name:<20} {value:9.2f}   {report.cross_validated[name]:9.2f}")
        say(f"in-sample choice: {report.in_sample_choice['label']}")
        for nab_fold in report.folds:
            raw = ", ".join(f"{k} {v:.3f}" for k, v in nab_fold.held_out_raw.items())
            say(f"  held out {nab_fold.held_out}: chose {nab_fold.chosen}; held-out raw {raw}")
    else:
        say("SKAB pooled        F1      FAR %   MAR %")
        for title, score in (
            ("in-sample", report.in_sample),
            ("cross-val", report.cross_validated),
        ):
            say(f"  {title:<14} {score['f1']:.3f}  {score['far']:6.2f}  {score['mar']:6.2f}")
        say(f"in-sample choice: {report.in_sample_choice}")
        for fold in report.folds:
            s = fold.held_out_score
            say(
                f"  held out {fold.held_out}: chose {fold.chosen}; held-out F1 {s['f1']:.3f} "
                f"FAR {s['far']:.2f} MAR {s['mar']:.2f}"
            )
