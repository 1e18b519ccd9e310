"""Where training data comes from: CSV files, NAB directories and replays of a Kafka topic.

Every source ends as a list of :class:`Series`: one stream's values in time order with their
timestamps (and, from Kafka, their offsets). Windows are built later, by the worker's own
windowing (:func:`stream_ae.core.windowing.series_windows`, through :mod:`training.windows`),
never here.

- CSV (:mod:`stream_ae.io.series_files`, the reader ``produce`` uses too), one series per file
  named by its stem, or long format with a stream column: one series per distinct stream.
- NAB layout: ``<root>/<category>/<name>.csv`` with ``timestamp,value``; the stream is named
  ``<category>/<name>.csv``, the key NAB's label files use, so labels attach directly.
- A Kafka topic: every partition read from the earliest offset (or the first offset at or after
  a start time) up to the end offsets seen when the replay started, decoded with
  :func:`stream_ae.core.records.decode_event` (invalid messages are counted by reason, not
  used), and
  bounded per stream to the newest ``max_events_per_stream`` events.
- Labels of your own data: a CSV ``stream,start,end`` (:func:`load_labels`, times read as the
  CSV reader reads them), attached to the series of any source by stream name
  (:func:`attach_labels`; both: :func:`read_labels_file`, what every ``--labels FILE`` does).
  :func:`labelled_windows` gives the ranges alert quality is scored against.

Parsing errors raise :class:`DataSourceError` naming the file and line.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import re
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np

from stream_ae.core.records import decode_event, ms_to_iso, parse_ts
from stream_ae.errors import BrokerError, SchemaError, StreamAEError
from stream_ae.io.kafka import BatchConsumer, KafkaConnection, Partition
from stream_ae.io.series_files import (
    ReadOptions,
    SeriesFileError,
    TimeUnit,
    detect_unit,
    parse_times,
    read_series_file,
)

log = logging.getLogger(__name__)

# NAB files: timestamp,value with ISO times, replayed in file order (one file of the corpus has
# a row out of order; NAB scores the rows as written).
NAB_READ = ReadOptions(time_column="timestamp", value_columns=("value",), order="keep")

NO_OFFSETS = np.zeros(0, dtype=np.int64)


class DataSourceError(StreamAEError):
    """Training data cannot be read: a missing file, a bad row, an unreachable topic."""


@dataclass(frozen=True)
class Series:
    """One stream's events in time order.

    ``labels`` are labelled anomaly time ranges ``(start_ms, end_ms)``, both ends included (NAB's
    windows); ``labelled`` says the series was labelled even where it has no range (a stream a
    labels file names nowhere is normal throughout: its alerts are false ones); ``offsets`` the
    Kafka offsets of the events when the series came from a topic (empty otherwise) and
    ``partition`` their partition.
    """

    name: str
    values: np.ndarray  # (T, F) float32
    ts_ms: np.ndarray  # (T,) int64
    labels: tuple[tuple[int, int], ...] = ()
    offsets: np.ndarray = field(default_factory=lambda: NO_OFFSETS)
    partition: int = -1
    labelled: bool = False

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float32)
        if values.ndim == 1:
            values = values[:, None]
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "ts_ms", np.asarray(self.ts_ms, dtype=np.int64).reshape(-1))
        object.__setattr__(self, "offsets", np.asarray(self.offsets, dtype=np.int64).reshape(-1))
        if len(self.ts_ms) != len(values) or (
            len(self.offsets) and len(self.offsets) != len(values)
        ):
            raise ValueError(
                f"series {self.name!r}: {len(values)} values, {len(self.ts_ms)} timestamps, "
                f"{len(self.offsets)} offsets"
            )

    def __len__(self) -> int:
        return len(self.values)

    @property
    def features(self) -> int:
        return int(self.values.shape[1])

    def rows(self, part: slice) -> Series:
        """The events in ``part`` (a slice of positions), labels kept."""
        return replace(
            self,
            values=self.values[part],
            ts_ms=self.ts_ms[part],
            offsets=self.offsets[part] if len(self.offsets) else NO_OFFSETS,
        )

    def head(self, fraction: float) -> Series:
        """The first ``fraction`` of the events (NAB trains on the first 15%)."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        return self.rows(slice(0, int(len(self) * fraction)))

    def label_mask(self) -> np.ndarray:
        """True for every event inside a labelled anomaly range (T,)."""
        inside = np.zeros(len(self), dtype=bool)
        for start, end in self.labels:
            inside |= (self.ts_ms >= start) & (self.ts_ms <= end)
        return inside


