"""``stream-ae dlq show``, ``stream-ae dlq replay`` and ``stream-ae tail`` on the real broker:
dead letters listed with reason and source, replayed (fixed) to their input topic once however
often the replay runs, and any topic peeked at as a table or JSON lines."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from stream_ae.cli.app import main
from stream_ae.core.records import decode_event, encode_event
from stream_ae.errors import SchemaError
from stream_ae.io.kafka import ConsumedRecord, KafkaConnection
from stream_ae.worker.dead_letters import REPLAYED_HEADER, build_dead_letter, dead_letter_id
from stream_ae_dev.devstack import BrokerProcess
from tests.support.kafka_clients import read_records
from tests.support.kafka_topics import produce

pytestmark = pytest.mark.integration

TS = 1_700_000_000_000
FEATURES = ("value",)


def _dead_letter_input(bootstrap: str, input_topic: str, dlq_topic: str) -> list[ConsumedRecord]:
    """Bad messages on the input topic, dead-lettered as the worker does it (same reasons,
    headers and ids)."""
    bad = [
        (b"host-0", orjson.dumps({"stream": "host-0", "ts": TS + i, "temp": 20.0 + i}))
        for i in range(3)
    ]
    bad.append((b"host-1", b"not json"))
    good = [(b"host-2", encode_event("host-2", TS, 1.0))]
    sent = produce(bootstrap, input_topic, [*good, *bad])
    records = [ConsumedRecord(s.topic, s.partition, s.offset, s.key, s.value) for s in sent[1:]]
    producer = KafkaConnection(bootstrap).producer()
    for record in records:
        try:
            decode_event(
                record.key,
                record.value,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                feature_names=FEATURES,
                max_bytes=10_000,
            )
        except SchemaError as exc:
            letter = build_dead_letter(record, exc.reason, exc.detail)
            producer.send(dlq_topic, letter.value, key=letter.key, headers=letter.headers)
    producer.flush(30)
    producer.close()
    return records


def test_dlq_show_and_an_idempotent_fixed_replay(
    broker: BrokerProcess,
    topic_factory: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    input_topic, dlq_topic = topic_factory(1, prefix="in"), topic_factory(1, prefix="dlq")
    records = _dead_letter_input(broker.bootstrap_servers, input_topic, dlq_topic)
    monkeypatch.setenv("STREAM_AE_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    monkeypatch.setenv("STREAM_AE_DLQ_TOPIC", dlq_topic)

    assert main(["dlq", "show", "--json"]) == 0
    shown = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["reason"] for s in shown] == ["bad_value"] * 3 + ["not_json"]
    assert [s["source"] for s in shown] == [
        {"topic": input_topic, "partition": 0, "offset": r.offset} for r in records
    ]
    assert [s["dead_letter_id"] for s in shown] == [
        dead_letter_id(input_topic, 0, r.offset) for r in records
    ]
    assert "'value' must be a number" in shown[0]["detail"]
    assert main(["dlq", "show", "--reason", "not_json"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and table[1].startswith("not_json") and "not json" in table[1]
    assert table[-1] == "1 dead letter(s)"

    assert main(["dlq", "replay"]) == 2  # a configuration error: one line naming the fix
    assert "--all" in capsys.readouterr().err
    replay = ["dlq", "replay", "--reason", "bad_value", "--rename", "temp=value"]
    assert main([*replay, "--dry-run"]) == 0
    assert "would replay 3 dead letter(s)" in capsys.readouterr().out
    assert len(read_records(broker.bootstrap_servers, input_topic)) == 5  # nothing sent

    assert main(replay) == 0
    assert "replayed 3 dead letter(s); skipped 0" in capsys.readouterr().out
    assert main([*replay, "--offset", str(records[0].offset)]) == 0  # again: nothing new
    assert "replayed 0 dead letter(s); skipped 1" in capsys.readouterr().out
    assert main(replay) == 0
    assert "replayed 0 dead letter(s); skipped 3" in capsys.readouterr().out

    replayed = read_records(broker.bootstrap_servers, input_topic)[5:]
    assert len(replayed) == 3
    for record, original in zip(replayed, records, strict=False):
        assert dict(record.headers)[REPLAYED_HEADER].decode() == dead_letter_id(
            input_topic, 0, original.offset
        )
        event = decode_event(
            record.key,
            record.value,
            topic=input_topic,
            partition=0,
            offset=record.offset,
            feature_names=FEATURES,
            max_bytes=10_000,
        )  # fixed: the worker takes it now
        assert event.stream == "host-0" and event.values[0] == orjson.loads(original.value)["temp"]


def test_tail_peeks_at_a_topic(
    broker: BrokerProcess,
    topic_factory: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = topic_factory(1, prefix="tail")
    messages = [(b"host-0", encode_event("host-0", TS + i, float(i))) for i in range(5)]
    produce(broker.bootstrap_servers, topic, [*messages, (None, b"plain text")])
    monkeypatch.setenv("STREAM_AE_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    assert main(["tail", topic, "--from-beginning", "--json", "--idle-timeout", "3"]) == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["offset"] for line in lines] == list(range(6))
    assert lines[2]["key"] == "host-0" and lines[2]["value"]["value"] == 2.0
    assert lines[5] == {
        "topic": topic,
        "partition": 0,
        "offset": 5,
        "key": None,
        "value": "plain text",
        "headers": {},
    }
    assert main(["tail", topic, "--from-beginning", "--max", "2", "--idle-timeout", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and table[1].split()[:3] == ["0", "0", "host-0"]
    assert main(["tail", "no-such-topic-here", "--idle-timeout", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "does not exist" in error
