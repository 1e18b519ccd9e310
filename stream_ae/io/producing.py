"""Sending events to the input topic: synthetic streams or CSV replays, interleaved in time.

Used by ``stream-ae produce``, the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stream_ae.core.records import encode_event, parse_ts
from stream_ae.core.synthetic import SyntheticStream
from stream_ae.io.kafka import Producer


def interleave(
    streams: Sequence[SyntheticStream], start: int = 0
) -> Iterator[tuple[str, int, list[float]]]:
    """(stream, ts_ms, values) of all streams from step ``start`` on, in time order."""
    steps = max(len(s.values) for s in streams)
    for k in range(start, steps):
        for s in streams:
            if k < len(s.values):
                yield s.name, int(s.ts_ms[k]), [float(v) for v in s.values[k]]


def read_csv_series(
    path: Path, value_columns: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A CSV with a ``timestamp`` (or ``ts``) column and numeric value columns.

    Returns (ts_ms (T,), values (T, F), feature names). Rows must be in time order.
    """
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        fieldnames = list(reader.fieldnames or [])
        ts_col = next((c for c in ("timestamp", "ts", "time") if c in fieldnames), None)
        if ts_col is None:
            raise ValueError(f"{path}: no timestamp/ts/time column in {fieldnames}")
        names = list(
            value_columns or [c for c in fieldnames if c not in (ts_col, "stream", "label")]
        )
        ts, rows = [], []
        for line_no, row in enumerate(reader, start=2):
            try:
                raw_ts = row[ts_col]
                ts.append(
                    parse_ts(float(raw_ts) if raw_ts.replace(".", "", 1).isdigit() else raw_ts)
                )
                rows.append([float(row[c]) for c in names])
            except (ValueError, KeyError, Exception) as exc:
                raise ValueError(f"{path}:{line_no}: {exc}") from None
    return np.asarray(ts, dtype=np.int64), np.asarray(rows, dtype=np.float32), names


def send_events(
    producer: Producer,
    topic: str,
    events: Iterator[tuple[str, int, list[float]]],
    *,
    rate_per_s: float | None = None,
    progress: Any = None,
    value_as_scalar: bool = True,
) -> int:
    """Send events keyed by stream; ``rate_per_s`` paces them (None = as fast as possible)."""
    sent = 0
    started = time.perf_counter()
    for stream, ts_ms, values in events:
        value: Any = values[0] if value_as_scalar and len(values) == 1 else values
        producer.send(topic, key=stream.encode(), value=encode_event(stream, ts_ms, value))
        sent += 1
        if progress is not None:
            progress.update(1)
        if rate_per_s:
            ahead = sent / rate_per_s - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush(120.0)
    return sent