def as_series(item: Series | tuple[str, np.ndarray]) -> Series:
    """A :class:`Series` from itself or a ``(name, values)`` pair (timestamps 0, 1, 2...)."""
    if isinstance(item, Series):
        return item
    name, values = item
    return Series(name, np.asarray(values), np.arange(len(values), dtype=np.int64))


# --- transformations ---------------------------------------------------------------------


def head_fraction(series: Iterable[Series], fraction: float) -> list[Series]:
    """The first ``fraction`` of every series."""
    return [s.head(fraction) for s in series]


def time_range(series: Iterable[Series], start_ms: int | None, end_ms: int | None) -> list[Series]:
    """Every series cut to events with ``start_ms <= ts <= end_ms`` (None: unbounded)."""
    out = []
    for s in series:
        keep = np.ones(len(s), dtype=bool)
        if start_ms is not None:
            keep &= s.ts_ms >= start_ms
        if end_ms is not None:
            keep &= s.ts_ms <= end_ms
        rows = np.flatnonzero(keep)
        if len(rows):
            out.append(s.rows(slice(int(rows[0]), int(rows[-1]) + 1)))
    return out


def time_span(series: Iterable[Series]) -> list[int] | None:
    """``[first, last]`` event time (ms) over ``series``; None when they hold no event. Recorded
    as ``train_span_ms`` in an artifact's metrics, so a shadow replay can count the alerts a
    model opens on its own training data (normal by construction)."""
    spans = [(int(s.ts_ms[0]), int(s.ts_ms[-1])) for s in series if len(s)]
    if not spans:
        return None
    return [min(a for a, _ in spans), max(b for _, b in spans)]


def split_at_gaps(series: Iterable[Series], max_gap_ms: int) -> list[Series]:
    """Cut each series where consecutive timestamps are more than ``max_gap_ms`` apart.

    An irregular series (a sensor that went silent for a day) otherwise yields windows that
    silently join two unrelated stretches. Segments are named ``<name>#<k>`` after the first.
    A labelled range goes to the first segment it overlaps (the segment of its start, else the
    next one), so it is scored once.
    """
    out: list[Series] = []
    for s in series:
        if not len(s):
            out.append(s)
            continue
        cuts = np.flatnonzero(np.diff(s.ts_ms) > max_gap_ms) + 1
        bounds = [0, *cuts.tolist(), len(s)]
        segments = list(itertools.pairwise(bounds))
        # The last time of each segment: a range belongs to the first segment ending at or
        # after its start (the last one for a range after the data).
        ends = [int(s.ts_ms[hi - 1]) for _, hi in segments]
        owner = [min(int(np.searchsorted(ends, a)), len(segments) - 1) for a, _ in s.labels]
        for k, (lo, hi) in enumerate(segments):
            part = s.rows(slice(lo, hi))
            labels = tuple(r for r, o in zip(s.labels, owner, strict=True) if o == k)
            out.append(replace(part, labels=labels, name=f"{s.name}#{k}" if k else s.name))
    return out


def split_recent(
    series: Iterable[Series], fraction: float, window: int
) -> tuple[list[Series], list[Series]]:
    """Split every series by time into an older part and its most recent ``fraction``.

    The recent part starts ``window - 1`` events early, so its first window ends on its first
    new event: every event of the recent part ends exactly one window, none of the older part's.
    """
    older, recent = [], []
    for s in series:
        cut = len(s) - round(len(s) * fraction)
        older.append(s.rows(slice(0, cut)))
        recent.append(s.rows(slice(max(cut - window + 1, 0), len(s))))
    return older, recent


