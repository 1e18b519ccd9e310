"""SKAB's outlier-detection score: files, predictions and the pooled F1, FAR and MAR. Pure numpy.

The Skoltech Anomaly Benchmark (github.com/waico/SKAB) scores a detector over the test rows of
all its files pooled: in each file the first :data:`TRAIN_ROWS` rows are training data, every
later row gets a 0/1 prediction, and with the counts TP, FP, FN, TN over all those rows

* ``F1 = TP / (TP + (FP + FN) / 2)``,
* ``FAR = 100 * FP / (FP + TN)`` (false alarm rate, %),
* ``MAR = 100 * FN / (FN + TP)`` (missed alarm rate, %).

Files are ``;``-separated with a ``datetime`` column, the sensor features, and the labels
``anomaly`` and ``changepoint`` (never inputs). Predictions are written in SKAB's results
layout, ``<dir>/<group>/<n>.csv`` with columns ``datetime;anomaly_pred`` for the test rows, so
any SKAB scorer can read them (:func:`write_predictions`, :func:`read_predictions`).

>>> score = pooled_score([(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0]))])
>>> (score.tp, score.fp, score.fn, score.tn, score.f1, score.far, score.mar)
(1, 1, 1, 1, 0.5, 50.0, 50.0)
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream_ae.errors import StreamAEError

# SKAB's protocol: the first 400 rows of every file train, the rest are scored.
TRAIN_ROWS = 400
TIME_COLUMN = "datetime"
LABEL_COLUMNS = ("anomaly", "changepoint")
PREDICTION_COLUMN = "anomaly_pred"
DELIMITER = ";"


class SkabError(StreamAEError):
    """A SKAB data or predictions file cannot be used (missing, malformed, misaligned)."""


@dataclass(frozen=True)
class SkabFile:
    """One SKAB data file: its key (``<group>/<n>``), rows and labels.

    ``timestamps`` are the ``datetime`` strings as written (copied verbatim into predictions);
    ``ts_ms`` the same times as epoch milliseconds (taken as UTC).
    """

    key: str
    feature_names: tuple[str, ...]
    timestamps: list[str]
    ts_ms: np.ndarray  # (n,) int64
    values: np.ndarray  # (n, F) float64
    anomaly: np.ndarray  # (n,) int64, 0/1

    @property
    def group(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def test_rows(self) -> slice:
        """The rows that are scored: all after the training rows."""
        return slice(TRAIN_ROWS, len(self.timestamps))


@dataclass(frozen=True)
class PooledScore:
    """Counts over all scored rows and SKAB's three figures (FAR and MAR in %)."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def f1(self) -> float:
        denominator = self.tp + (self.fp + self.fn) / 2
        return self.tp / denominator if denominator else 0.0

    @property
    def far(self) -> float:
        negatives = self.fp + self.tn
        return 100.0 * self.fp / negatives if negatives else 0.0

    @property
    def mar(self) -> float:
        positives = self.fn + self.tp
        return 100.0 * self.fn / positives if positives else 0.0

    def __add__(self, other: PooledScore) -> PooledScore:
        return PooledScore(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "f1": self.f1,
            "far": self.far,
            "mar": self.mar,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
        }


def confusion(labels: np.ndarray, predictions: np.ndarray) -> PooledScore:
    """TP, FP, FN, TN of 0/1 ``predictions`` against 0/1 ``labels`` (equal lengths)."""
    truth = np.asarray(labels).astype(bool)
    said = np.asarray(predictions).astype(bool)
    if truth.shape != said.shape:
        raise SkabError(f"{said.size} predictions for {truth.size} labelled rows")
    return PooledScore(
        tp=int(np.sum(truth & said)),
        fp=int(np.sum(~truth & said)),
        fn=int(np.sum(truth & ~said)),
        tn=int(np.sum(~truth & ~said)),
    )


