"""The dead-letter topic: every bad input recorded once, whatever its size, and never a stall.

- **Always recorded.** A dead letter holds the original key and bytes with the reason and the
  source position in headers. One too large to send whole (an input near the broker's limit
  plus our headers) is cut to fit, with a ``stream-ae.truncated`` header giving the original
  size; should the producer still refuse it, the reference and reason alone are sent.
- **Exactly once in effect.** Each dead letter carries a deterministic id (a hash of its source
  topic, partition and offset) so a reader can drop the duplicates a crash may leave; and within
  a worker's life, the offsets whose dead letters were acknowledged are remembered per
  partition, so a batch retried after a Redis or broker outage neither re-sends nor re-counts
  them.
- **Seen in the log.** Each dead letter is logged at WARNING with its reason and source, at
  most :data:`LOG_PER_MINUTE` a minute (a flood of bad input must not flood the log); the next line
  logged says how many were left out.

>>> dead_letter_id("metrics", 0, 42)
'c0720a76c34e9dead7fc2577b9d3b45c'
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from stream_ae.core.records import dead_letter_headers
from stream_ae.errors import MessageTooLargeError, SchemaError
from stream_ae.io.kafka import Partition, Producer, Record
from stream_ae.logs import fields
from stream_ae.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

ID_HEADER = "stream-ae.dead-letter-id"
# On a dead letter re-sent to its input topic (``stream-ae dlq replay``): the dead letter's id,
# so a second replay finds it there and skips it.
REPLAYED_HEADER = "stream-ae.replayed-from"
TRUNCATED_HEADER = "stream-ae.truncated"
# What one dead letter (key, value and headers) may weigh. Under Kafka's default broker limit
# (message.max.bytes = 1,048,588 B) and the producer's default request limit (1 MiB), with room
# for the record and batch framing.
MAX_DEAD_LETTER_BYTES = 1_000_000
# Room kept for the truncation marker header.
_MARKER_BYTES = 64
# Dead letters logged per minute at most (the metric counts every one).
LOG_PER_MINUTE = 10


def dead_letter_id(topic: str, partition: int, offset: int) -> str:
    """The same id for the same input message, whichever worker dead-letters it, how often."""
    return hashlib.sha256(f"{topic}/{partition}/{offset}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def build_dead_letter(
    message: Record, reason: str, detail: str, max_bytes: int = MAX_DEAD_LETTER_BYTES
) -> DeadLetter:
    """The dead letter of ``message``: cut to ``max_bytes`` with a marker when too large."""
    source = (message.topic, message.partition, message.offset)
    headers = [
        *dead_letter_headers(reason, detail, *source),
        (ID_HEADER, dead_letter_id(*source).encode()),
    ]
    value = message.value
    size = (
        len(message.key or b"")
        + len(value or b"")
        + sum(len(name) + len(content) for name, content in headers)
    )
    if size > max_bytes and value is not None:
        keep = max(len(value) - (size - max_bytes) - _MARKER_BYTES, 0)
        headers.append((TRUNCATED_HEADER, str(len(value)).encode()))
        value = value[:keep]
    return DeadLetter(message.key, value, headers)


class LogBudget:
    """At most ``per_minute`` log lines in any minute (fixed one-minute windows), counting the
    ones it refused: :meth:`take` gives None for a line to leave out, else how many were left
    out since the last line taken.

    >>> now = [0.0]
    >>> budget = LogBudget(2, clock=lambda: now[0])
    >>> [budget.take() for _ in range(4)]
    [0, 0, None, None]
    >>> now[0] = 60.0
    >>> budget.take(), budget.take()
    (2, 0)
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._window_start = -float("inf")
        self._taken = 0
        self._suppressed = 0

    def take(self) -> int | None:
        now = self.clock()
        if now - self._window_start >= 60.0:
            self._window_start, self._taken = now, 0
        if self._taken >= self.per_minute:
            self._suppressed += 1
            return None
        self._taken += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


