"""Reading time series from CSV files: one reader for ``train``, ``produce``, ``report`` and
``evaluate``, so every command detects the same columns and refuses the same mistakes.

The rules, each a one-line error naming the fix:

- **Columns.** The time column is ``--time-column``, else the first of ``timestamp``, ``ts``,
  ``time``, ``date``, ``datetime`` (any case). A ``stream`` column (or ``--stream-column``)
  makes the file long format: one series per stream. Values are ``--value-columns``, else
  every other column except ``label``.
- **Timestamps.** ISO 8601 (naive = UTC) or epoch numbers, whose unit is detected by
  magnitude (below 1e11: seconds, 1e14: milliseconds, 1e17: microseconds, else nanoseconds)
  or forced with ``--time-unit``. The report says what was detected.
- **Order.** Rows out of time order are refused, or sorted with ``--sort`` (NAB's corpus is
  kept as written: its results are scored row by row).
- **Gaps** (steps longer than twice the typical one) are reported; ``--resample PERIOD``
  puts the series on a regular grid (the mean of each period), empty periods filled as
  ``--fill`` says.
- **Missing values** (empty cells, ``nan``, ``null``, ``NA``) are counted per column and
  filled as ``--fill`` says: ``ffill`` (the last value), ``interpolate`` (linear in time), or
  ``none``: refused (before a resample; after one, empty periods are left out).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from stream_ae.errors import StreamAEError

TimeUnit = Literal["auto", "iso", "s", "ms", "us", "ns"]
Fill = Literal["none", "ffill", "interpolate"]
Order = Literal["refuse", "sort", "keep"]

TIME_COLUMNS = ("timestamp", "ts", "time", "date", "datetime")
STREAM_COLUMN = "stream"
NOT_VALUES = ("label",)
MISSING = frozenset({"", "nan", "null", "na", "none"})
# Epoch magnitude limits: a number below 1e11 is seconds (1e11 s is the year 5138), below 1e14
# milliseconds, below 1e17 microseconds, else nanoseconds.
_UNIT_LIMITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"))
_MS_PER_UNIT = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
_PERIOD_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# A step longer than this many typical steps is a gap.
GAP_FACTOR = 2.0


class SeriesFileError(StreamAEError):
    """A series file cannot be read as asked; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class ReadOptions:
    """How to read series files (the command-line options of the same names)."""

    time_column: str | None = None
    value_columns: tuple[str, ...] | None = None
    stream_column: str | None = None
    time_unit: TimeUnit = "auto"
    # Rows out of time order: refused, sorted, or kept as written (NAB's corpus, whose results
    # are scored row by row as the files hold them; the report still counts them).
    order: Order = "refuse"
    resample_ms: int | None = None
    fill: Fill = "none"


@dataclass(frozen=True)
class FileSeries:
    """One stream of a file: times (T,) epoch ms, values (T, F) float64, column names."""

    name: str
    ts_ms: np.ndarray
    values: np.ndarray
    columns: tuple[str, ...]


@dataclass
class ReadReport:
    """What reading a file found and did, for the user."""

    path: Path
    time_column: str
    time_unit: str
    rows: int = 0
    streams: int = 0
    sorted_rows: int = 0
    unordered_rows: int = 0
    missing: dict[str, int] = field(default_factory=dict)
    filled: int = 0
    gaps: int = 0
    largest_gap_ms: int = 0
    period_ms: int = 0
    resampled_to_ms: int | None = None

    def summary(self) -> str:
        """One line: rows, streams, the time column and unit, order, gaps, missing values."""
        parts = [
            f"{self.path}: {self.rows} rows, {self.streams} stream(s), time column "
            f"{self.time_column!r} read as {_UNIT_WORDS[self.time_unit]}"
        ]
        if self.sorted_rows:
            parts.append(f"{self.sorted_rows} rows out of order sorted")
        if self.unordered_rows:
            parts.append(f"{self.unordered_rows} rows out of order kept as written")
        if self.gaps:
            parts.append(
                f"{self.gaps} gap(s) longer than {GAP_FACTOR:g} x the period "
                f"{format_ms(self.period_ms)} (largest {format_ms(self.largest_gap_ms)})"
            )
        if self.resampled_to_ms:
            parts.append(f"resampled to {format_ms(self.resampled_to_ms)}")
        missing = {c: n for c, n in self.missing.items() if n}
        if missing:
            parts.append("missing values: " + ", ".join(f"{c} {n}" for c, n in missing.items()))
        if self.filled:
            parts.append(f"{self.filled} value(s) filled")
        return "; ".join(parts)