# --- CSV and NAB ---------------------------------------------------------------------------


def _parse_time(raw: str, path: Path, line: int) -> int:
    text = raw.strip()
    try:
        return parse_ts(int(text) if re.fullmatch(r"-?\d+", text) else text)
    except SchemaError as exc:
        raise DataSourceError(f"{path}:{line}: {exc.detail}") from None


def read_csv(
    path: Path | str, options: ReadOptions | None = None, *, name: str | None = None
) -> list[Series]:
    """The series of one CSV file, by the reader every command shares
    (:func:`stream_ae.io.series_files.read_series_file`: column detection, time units, order,
    gaps and missing values); what it found is logged in one line."""
    try:
        found, report = read_series_file(path, options, name=name)
    except SeriesFileError as exc:
        raise DataSourceError(str(exc)) from None
    log.info("%s", report.summary())
    return [Series(f.name, f.values.astype(np.float32), f.ts_ms) for f in found]


def load_nab_labels(path: Path | str) -> dict[str, list[tuple[int, int]]]:
    """NAB's ``combined_windows.json``: ``<category>/<name>.csv`` -> labelled time ranges."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataSourceError(f"cannot read NAB labels {path}: {exc}") from None
    return {
        key: [(_parse_time(a, path, 0), _parse_time(b, path, 0)) for a, b in windows]
        for key, windows in raw.items()
    }


LABEL_COLUMNS = ("stream", "start", "end")
_EPOCH_UNITS = ("s", "ms", "us", "ns")


def load_labels(path: Path | str, time_unit: TimeUnit = "auto") -> dict[str, list[tuple[int, int]]]:
    """Labelled anomaly ranges of your own data: a CSV with the columns ``stream,start,end``
    (any order, other columns ignored), one range a row, both ends included.

    Times are read as the data reader reads them (:func:`stream_ae.io.series_files.parse_times`):
    ISO 8601 (naive = UTC), or epoch numbers whose unit is detected by magnitude over the whole
    file, or forced by ``time_unit`` (the data's ``--time-unit``; ISO labels are read as ISO
    whatever it says). Every mistake is a one-line :class:`DataSourceError` naming the line:
    a missing column, an empty stream, a time that is not one, a range that ends before it
    starts or overlaps another of its stream (an alert inside both would count twice). A file
    with a header and no rows is valid: no incidents, so every alert is a false one.
    """
    path = Path(path)
    try:
        # utf-8-sig: spreadsheets write a byte-order mark before the header.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise DataSourceError(f"cannot read labels {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataSourceError(f"labels {path} are not UTF-8 text (a CSV file)") from None
    numbered = [(line, r) for line, r in enumerate(rows, start=1) if any(c.strip() for c in r)]
    header = [cell.strip().lower() for cell in numbered[0][1]] if numbered else []
    missing = [c for c in LABEL_COLUMNS if c not in header]
    if missing:
        raise DataSourceError(
            f"{path}: labels need the columns stream,start,end (missing "
            f"{','.join(missing)}; found {','.join(header) or 'no header'})"
        )
    column = {name: header.index(name) for name in LABEL_COLUMNS}
    body = numbered[1:]
    for line, row in body:
        if len(row) <= max(column.values()):
            raise DataSourceError(
                f"{path}:{line}: {len(row)} cell(s); a label row needs stream, start and end"
            )
        if not row[column["stream"]].strip():
            raise DataSourceError(f"{path}:{line}: the stream is empty")
    cells = {name: [row[column[name]].strip() for _, row in body] for name in ("start", "end")}
    numbers = [n for c in (*cells["start"], *cells["end"]) if (n := _finite_number(c)) is not None]
    # One epoch unit for the file, detected over every number as the data reader detects it
    # over a column, unless the data's unit is forced.
    epoch_unit = time_unit if time_unit in _EPOCH_UNITS else detect_unit(np.array(numbers))
    starts, ends = (
        [
            _label_time(path, line, name, cell, epoch_unit)
            for (line, _), cell in zip(body, cells[name], strict=True)
        ]
        for name in ("start", "end")
    )
    ranges: dict[str, list[tuple[int, int, int]]] = {}
    for (line, row), start, end in zip(body, starts, ends, strict=True):
        if end < start:
            raise DataSourceError(
                f"{path}:{line}: the range ends ({ms_to_iso(end)}) before it starts "
                f"({ms_to_iso(start)})"
            )
        ranges.setdefault(row[column["stream"]].strip(), []).append((start, end, line))
    for stream, spans in ranges.items():
        spans.sort()
        for (_, end, line), (start, _, later) in itertools.pairwise(spans):
            if start <= end:
                first, second = sorted((line, later))
                raise DataSourceError(
                    f"{path}:{second}: {stream}'s range overlaps the one of line {first}; "
                    "merge them into one row"
                )
    return {stream: [(a, b) for a, b, _ in spans] for stream, spans in ranges.items()}


def _finite_number(cell: str) -> float | None:
    try:
        number = float(cell)
    except ValueError:
        return None
    return number if np.isfinite(number) else None


def _label_time(path: Path, line: int, name: str, cell: str, epoch_unit: str) -> int:
    """One time of the labels in epoch ms: an epoch number in ``epoch_unit``, else ISO 8601."""
    unit = cast(TimeUnit, epoch_unit if _finite_number(cell) is not None else "iso")
    try:
        times, _ = parse_times([cell], unit, path, line)
    except SeriesFileError:
        raise DataSourceError(
            f"{path}:{line}: {name} {cell!r} is neither ISO 8601 nor an epoch number"
        ) from None
    return int(times[0])


def attach_labels(
    series: Sequence[Series], labels: Mapping[str, Sequence[tuple[int, int]]], source: str
) -> list[Series]:
    """``series`` with the ranges of ``labels`` added to theirs, every one marked labelled (a
    series with no range is normal throughout).

    A label naming no series is an error (a typo would otherwise call every window normal), and
    so are labels none of which overlaps its stream's data (times in the wrong unit or zone).
    A range outside its stream's data cannot be hit: it is left out, with a warning.
    """
    names = {s.name for s in series}
    unknown = sorted(set(labels) - names)
    if unknown:
        raise DataSourceError(
            f"{source} labels stream(s) not in the data: {', '.join(unknown)} "
            f"(streams: {', '.join(sorted(names)) or 'none'})"
        )
    out, outside = [], []
    for s in series:
        first, last = (int(s.ts_ms.min()), int(s.ts_ms.max())) if len(s) else (0, -1)
        ranges = labels.get(s.name, ())
        kept = tuple((a, b) for a, b in ranges if a <= last and b >= first)
        outside += [(s.name, a, b, first, last) for a, b in ranges if (a, b) not in kept]
        out.append(replace(s, labels=(*s.labels, *kept), labelled=True))
    given = sum(len(r) for r in labels.values())
    if outside and len(outside) == given:
        name, a, b, first, last = outside[0]
        raise DataSourceError(
            f"{source}: none of the {given} labelled range(s) overlaps its stream's data (e.g. "
            f"{name} {ms_to_iso(a)}..{ms_to_iso(b)}, data {ms_to_iso(first)}..{ms_to_iso(last)})"
            "; check the labels' time unit (--time-unit) and time zone"
        )
    for name, a, b, first, last in outside:
        log.warning(
            "%s: %s %s..%s lies outside the stream's data (%s..%s): not scored",
            source,
            name,
            ms_to_iso(a),
            ms_to_iso(b),
            ms_to_iso(first),
            ms_to_iso(last),
        )
    return out


def labelled_windows(series: Iterable[Series]) -> dict[str, list[tuple[int, int]]]:
    """``{stream: its labelled ranges}`` of the labelled series (a labelled stream with no
    range is normal throughout: its alerts are false ones); what alert quality scores."""
    return {s.name: list(s.labels) for s in series if s.labels or s.labelled}


def read_labels_file(
    series: Sequence[Series], path: Path | str, time_unit: TimeUnit = "auto"
) -> list[Series]:
    """``series`` with the labels file ``path`` attached (:func:`load_labels`, then
    :func:`attach_labels`): what ``--labels FILE`` does in every command."""
    return attach_labels(series, load_labels(path, time_unit), str(path))


def read_nab(
    root: Path | str,
    *,
    categories: Sequence[str] | None = None,
    labels: Mapping[str, Sequence[tuple[int, int]]] | None = None,
) -> list[Series]:
    """Every ``<root>/<category>/<name>.csv`` (only ``categories`` when given), sorted by key,
    with the labelled ranges of ``labels`` (see :func:`load_nab_labels`) attached."""
    root = Path(root)
    if not root.is_dir():
        raise DataSourceError(f"NAB data directory {root} does not exist")
    chosen = (
        sorted(categories) if categories else sorted(p.name for p in root.iterdir() if p.is_dir())
    )
    out: list[Series] = []
    for category in chosen:
        folder = root / category
        if not folder.is_dir():
            raise DataSourceError(f"NAB category {category!r}: no directory {folder}")
        for path in sorted(folder.glob("*.csv")):
            key = f"{category}/{path.name}"
            (series,) = read_csv(path, NAB_READ, name=key)
            out.append(
                replace(
                    series,
                    labels=tuple((labels or {}).get(key, ())),
                    labelled=labels is not None and key in labels,
                )
            )
    if not out:
        raise DataSourceError(f"no CSV files under {root} (categories: {chosen})")
    return out


# --- Kafka ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayStats:
    """What a topic replay read: messages per partition, invalid ones by reason."""

    messages: int
    used: int
    invalid: dict[str, int]
    dropped_by_bound: int
    out_of_range: int
    seconds: float


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration_s(text: str) -> float:
    """``"6h"``, ``"90s"``, ``"1d12h"``, ``"250ms"`` in seconds; :class:`ValueError` otherwise."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != compact.replace(" ", ""):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 6h, 1d, 1d12h)")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def parse_time_bound(text: str | None, now_ms: int | None = None) -> int | None:
    """A replay bound: ``earliest``/``latest``/empty (None), ISO-8601, epoch ms, or a duration
    before now (``-6h`` or ``6h``)."""
    if text is None or text.strip().lower() in ("", "earliest", "latest", "now"):
        return None
    text = text.strip()
    if re.fullmatch(r"\d{10,}", text):
        return int(text)
    if _DURATION.match(text.lstrip("-")):
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        return now - int(parse_duration_s(text.lstrip("-")) * 1000)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use earliest, an ISO-8601 time, epoch ms or e.g. -6h)"
        ) from None
    return int(parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp() * 1000)


