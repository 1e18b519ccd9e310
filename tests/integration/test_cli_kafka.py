"""``stream-ae produce`` on the real broker, through the Kafka edge: what one sends (with the
fast client, installed here) the topic holds. (``stream-ae alerts``: test_alerts_follower.py.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import orjson
import pytest

from stream_ae.cli.app import main
from stream_ae_dev.devstack import BrokerProcess
from tests.support.kafka_clients import read_records

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