_UNIT_WORDS = {
    "iso": "ISO 8601",
    "s": "epoch seconds",
    "ms": "epoch milliseconds",
    "us": "epoch microseconds",
    "ns": "epoch nanoseconds",
}


def format_ms(ms: int) -> str:
    """``90000`` as ``1m30s``."""
    if ms < 1000:
        return f"{ms}ms"
    out, rest = [], ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)


def parse_period_ms(text: str) -> int:
    """``"5m"``, ``"1h"``, ``"30s"``, ``"250ms"``, ``"1d"`` in milliseconds.

    >>> parse_period_ms("5m"), parse_period_ms("250ms")
    (300000, 250)
    """
    stripped = text.strip().lower()
    for unit in sorted(_PERIOD_UNITS_MS, key=len, reverse=True):
        number = stripped.removesuffix(unit)
        if number != stripped:
            try:
                ms = round(float(number) * _PERIOD_UNITS_MS[unit])
            except ValueError:
                break
            if ms > 0:
                return ms
            break
    raise SeriesFileError(f"--resample {text!r} is not a period: use e.g. 30s, 5m, 1h, 1d")


def detect_unit(numbers: np.ndarray) -> str:
    """The epoch unit of ``numbers`` by magnitude (see the module docstring).

    >>> [detect_unit(np.array([x])) for x in (1.7e9, 1.7e12, 1.7e15, 1.7e18)]
    ['s', 'ms', 'us', 'ns']
    """
    typical = float(np.median(np.abs(numbers))) if len(numbers) else 0.0
    for limit, unit in _UNIT_LIMITS:
        if typical < limit:
            return unit
    return "ns"