@dataclass(frozen=True)
class ReplayWindow:
    """The time range a replay keeps (``refit``, ``train --topic``), in event time: the last
    ``since_ms`` before the newest event read (so a topic of old data, a back-fill, trains
    exactly as a live one), or the absolute bounds ``start_ms``..``end_ms``. Never the wall
    clock."""

    since_ms: int | None = None
    start_ms: int | None = None
    end_ms: int | None = None

    @classmethod
    def from_bounds(cls, start: str | None, end: str | None) -> ReplayWindow:
        """From ``--from/--to``, where ``--from`` may also be a duration (``6h``, ``-6h``):
        that long before the newest event."""
        text = (start or "").strip().lstrip("-")
        try:
            since = text if text and parse_duration_s(text) else None
        except ValueError:
            since = None
        return cls.from_options(since, None if since else start, end)

    @classmethod
    def from_options(cls, since: str | None, start: str | None, end: str | None) -> ReplayWindow:
        """From ``--since DURATION`` or ``--from/--to`` (ISO-8601 or epoch ms); absolute
        bounds win over ``--since``."""
        start_ms, end_ms = parse_absolute_time(start), parse_absolute_time(end)
        if start_ms is not None:
            return cls(None, start_ms, end_ms)
        since_ms = int(parse_duration_s(since) * 1000) if since else None
        return cls(since_ms, None, end_ms)

    def describe(self) -> str:
        if self.since_ms is not None:
            return f"the last {self.since_ms / 3_600_000:g}h before the newest event"
        return f"{ms_to_iso(self.start_ms) if self.start_ms is not None else 'the start'} to " + (
            ms_to_iso(self.end_ms) if self.end_ms is not None else "the end"
        )

    def apply(self, series: Sequence[Series], stats: ReplayStats) -> list[Series]:
        """The replayed ``series`` cut to this range; :class:`DataSourceError` with the replay's
        counts when nothing is left."""
        series = [s for s in series if len(s)]
        if series and self.since_ms is not None:
            newest = max(int(s.ts_ms[-1]) for s in series)
            series = time_range(series, newest - self.since_ms, self.end_ms)
            log.info("refit range: %s (newest event %s)", self.describe(), ms_to_iso(newest))
        if not series:
            invalid = ", ".join(f"{n} {why}" for why, n in sorted(stats.invalid.items()))
            raise DataSourceError(
                f"no events to train on in {self.describe()}: the replay read {stats.messages} "
                f"messages, {stats.used} usable, {stats.out_of_range} outside the bounds, "
                f"invalid: {invalid or 'none'}"
            )
        return series


