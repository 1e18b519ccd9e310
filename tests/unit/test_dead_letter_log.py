"""Every dead letter is logged at WARNING with its reason and source, at most a budget a
minute; the next line logged says how many were left out (the metric counts every one)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from stream_ae.errors import SchemaError
from stream_ae.io.kafka import ConsumedRecord
from stream_ae.worker.dead_letters import DeadLetterQueue, LogBudget, dead_letter_id
from stream_ae.worker.metrics import WorkerMetrics


class RecordingProducer:
    """The producer side of the Kafka edge, kept in memory: what was sent, acknowledged."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        self.sent.append((topic, value))

    def flush(self, timeout_s: float) -> int:
        return len(self.sent)

    def discard(self) -> None:
        pass

    def close(self, timeout_s: float = 10.0) -> None:
        pass


def test_dead_letters_are_logged_within_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    producer = RecordingProducer()
    metrics = WorkerMetrics()
    queue = DeadLetterQueue(
        producer, "dlq", metrics, log_budget=LogBudget(10, clock=lambda: now[0])
    )
    messages = [ConsumedRecord("in", 0, offset, b"k", b"bad") for offset in range(25)]
    with caplog.at_level(logging.WARNING, logger="stream_ae.worker.dead_letters"):
        for m in messages:
            queue.send(m, SchemaError("not_json", "unexpected character"))
        queue.flush({})
        now[0] += 61.0
        queue.send(ConsumedRecord("in", 1, 7, b"k", b"[]"), SchemaError("not_object", "got list"))
    assert len(producer.sent) == 26  # every one sent
    assert metrics.registry.get_sample_value("stream_ae_dlq_total", {"reason": "not_json"}) == 25
    lines = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 11
    first = lines[0].fields  # type: ignore[attr-defined]
    assert first == {
        "reason": "not_json",
        "detail": "unexpected character",
        "topic": "in",
        "partition": 0,
        "offset": 0,
        "dead_letter_id": dead_letter_id("in", 0, 0),
        "suppressed": 0,
    }
    last = lines[-1].fields  # type: ignore[attr-defined]
    assert (last["reason"], last["partition"], last["suppressed"]) == ("not_object", 1, 15)


def test_the_budget_renews_each_minute() -> None:
    now = [0.0]
    budget = LogBudget(3, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] = 59.9
    assert budget.take() is None
    now[0] = 60.0
    assert [budget.take() for _ in range(4)] == [3, 0, 0, None]