class DeadLetterQueue:
    """Sends dead letters to ``topic`` and counts them, each input offset once; logs them at
    WARNING within ``log_budget`` (default: :data:`LOG_PER_MINUTE` a minute)."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        metrics: WorkerMetrics,
        max_bytes: int = MAX_DEAD_LETTER_BYTES,
        log_budget: LogBudget | None = None,
    ) -> None:
        self.producer = producer
        self.topic = topic
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.log_budget = log_budget or LogBudget(LOG_PER_MINUTE)
        # Per partition, the offsets [first, last] of the batches whose dead letters were all
        # acknowledged; a retried batch re-reads the same offsets and finds them here.
        self._done: dict[Partition, tuple[int, int]] = {}
        self._unflushed: Counter[str] = Counter()

    def already_sent(self, message: Record) -> bool:
        done = self._done.get(Partition(message.topic, message.partition))
        return done is not None and done[0] <= message.offset <= done[1]

    def send(self, message: Record, error: SchemaError) -> None:
        """Queue ``message``'s dead letter unless an earlier try of this batch delivered it."""
        if self.already_sent(message):
            return
        letter = build_dead_letter(message, error.reason, error.detail, self.max_bytes)
        try:
            self.producer.send(self.topic, letter.value, key=letter.key, headers=letter.headers)
        except MessageTooLargeError as exc:
            # The producer's limit is below ours: the reference and the reason alone.
            log.warning(
                "dead letter too large even cut; sending its reference alone",
                extra=fields(offset=message.offset, partition=message.partition, error=str(exc)),
            )
            size = len(message.value or b"")
            headers = [h for h in letter.headers if h[0] != TRUNCATED_HEADER]
            headers.append((TRUNCATED_HEADER, str(size).encode()))
            self.producer.send(self.topic, None, key=None, headers=headers)
        self._unflushed[error.reason] += 1
        self._log(message, error)

    def _log(self, message: Record, error: SchemaError) -> None:
        suppressed = self.log_budget.take()
        if suppressed is None:
            return
        log.warning(
            "dead-lettered a message: %s",
            error.reason,
            extra=fields(
                reason=error.reason,
                detail=error.detail[:200],
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                dead_letter_id=dead_letter_id(message.topic, message.partition, message.offset),
                # Dead letters not logged since the last line (over the per-minute budget).
                suppressed=suppressed,
            ),
        )

    def flush(self, batch: Mapping[Partition, tuple[int, int]], timeout_s: float = 30.0) -> None:
        """Wait for this batch's dead letters; then remember its offsets ``batch`` (first and
        last per partition) and count the new ones. Raises :class:`BrokerError` if any was not
        acknowledged (nothing is remembered then: the retry sends them again, same ids)."""
        if self._unflushed:
            self.producer.flush(timeout_s)
            for reason, count in self._unflushed.items():
                self.metrics.dlq.labels(reason=reason).inc(count)
        self._unflushed.clear()
        for partition, (first, last) in batch.items():
            done = self._done.get(partition)
            if done is not None and first <= done[1] + 1 and last >= done[0] - 1:
                self._done[partition] = (min(first, done[0]), max(last, done[1]))
            else:
                self._done[partition] = (first, last)

    def discard(self) -> None:
        """The batch failed before its dead letters were acknowledged."""
        self._unflushed.clear()


_topic, _partition, _offset = (attrgetter(name) for name in ("topic", "partition", "offset"))


def offset_spans(messages: Sequence[Record]) -> dict[Partition, tuple[int, int]]:
    """The first and last offset of ``messages`` per partition, partitions in order of first
    appearance.

    Called on every poll batch: the attributes are read with C loops (``map`` over
    ``attrgetter``) and grouped with array operations, no Python work per message.

    >>> from stream_ae.io.kafka import ConsumedRecord
    >>> offset_spans([ConsumedRecord("m", 1, 7, None, None), ConsumedRecord("m", 1, 5, None, None)])
    {Partition(topic='m', partition=1): (5, 7)}
    """
    n = len(messages)
    if n == 0:
        return {}
    topics = list(map(_topic, messages))
    partitions = np.fromiter(map(_partition, messages), dtype=np.int64, count=n)
    offsets = np.fromiter(map(_offset, messages), dtype=np.int64, count=n)
    names = list(dict.fromkeys(topics))
    low = int(partitions.min())
    # One code per (topic, partition): partitions are int32, so the product stays in int64.
    group = partitions - low
    if len(names) > 1:
        number = {name: i for i, name in enumerate(names)}
        topic_codes = np.fromiter(map(number.__getitem__, topics), dtype=np.int64, count=n)
        group = group + topic_codes * (int(group.max()) + 1)
    codes, first_seen, inverse = np.unique(group, return_index=True, return_inverse=True)
    by_group = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[by_group], np.arange(len(codes)))
    grouped = offsets[by_group]
    first = np.minimum.reduceat(grouped, starts).tolist()
    last = np.maximum.reduceat(grouped, starts).tolist()
    spans: dict[Partition, tuple[int, int]] = {}
    for g in np.argsort(first_seen).tolist():
        row = int(first_seen[g])
        spans[Partition(topics[row], int(partitions[row]))] = (first[g], last[g])
    return spans
