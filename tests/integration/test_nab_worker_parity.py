"""One NAB file through Kafka + Redis + the worker scores and alerts as ``evaluate nab`` does
(issues 6 and 12): the evaluator is the worker's code path, not a re-implementation.

The harness fits on the file's probationary period (an artifact with the detector's
post-processing in its ``detector.json``) and replays the file through ``StreamProcessor``
over the in-memory store; the worker (built as ``stream-ae worker`` builds it, on a thread)
loads the same artifact, consumes the same rows from a topic and keeps its window state, the
post-processing state included, in Redis. Every window's distance and final score must agree
(to float32 round-off: the worker batches rows differently), the alerts must be the same
alerts (same ids, stages and statuses), and the window state stored in Redis must be the
harness's final state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from stream_ae.core.state_codec import decode_state
from stream_ae.worker.processor import BatchOutcome
from stream_ae_dev.devstack import BrokerProcess, RedisProcess
from tests.support.kafka_topics import produce
from tests.support.outcomes import stored_blobs
from tests.support.paths import NAB_DIR
from tests.support.tiny_model import TinyModel
from tests.support.waiting import wait_until
from tests.support.worker_process import running_worker, settings_of, worker_config
from training.evaluation.nab_run import (
    DEFAULT_PARAMS,
    anomaly_scores,
    read_series,
    stream_file,
)
from training.evaluation.nab_score import probation_length

pytestmark = pytest.mark.integration

NAB_FILE = "realKnownCause/rogue_agent_key_hold.csv"  # 1882 rows: the shortest real file
# The detector's post-processing and model kind, with a small model and a short fit.
PARAMS = DEFAULT_PARAMS.with_changes(window=16, hidden=8, epochs=3, refit_every=0)


@pytest.mark.skipif(
    not (NAB_DIR / "data" / NAB_FILE).is_file(), reason=f"NAB data not found at {NAB_DIR}"
)
def test_a_nab_file_through_kafka_redis_and_the_worker_scores_as_in_process(
    broker: BrokerProcess,
    redis_server: RedisProcess,
    redis_client: redis.Redis,
    topic_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    series = read_series(NAB_FILE, NAB_DIR / "data" / NAB_FILE)
    n = len(series.values)
    input_topic = topic_factory(1, prefix="nab-in")
    config = worker_config(
        bootstrap_servers=broker.bootstrap_servers,
        redis_url=redis_server.url,
        model=TinyModel(path=tmp_path / "artifacts" / "fit-0", window=PARAMS.window, features=1),
        input_topic=input_topic,
        alerts_topic=topic_factory(1, prefix="nab-alerts"),
        dlq_topic=topic_factory(1, prefix="nab-dlq"),
    )
    # The worker's own alert policy, and its topic (an alert id hashes its source position).
    policy = settings_of(config).alert_policy()
    trace = stream_file(
        series,
        PARAMS,
        probation_length(n),
        tmp_path / "artifacts",
        policy=policy,
        topic=input_topic,
    )
    expected_scores = anomaly_scores(trace)
    seen: list[BatchOutcome] = []
    lock = threading.Lock()
    with running_worker(settings_of(config)) as worker:
        # Observe the worker's own processor: every poll batch's per-window outputs.
        process = worker.processor.process

        def observed(events: Any) -> BatchOutcome:
            outcome = process(events)
            with lock:
                seen.append(outcome)
            return outcome

        worker.processor.process = observed  # type: ignore[method-assign]
        messages = [
            (
                series.key.encode(),
                orjson.dumps({"stream": series.key, "ts": stamp, "value": value}),
            )
            for stamp, value in zip(series.timestamps, series.values.tolist(), strict=True)
        ]
        produce(broker.bootstrap_servers, config["input_topics"][0], messages, partition=0)

        def windows_seen() -> int:
            with lock:
                return sum(len(o.windows.end_offsets) for o in seen)

        wait_until(lambda: windows_seen() >= n - PARAMS.window + 1, 180, "every window scored")

    offsets = np.concatenate([o.windows.end_offsets for o in seen])
    distances = np.concatenate([o.windows.distances for o in seen])
    final_scores = np.concatenate([o.windows.final_scores for o in seen])
    end_ts_ms = np.concatenate([o.windows.end_ts_ms for o in seen])
    alerts = [alert for o in seen for alert in o.alerts]
    assert len(seen) > 1  # several poll batches, not one
    # Each row's window once, in order (one partition, offsets = row numbers).
    np.testing.assert_array_equal(offsets, np.arange(PARAMS.window - 1, n))
    np.testing.assert_array_equal(end_ts_ms, series.ts_ms[PARAMS.window - 1 :])
    np.testing.assert_allclose(
        distances, trace.distances[PARAMS.window - 1 :], rtol=1e-4, atol=1e-6
    )

    # The worker's processor post-processed the distances itself, from the artifact's
    # detector.json, and its alert policy acted on those final scores.
    np.testing.assert_allclose(
        final_scores, expected_scores[PARAMS.window - 1 :], rtol=1e-4, atol=1e-5
    )
    assert expected_scores.max() > 0.5  # the comparison covers high scores, not only zeros
    assert trace.alerts, "the file opens alerts: the comparison covers them"

    def summary(found: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(a["alert_id"], a["status"], a["stage"], a["window"]["end_ts"]) for a in found]

    assert summary(alerts) == summary(trace.alerts)

    blobs = stored_blobs(redis_client, config["redis_key_prefix"])
    assert len(blobs) == 1
    stored = decode_state(next(iter(blobs.values())))
    assert trace.final_state is not None
    assert stored.count == trace.final_state.count == n
    assert stored.offset == trace.final_state.offset == n - 1
    np.testing.assert_array_equal(stored.values, trace.final_state.values)
    np.testing.assert_array_equal(stored.ts_ms, trace.final_state.ts_ms)
    np.testing.assert_array_equal(stored.stat_mean, trace.final_state.stat_mean)
    np.testing.assert_array_equal(stored.stat_m2, trace.final_state.stat_m2)