def parse_times(
    raw: Sequence[str], unit: TimeUnit, path: Path, first_line: int = 2
) -> tuple[np.ndarray, str]:
    """Epoch milliseconds (T,) of the time cells and the unit they were read in."""
    cells = [cell.strip() for cell in raw]
    if unit != "iso":
        try:
            numbers = np.array([float(cell) for cell in cells], dtype=np.float64)
        except ValueError:
            numbers = None
        if numbers is not None:
            chosen = detect_unit(numbers) if unit == "auto" else unit
            return np.round(numbers * _MS_PER_UNIT[chosen]).astype(np.int64), chosen
        if unit != "auto":
            bad = next(i for i, c in enumerate(cells) if not _is_number(c))
            raise SeriesFileError(
                f"{path}:{first_line + bad}: time {cells[bad]!r} is not a number of {unit}; "
                "drop --time-unit to read ISO 8601"
            )
    out = np.empty(len(cells), dtype=np.int64)
    for i, cell in enumerate(cells):
        try:
            parsed = datetime.fromisoformat(cell.replace("Z", "+00:00"))
        except ValueError:
            raise SeriesFileError(
                f"{path}:{first_line + i}: time {cell!r} is neither ISO 8601 nor an epoch "
                "number; name the time column with --time-column"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # naive times are taken as UTC
        out[i] = round(parsed.timestamp() * 1000)
    return out, "iso"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _pick_time_column(header: Sequence[str], given: str | None, path: Path) -> str:
    if given is not None:
        if given not in header:
            raise SeriesFileError(
                f"{path}: no column {given!r} (header: {', '.join(header)}); "
                "name the time column with --time-column"
            )
        return given
    lower = {name.lower(): name for name in header}
    for candidate in TIME_COLUMNS:
        if candidate in lower:
            return lower[candidate]
    raise SeriesFileError(
        f"{path}: no time column among {', '.join(header)}; name it with --time-column"
    )


def _parse_value(cell: str, path: Path, line: int, column: str) -> float:
    text = cell.strip()
    if text.lower() in MISSING:
        return float("nan")
    try:
        value = float(text)
    except ValueError:
        raise SeriesFileError(
            f"{path}:{line}: column {column!r}: {cell!r} is not a number; leave the cell "
            "empty for a missing value, or choose --value-columns"
        ) from None
    if not np.isfinite(value):
        raise SeriesFileError(f"{path}:{line}: column {column!r}: {cell!r} is not finite")
    return value


def read_series_file(
    path: Path | str, options: ReadOptions | None = None, *, name: str | None = None
) -> tuple[list[FileSeries], ReadReport]:
    """The series of one CSV file, read by the rules of the module docstring, and what was
    found. One series per stream (``name``, else the file's stem, for a file of one stream)."""
    path = Path(path)
    options = options or ReadOptions()
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            rows = [row for row in reader if any(cell.strip() for cell in row)]
    except OSError as exc:
        raise SeriesFileError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SeriesFileError(f"{path} is not UTF-8 text (a CSV file is expected)") from None
    if not header:
        raise SeriesFileError(f"{path} is empty: a header line and rows are expected")
    time_column = _pick_time_column(header, options.time_column, path)
    stream_column = options.stream_column
    if stream_column is None and STREAM_COLUMN in header and time_column != STREAM_COLUMN:
        stream_column = STREAM_COLUMN
    if stream_column is not None and stream_column not in header:
        raise SeriesFileError(
            f"{path}: no column {stream_column!r} (header: {', '.join(header)}); "
            "fix --stream-column"
        )
    taken = {time_column, stream_column}
    columns = list(
        options.value_columns or [h for h in header if h not in taken and h not in NOT_VALUES]
    )
    unknown = [c for c in columns if c not in header]
    if not columns or unknown:
        raise SeriesFileError(
            f"{path}: value column(s) {', '.join(unknown) or '(none)'} not in the header "
            f"({', '.join(header)}); choose them with --value-columns"
        )
    if not rows:
        raise SeriesFileError(f"{path} has a header but no rows")
    index = {h: i for i, h in enumerate(header)}
    for line, row in enumerate(rows, start=2):
        if len(row) < len(header):
            row.extend([""] * (len(header) - len(row)))
        elif len(row) > len(header):
            raise SeriesFileError(
                f"{path}:{line}: {len(row)} cells for {len(header)} columns; "
                "quote cells that hold commas"
            )
    ts_ms, unit = parse_times([row[index[time_column]] for row in rows], options.time_unit, path)
    values = np.array(
        [
            [_parse_value(row[index[c]], path, line, c) for c in columns]
            for line, row in enumerate(rows, start=2)
        ],
        dtype=np.float64,
    ).reshape(len(rows), len(columns))
    lines = np.arange(2, len(rows) + 2)
    report = ReadReport(path, time_column, unit, rows=len(rows))
    report.missing = {c: int(np.isnan(values[:, j]).sum()) for j, c in enumerate(columns)}
    if stream_column is not None:
        keys = np.array([row[index[stream_column]].strip() for row in rows], dtype=object)
        names = list(dict.fromkeys(keys.tolist()))
        parts = [(n, np.flatnonzero(keys == n)) for n in names]
    else:
        parts = [(name or path.stem, np.arange(len(rows)))]
    out = [
        _one_stream(
            stream, ts_ms[rows_of], values[rows_of], lines[rows_of], tuple(columns), options, report
        )
        for stream, rows_of in parts
    ]
    report.streams = len(out)
    return out, report


def _one_stream(
    name: str,
    ts_ms: np.ndarray,
    values: np.ndarray,
    lines: np.ndarray,
    columns: tuple[str, ...],
    options: ReadOptions,
    report: ReadReport,
) -> FileSeries:
    steps = np.diff(ts_ms)
    backwards = np.flatnonzero(steps < 0)
    if len(backwards) and options.order == "keep":
        report.unordered_rows += len(backwards)
    elif len(backwards):
        if options.order == "refuse":
            k = int(backwards[0])
            raise SeriesFileError(
                f"{report.path}:{lines[k + 1]}: {len(backwards)} row(s) of {name!r} go back in "
                f"time (first: {ts_ms[k + 1]} ms after {ts_ms[k]} ms); sort them with --sort"
            )
        order = np.argsort(ts_ms, kind="stable")
        ts_ms, values, lines = ts_ms[order], values[order], lines[order]
        report.sorted_rows += len(backwards)
        steps = np.diff(ts_ms)
    if len(steps) and not report.unordered_rows:
        period = int(np.median(steps))
        report.period_ms = max(report.period_ms, period)
        gaps = steps[steps > GAP_FACTOR * max(period, 1)]
        report.gaps += len(gaps)
        report.largest_gap_ms = max(report.largest_gap_ms, int(gaps.max()) if len(gaps) else 0)
    if options.resample_ms:
        if np.any(np.diff(ts_ms) < 0):
            raise SeriesFileError(f"{report.path}: rows out of time order cannot be resampled")
        ts_ms, values = resample(ts_ms, values, options.resample_ms)
        report.resampled_to_ms = options.resample_ms
        if options.fill == "none":  # empty periods are left out, not invented
            keep = ~np.isnan(values).any(axis=1)
            ts_ms, values = ts_ms[keep], values[keep]
    missing = np.isnan(values)
    if missing.any():
        if options.fill == "none":
            row, col = np.argwhere(missing)[0]
            counts = ", ".join(
                f"{c} {int(n)}" for c, n in zip(columns, missing.sum(axis=0), strict=True) if n
            )
            raise SeriesFileError(
                f"{report.path}:{lines[row]}: missing value in column {columns[col]!r} "
                f"({counts} missing in {name!r}); choose --fill ffill or --fill interpolate"
            )
        values = fill_missing(ts_ms, values, options.fill)
        report.filled += int(missing.sum())
    return FileSeries(name, ts_ms, values, columns)


def resample(
    ts_ms: np.ndarray, values: np.ndarray, period_ms: int
) -> tuple[np.ndarray, np.ndarray]:
    """Values on a regular grid from the first time: the mean of each period's values (NaN
    where a period has none), timestamps at the start of each period.

    >>> t, v = resample(np.array([0, 10, 35]), np.array([[1.0], [3.0], [5.0]]), 10)
    >>> t.tolist(), v[:, 0].tolist()
    ([0, 10, 20, 30], [1.0, 3.0, nan, 5.0])
    """
    if not len(ts_ms):
        return ts_ms, values
    start = int(ts_ms[0])
    slot = (ts_ms - start) // period_ms
    slots = int(slot[-1]) + 1 if len(slot) else 0
    sums = np.zeros((slots, values.shape[1]))
    counts = np.zeros((slots, values.shape[1]))
    present = ~np.isnan(values)
    np.add.at(sums, slot, np.where(present, values, 0.0))
    np.add.at(counts, slot, present)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return start + np.arange(slots, dtype=np.int64) * period_ms, means


def fill_missing(ts_ms: np.ndarray, values: np.ndarray, fill: Fill) -> np.ndarray:
    """NaN cells filled per column: ``ffill`` with the last value before (the first value for
    leading ones), ``interpolate`` linearly in time (the nearest value at the ends).

    >>> gappy = np.array([[np.nan], [1.0], [np.nan], [3.0]])
    >>> fill_missing(np.arange(4), gappy, "interpolate")[:, 0].tolist()
    [1.0, 1.0, 2.0, 3.0]
    >>> fill_missing(np.arange(3), np.array([[1.0], [np.nan], [3.0]]), "ffill")[:, 0].tolist()
    [1.0, 1.0, 3.0]
    """
    out = np.array(values, dtype=np.float64, copy=True)
    for j in range(out.shape[1]):
        column = out[:, j]
        known = ~np.isnan(column)
        if not known.any():
            raise SeriesFileError("a column has no value at all: nothing to fill it from")
        if fill == "interpolate":
            column[~known] = np.interp(ts_ms[~known], ts_ms[known], column[known])
        elif fill == "ffill":
            last = np.where(known, np.arange(len(column)), 0)
            np.maximum.accumulate(last, out=last)
            first = int(np.flatnonzero(known)[0])
            last[:first] = first
            column[:] = column[last]
        else:
            raise ValueError(f"unknown fill {fill!r}")
    return out


# --- command-line options (shared by stream-ae produce and stream-ae-train) -----------------


def add_read_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options of :class:`ReadOptions`, with the same names and help in every command."""
    parser.add_argument(
        "--time-column",
        metavar="COL",
        help=f"the time column (default: the first of {', '.join(TIME_COLUMNS)}, any case)",
    )
    parser.add_argument(
        "--value-columns",
        metavar="A,B",
        help="value column(s), comma-separated (default: every other column but label)",
    )
    parser.add_argument(
        "--stream-column",
        metavar="COL",
        help="long format: the column naming each row's stream (default: 'stream' if present)",
    )
    parser.add_argument(
        "--time-unit",
        choices=["auto", "iso", "s", "ms", "us", "ns"],
        default="auto",
        help="how times are written: ISO 8601 or epoch s/ms/us/ns (default: auto, epoch units "
        "detected by magnitude)",
    )
    parser.add_argument(
        "--sort", action="store_true", help="sort rows by time instead of refusing disorder"
    )
    parser.add_argument(
        "--resample",
        metavar="PERIOD",
        help="put each series on a regular grid of PERIOD (e.g. 5m): the mean of each period",
    )
    parser.add_argument(
        "--fill",
        choices=["none", "ffill", "interpolate"],
        default="none",
        help="missing values and empty periods: none (refuse missing values, leave periods "
        "out), ffill (last value) or interpolate (linear in time) (default: none)",
    )


def read_options_from(args: argparse.Namespace) -> ReadOptions:
    """The :class:`ReadOptions` of parsed :func:`add_read_options` options."""
    columns = getattr(args, "value_columns", None)
    return ReadOptions(
        time_column=args.time_column,
        value_columns=tuple(c.strip() for c in columns.split(",") if c.strip())
        if columns
        else None,
        stream_column=args.stream_column,
        time_unit=args.time_unit,
        order="sort" if args.sort else "refuse",
        resample_ms=parse_period_ms(args.resample) if args.resample else None,
        fill=args.fill,
    )
