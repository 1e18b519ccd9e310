"""``stream-ae produce`` and ``stream-ae alerts`` on the real broker, through the Kafka edge:
what one sends (with the fast client, installed here) the topic holds, and the alert follower
prints each alert once, replays de-duplicated."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import orjson
import pytest

from stream_ae.cli.app import main
from stream_ae_dev.devstack import BrokerProcess
from tests.support.kafka_clients import read_records
from tests.support.kafka_topics import produce

pytestmark = pytest.mark.integration


def test_produce_sends_every_synthetic_event_with_the_fast_client(
    broker: BrokerProcess,
    topic_factory: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = topic_factory(2, prefix="produce")
    monkeypatch.setenv("STREAM_AE_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    assert main(["produce", "--synthetic", "3", "--steps", "400", "--topic", topic]) == 0
    assert f"sent 1200 events of 3 streams to {topic}" in capsys.readouterr().out
    records = read_records(broker.bootstrap_servers, topic)
    per_stream = Counter(orjson.loads(r.value)["stream"] for r in records)
    assert len(records) == 1200 and sorted(per_stream.values()) == [400, 400, 400]
    assert all(r.key.decode() == orjson.loads(r.value)["stream"] for r in records)


def _alert(alert_id: str) -> bytes:
    return orjson.dumps({"alert_id": alert_id, "stream": "host-0", "status": "open"})


def test_alerts_prints_each_alert_once(
    broker: BrokerProcess,
    topic_factory: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = topic_factory(2, prefix="alerts")
    alerts = [(b"host-0", _alert(f"a{i}")) for i in range(20)]
    produce(broker.bootstrap_servers, topic, [*alerts, *alerts[:5]])  # 5 replayed
    monkeypatch.setenv("STREAM_AE_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    monkeypatch.setenv("STREAM_AE_ALERTS_TOPIC", topic)
    code = main(["alerts", "--from-beginning", "--json", "--idle-timeout", "3"])
    assert code == 0
    printed = [orjson.loads(line)["alert_id"] for line in capsys.readouterr().out.splitlines()]
    assert sorted(printed) == sorted(f"a{i}" for i in range(20))