def pooled_score(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> PooledScore:
    """SKAB's score over ``(labels, predictions)`` of the test rows of several files, pooled."""
    return pooled_score_of(confusion(labels, predictions) for labels, predictions in pairs)


# --- files -----------------------------------------------------------------------------------


def data_files(data_dir: Path) -> dict[str, Path]:
    """The labelled SKAB files under ``data_dir`` (SKAB's root or its ``data`` folder), by key
    ``<group>/<n>``; files at the top level (``anomaly-free.csv``: no labels) are not included."""
    root = data_dir / "data" if (data_dir / "data").is_dir() else data_dir
    files = {f"{p.parent.name}/{p.stem}": p for p in sorted(root.glob("*/*.csv"), key=_file_order)}
    if not files:
        raise SkabError(f"no SKAB data files (<group>/<n>.csv) under {root}")
    return files


def _file_order(path: Path) -> tuple[str, int, str]:
    """Groups by name, files by number (``10.csv`` after ``9.csv``)."""
    return (path.parent.name, int(path.stem) if path.stem.isdigit() else -1, path.stem)


def read_skab_file(key: str, path: Path) -> SkabFile:
    """Read one labelled SKAB data file."""
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle, delimiter=DELIMITER)
            header = next(reader, None)
            rows = [row for row in reader if row]
    except OSError as exc:
        raise SkabError(f"cannot read {path}: {exc}") from exc
    if header is None or header[0] != TIME_COLUMN or "anomaly" not in header:
        raise SkabError(f"{path}: expected a datetime;<features>;anomaly;changepoint header")
    features = tuple(name for name in header[1:] if name not in LABEL_COLUMNS)
    feature_columns = [header.index(name) for name in features]
    label_column = header.index("anomaly")
    try:
        stamps = [row[0] for row in rows]
        values = np.array([[float(row[c]) for c in feature_columns] for row in rows])
        anomaly = np.array([float(row[label_column]) for row in rows]).astype(np.int64)
        ts_ms = np.array(stamps, dtype="datetime64[ms]").astype(np.int64)
    except (ValueError, IndexError) as exc:
        raise SkabError(f"{path}: malformed row: {exc}") from exc
    if not np.all(np.isfinite(values)):
        raise SkabError(f"{path}: non-finite values")
    if len(rows) <= TRAIN_ROWS:
        raise SkabError(f"{path}: {len(rows)} rows, no test rows after the {TRAIN_ROWS} training")
    return SkabFile(key, features, stamps, ts_ms, values, anomaly)


def predictions_path(out_dir: Path, key: str) -> Path:
    """``<out>/<group>/<n>.csv``, SKAB's results layout."""
    return out_dir / f"{key}.csv"


def write_predictions(path: Path, timestamps: Sequence[str], predictions: np.ndarray) -> None:
    """One predictions file: ``datetime;anomaly_pred`` for the given (test) rows."""
    if len(timestamps) != len(predictions):
        raise SkabError(f"{len(predictions)} predictions for {len(timestamps)} rows")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter=DELIMITER, lineterminator="\n")
        writer.writerow((TIME_COLUMN, PREDICTION_COLUMN))
        writer.writerows(zip(timestamps, np.asarray(predictions).astype(int).tolist(), strict=True))


def read_predictions(path: Path) -> tuple[list[str], np.ndarray]:
    """A predictions file's datetimes and 0/1 predictions."""
    try:
        with path.open(newline="") as handle:
            reader = csv.reader(handle, delimiter=DELIMITER)
            header = next(reader, None)
            rows = [row for row in reader if row]
    except OSError as exc:
        raise SkabError(f"cannot read {path}: {exc}") from exc
    if header is None or header[:2] != [TIME_COLUMN, PREDICTION_COLUMN]:
        raise SkabError(f"{path}: expected a datetime;anomaly_pred header, got {header}")
    try:
        predictions = np.array([int(float(row[1])) for row in rows], dtype=np.int64)
    except (ValueError, IndexError) as exc:
        raise SkabError(f"{path}: malformed row: {exc}") from exc
    return [row[0] for row in rows], predictions


def score_predictions_dir(
    predictions_dir: Path, files: Sequence[SkabFile]
) -> tuple[PooledScore, dict[str, PooledScore]]:
    """Score a predictions directory over ``files``: pooled, and per file.

    Each predictions file must cover exactly the file's test rows, in order (checked by
    datetime), as SKAB's leaderboard requires.
    """
    per_file: dict[str, PooledScore] = {}
    for data in files:
        path = predictions_path(predictions_dir, data.key)
        stamps, predictions = read_predictions(path)
        expected = data.timestamps[data.test_rows]
        if stamps != expected:
            raise SkabError(
                f"{path}: its {len(stamps)} rows are not the {len(expected)} test rows of "
                f"{data.key} (rows {TRAIN_ROWS} on)"
            )
        per_file[data.key] = confusion(data.anomaly[data.test_rows], predictions)
    return pooled_score_of(per_file.values()), per_file


def pooled_score_of(scores: Iterable[PooledScore]) -> PooledScore:
    """The sum of several files' counts."""
    total = PooledScore(0, 0, 0, 0)
    for score in scores:
        total = total + score
    return total
