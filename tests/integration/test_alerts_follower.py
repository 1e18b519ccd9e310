"""The typed alerts follower and ``stream-ae alerts`` on the real broker: each alert once
(replays dropped), a message that is no alert skipped, a resolved alert paired with its open
one."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from stream_ae.alerts import follow
from stream_ae.cli.app import main
from stream_ae_dev.devstack import BrokerProcess
from tests.support.kafka_topics import produce
from tests.unit.test_alerts_follower import alert

pytestmark = pytest.mark.integration


def _messages() -> list[tuple[bytes, bytes]]:
    bodies = [alert("host-0", "open", 10), alert("host-1", "open", 11)]
    bodies += [alert("host-0", "resolved", 40)]
    sent = [(b["stream"].encode(), orjson.dumps(b)) for b in bodies]
    future = {**bodies[0], "schema": "stream-ae.alert/v9"}
    # A replay of the first two, and a message of a schema version this follower does not know.
    return [*sent[:2], (b"host-0", orjson.dumps(future)), *sent[:2], sent[2]]


def test_follow_yields_each_alert_once_paired(
    broker: BrokerProcess, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(1, prefix="follow")
    produce(broker.bootstrap_servers, topic, _messages())
    got = list(follow(broker.bootstrap_servers, topic=topic, from_beginning=True, idle_timeout_s=3))
    assert [(a.stream, a.status) for a in got] == [
        ("host-0", "open"),
        ("host-1", "open"),
        ("host-0", "resolved"),
    ]
    assert got[2].opened_by == got[0]
    assert got[0].features[0].expected == 2.0


def test_the_alerts_command_prints_each_alert_once(
    broker: BrokerProcess,
    topic_factory: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = topic_factory(1, prefix="alerts-cli")
    produce(broker.bootstrap_servers, topic, _messages())
    monkeypatch.setenv("STREAM_AE_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    monkeypatch.setenv("STREAM_AE_ALERTS_TOPIC", topic)
    assert main(["alerts", "--from-beginning", "--idle-timeout", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("status") and len(lines) == 4
    assert lines[1].startswith("open") and "cpu above 80% (9.5 vs 2)" in lines[1]
    assert main(["alerts", "--from-beginning", "--json", "--max", "2"]) == 0
    printed = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["stream"] for p in printed] == ["host-0", "host-1"]
    assert printed[0] == alert("host-0", "open", 10)
