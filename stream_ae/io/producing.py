"""Sending events to the input topic: synthetic streams or CSV replays (read by
:mod:`stream_ae.io.series_files`), interleaved in time.

Used by ``stream-ae produce``, the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from stream_ae.core.records import encode_event
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