def parse_absolute_time(text: str | None) -> int | None:
    """An absolute bound: ISO-8601 or epoch ms (durations are relative: see ``--since``)."""
    if text is None or not text.strip():
        return None
    if re.fullmatch(r"-?\d+", text.strip()):
        return int(text.strip())
    if re.fullmatch(r"-?\d+(\.\d+)?\s*(ms|s|m|h|d|w).*", text.strip()):
        raise ValueError(
            f"--from/--to take an ISO-8601 time or epoch ms, not {text!r}: use --since"
        )
    return parse_time_bound(text)


def replay_topic(
    bootstrap_servers: str,
    topic: str,
    *,
    feature_names: Sequence[str] = ("value",),
    start_ms: int | None = None,
    end_ms: int | None = None,
    max_events_per_stream: int | None = None,
    max_message_bytes: int = 65_536,
    timeout_s: float = 60.0,
    consumer_config: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> tuple[list[Series], ReplayStats]:
    """Read ``topic`` from ``start_ms`` (None: the earliest offset) to its end as of the start
    of the replay, and return one series per stream.

    Events whose own timestamp lies outside ``[start_ms, end_ms]`` are left out (the seek uses
    the broker's record timestamps, which producers may set differently). No consumer group is
    joined and nothing is committed: a replay never disturbs the workers' offsets.
    """
    started = time.monotonic()
    bound = max_events_per_stream or None
    # Per stream: (partition, offset, ts, values), the newest `bound` kept.
    events: dict[str, deque[tuple[int, int, int, np.ndarray]]] = defaultdict(
        lambda: deque(maxlen=bound)
    )
    invalid: Counter[str] = Counter()
    counts = {"messages": 0, "out_of_range": 0}

    def handle(partition: int, record: Any) -> None:
        counts["messages"] += 1
        try:
            event = decode_event(
                record.key,
                record.value,
                topic=topic,
                partition=partition,
                offset=record.offset,
                feature_names=feature_names,
                max_bytes=max_message_bytes,
            )
        except SchemaError as exc:
            invalid[exc.reason] += 1
            return
        if (start_ms is not None and event.ts_ms < start_ms) or (
            end_ms is not None and event.ts_ms > end_ms
        ):
            counts["out_of_range"] += 1
            return
        events[event.stream].append((partition, event.offset, event.ts_ms, event.values))

    read_topic(
        bootstrap_servers,
        topic,
        handle,
        start_ms=start_ms,
        timeout_s=timeout_s,
        consumer_config=consumer_config,
        progress=progress,
    )
    series = [_events_to_series(stream, list(rows)) for stream, rows in sorted(events.items())]
    used = sum(len(s) for s in series)
    messages = counts["messages"]
    stats = ReplayStats(
        messages=messages,
        used=used,
        invalid=dict(invalid),
        dropped_by_bound=messages - sum(invalid.values()) - counts["out_of_range"] - used,
        out_of_range=counts["out_of_range"],
        seconds=time.monotonic() - started,
    )
    log.info("replayed %s: %s", topic, stats)
    return series, stats


def read_topic(
    bootstrap_servers: str,
    topic: str,
    handle: Callable[[int, Any], None],
    *,
    start_ms: int | None = None,
    timeout_s: float = 60.0,
    consumer_config: Mapping[str, Any] | None = None,
    progress: bool = False,
    client_id: str = "stream-ae-train",
) -> None:
    """Call ``handle(partition, record)`` for every record of ``topic`` from ``start_ms`` (None:
    the earliest offset) to the end of each partition as of the replay's start, partition by
    partition in offset order. ``consumer_config``: the security options
    (:func:`stream_ae.io.kafka.security_config`).

    The end of a partition is the larger of its end offset and the high watermark of the first
    fetch from it, frozen there so a busy topic cannot keep a replay going forever. (Some
    brokers, Tansu among them, answer the end-offset request with the base offset of the last
    record batch + 1; the fetch's high watermark is right.) A partition is done when the
    records actually returned reach that end.
    """
    started = time.monotonic()
    connection = KafkaConnection(
        bootstrap_servers, client_id=client_id, security=dict(consumer_config or {})
    )
    consumer = connection.consumer(group_id=None, fetch_max_wait_ms=100)
    read = 0
    try:
        partitions = _wait_for_partitions(consumer, topic, deadline=started + timeout_s)
        tps = [Partition(topic, p) for p in partitions]
        consumer.assign(tps)
        end = consumer.end_offsets(tps)
        begin = consumer.beginning_offsets(tps)
        if start_ms is None:
            consumer.seek_to_beginning(tps)
            next_offset = dict(begin)
        else:
            found = consumer.offsets_for_times({tp: start_ms for tp in tps})
            next_offset = {tp: _or(found[tp], end[tp]) for tp in tps}
            for tp in tps:
                consumer.seek(tp, next_offset[tp])
        watermark_seen: set[Partition] = set()
        bar = _progress_bar(sum(max(end[tp] - next_offset[tp], 0) for tp in tps), topic, progress)
        pending = set(tps)
        while pending:
            if time.monotonic() - started > timeout_s:
                raise BrokerError(
                    f"reading {topic} did not reach the end of partition(s) "
                    f"{sorted(tp.partition for tp in pending)} within {timeout_s:.0f}s "
                    f"({read} records read)"
                )
            records = consumer.poll_batch(timeout_ms=500, max_records=5000)
            for tp in pending - watermark_seen:
                watermark = consumer.high_watermark(tp)
                if watermark is not None:
                    end[tp] = max(end[tp], watermark)
                    watermark_seen.add(tp)
            for record in records:
                tp = Partition(record.topic, record.partition)
                if record.offset >= end[tp]:
                    continue  # newer than the replay's view of the topic
                handle(record.partition, record)
                next_offset[tp] = record.offset + 1
                read += 1
            bar.update(len(records))
            for tp in pending:  # past a gap in the offsets, the client's position is ahead
                next_offset[tp] = max(next_offset[tp], consumer.position(tp, timeout_ms=0) or 0)
            pending = {
                tp for tp in pending if tp not in watermark_seen or next_offset[tp] < end[tp]
            }
        bar.close()
    except BrokerError as exc:
        raise BrokerError(
            f"reading {topic} from {bootstrap_servers} failed: {exc}", retriable=exc.retriable
        ) from None
    finally:
        consumer.close()


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _wait_for_partitions(consumer: BatchConsumer, topic: str, deadline: float) -> list[int]:
    while True:
        partitions = consumer.partitions_of(topic)
        if partitions:
            return partitions
        if time.monotonic() > deadline:
            raise DataSourceError(f"topic {topic!r} does not exist (or has no partitions)")
        time.sleep(0.2)


def _events_to_series(stream: str, rows: list[tuple[int, int, int, np.ndarray]]) -> Series:
    # A stream's events live in one partition (they share a key); should a re-keying have
    # spread them, partition-then-offset order is still the order the worker applied them in.
    rows.sort(key=lambda row: (row[0], row[1]))
    partitions = {row[0] for row in rows}
    return Series(
        stream,
        np.stack([row[3] for row in rows]),
        np.array([row[2] for row in rows], dtype=np.int64),
        offsets=np.array([row[1] for row in rows], dtype=np.int64),
        partition=partitions.pop() if len(partitions) == 1 else -1,
    )


class _NoBar:
    def update(self, n: int) -> None:
        del n

    def close(self) -> None:
        pass


def _progress_bar(total: int, topic: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=f"replay {topic}", unit="msg", leave=False)


def read_alerts(
    bootstrap_servers: str,
    topic: str,
    *,
    model_name: str | None = None,
    start_ms: int | None = None,
    timeout_s: float = 60.0,
    consumer_config: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every alert on the alerts topic (of ``model_name`` when given), in partition and
    offset order. Alerts are read raw (JSON objects); records that are not alerts are
    skipped."""
    alerts: list[dict[str, Any]] = []

    def handle(partition: int, record: Any) -> None:
        del partition
        try:
            body = json.loads(record.value)
        except (TypeError, ValueError):
            return
        if not isinstance(body, dict) or "stream" not in body or "window" not in body:
            return
        if model_name and body.get("model", {}).get("name") != model_name:
            return
        alerts.append(body)

    read_topic(
        bootstrap_servers,
        topic,
        handle,
        start_ms=start_ms,
        timeout_s=timeout_s,
        consumer_config=consumer_config,
        client_id="stream-ae-train-alerts",
    )
    return alerts


def alert_spans(alerts: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    """Per stream, the time spans alerts covered: from the window that opened an alert to the
    end of the window that resolved it (open to the end of time if it never resolved).

    Windows in between raised no alert of their own (the policy emits on transitions only), but
    they were above the threshold: they are anomalous data too.
    """
    spans: dict[str, list[tuple[int, int]]] = defaultdict(list)
    opened: dict[str, int] = {}
    ordered = sorted(alerts, key=lambda a: parse_ts(a["window"]["end_ts"]))
    for alert in ordered:
        stream = str(alert["stream"])
        start = parse_ts(alert["window"]["start_ts"])
        end = parse_ts(alert["window"]["end_ts"])
        if alert.get("status") == "open":
            opened.setdefault(stream, start)
        elif stream in opened:
            spans[stream].append((opened.pop(stream), end))
        else:
            spans[stream].append((start, end))  # resolved, its opening not in the range read
    for stream, start in opened.items():
        spans[stream].append((start, np.iinfo(np.int64).max))
    return dict(spans)


def describe(series: Sequence[Series]) -> str:
    """One line about a list of series, for logs."""
    if not series:
        return "no series"
    lengths = [len(s) for s in series]
    first = min(int(s.ts_ms[0]) for s in series if len(s))
    last = max(int(s.ts_ms[-1]) for s in series if len(s))
    span = timedelta(milliseconds=last - first)
    return (
        f"{len(series)} series, {sum(lengths)} events ({min(lengths)}..{max(lengths)} per series), "
        f"{series[0].features} feature(s), spanning {span}"
    )
