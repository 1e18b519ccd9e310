"""Training data replayed from a real topic on the test broker (`training.data.replay_topic`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from kafka import KafkaProducer

from stream_ae.core.records import encode_event
from stream_ae.core.windowing import series_windows
from stream_ae_dev.devstack import BrokerProcess
from training.data import replay_topic
from training.windows import series_to_windows

pytestmark = pytest.mark.integration


def test_replay_from_a_real_topic_builds_the_expected_windows(
    broker: BrokerProcess, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory(partitions=2)
    start = 1_700_000_000_000
    expected = {
        f"s{i}": np.round(np.sin(np.arange(40) / (3 + i)) * 10, 3).astype(np.float32)
        for i in range(3)
    }
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
    try:
        for k in range(40):
            for stream, values in expected.items():
                producer.send(
                    topic,
                    key=stream.encode(),
                    value=encode_event(stream, start + 1000 * k, float(values[k])),
                )
            if k == 20:  # a message the worker would dead-letter: counted, not used
                producer.send(topic, key=b"s0", value=b"{not json")
        producer.flush()
    finally:
        producer.close()

    series, stats = replay_topic(broker.bootstrap_servers, topic, timeout_s=60)
    assert stats.messages == 121 and stats.used == 120
    assert stats.invalid == {"not_json": 1}
    assert sorted(s.name for s in series) == ["s0", "s1", "s2"]
    for s in series:
        assert np.array_equal(s.values[:, 0], expected[s.name])
        assert np.array_equal(s.ts_ms, start + 1000 * np.arange(40))
        assert np.all(np.diff(s.offsets) > 0) and s.partition in (0, 1)
        windows = series_to_windows(s, window=8, stride=3)
        reference = series_windows(expected[s.name], 8, 3)
        assert np.array_equal(windows.raw, reference.windows)
        assert np.array_equal(windows.end_ts_ms, start + 1000 * np.arange(7, 40, 3))
        # The offset of each window's last event is the Kafka offset of that event.
        assert np.array_equal(windows.end_offsets, s.offsets[np.arange(7, 40, 3)])

    ranged, ranged_stats = replay_topic(
        broker.bootstrap_servers, topic, start_ms=start + 10_000, end_ms=start + 29_000
    )
    assert all(s.ts_ms.tolist() == [start + 1000 * k for k in range(10, 30)] for s in ranged)
    assert ranged_stats.out_of_range == 60

    bounded, bounded_stats = replay_topic(broker.bootstrap_servers, topic, max_events_per_stream=15)
    assert all(np.array_equal(s.values[:, 0], expected[s.name][-15:]) for s in bounded)
    assert bounded_stats.dropped_by_bound == 75
