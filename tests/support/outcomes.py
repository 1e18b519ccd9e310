"""What a worker run leaves behind, and what it must: the window states stored under a Redis
key prefix, the alerts read back, and the oracle.

:func:`expected_outcome` replays what was sent through the same core (:class:`StreamProcessor`
on an in-memory store) in one batch, which, calibration being fixed in the artifact, gives the
states and alert ids any correct worker run must end with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_ae.core.records import Event, decode_event
from stream_ae.core.state import StreamState
from stream_ae.core.state_codec import decode_state, encode_state
from stream_ae.errors import SchemaError
from stream_ae.io.window_store import InMemoryWindowStore, WindowStore
from stream_ae.model.inference import Scorer
from stream_ae.settings import Settings
from stream_ae.worker.processor import StreamProcessor
from tests.support.kafka_topics import Sent, read_topic
from tests.support.tiny_model import TinyModel, load_tiny_scorer


def stored_blobs(client: Any, prefix: str) -> dict[str, bytes]:
    """Raw stored window states under ``prefix``, by stream (``<prefix>:w:{<stream>}``)."""
    marker = f"{prefix}:w:{{".encode()
    blobs: dict[str, bytes] = {}
    for key in client.scan_iter(match=f"{prefix}:w:*", count=1000):
        assert key.startswith(marker) and key.endswith(b"}"), key
        blobs[key[len(marker) : -1].decode()] = client.get(key)
    return blobs


def stored_states(client: Any, prefix: str, model: TinyModel) -> dict[str, StreamState]:
    """Decoded window states under ``prefix``, by stream."""
    return {
        stream: decode_state(blob, model.window, model.features)
        for stream, blob in stored_blobs(client, prefix).items()
    }


def applied_counts(client: Any, prefix: str, model: TinyModel) -> dict[str, int]:
    """Events applied per stream, as the stored states say."""
    return {s: st.count for s, st in stored_states(client, prefix, model).items()}


def good_counts(sent: Iterable[Sent]) -> dict[str, int]:
    """Events per stream among well-formed sent messages (keyed by stream)."""
    counts: dict[str, int] = {}
    for m in sent:
        assert m.key is not None
        stream = m.key.decode()
        counts[stream] = counts.get(stream, 0) + 1
    return counts


@dataclass(frozen=True)
class Outcome:
    """What a correct run over some input ends with."""

    blobs: dict[str, bytes]  # encoded final state per stream
    alert_ids: set[str]
    applied: int
    dead_lettered: int
    # alert id -> its window.gap (None when the worker does not check for gaps)
    alert_gaps: dict[str, bool | None] = field(default_factory=dict)


def decode_sent(
    sent: Iterable[Sent], settings: Settings, scorer: Scorer
) -> tuple[list[Event], int]:
    """The events among ``sent`` as the worker decodes them, and how many it dead-letters."""
    spec = scorer.artifact.spec
    events: list[Event] = []
    dead = 0
    for m in sent:
        try:
            events.append(
                decode_event(
                    m.key,
                    m.value,
                    topic=m.topic,
                    partition=m.partition,
                    offset=m.offset,
                    feature_names=spec.feature_names,
                    max_bytes=settings.max_message_bytes,
                )
            )
        except SchemaError:
            dead += 1
    return events, dead


def processor_of(store: WindowStore, settings: Settings, scorer: Scorer) -> StreamProcessor:
    """A :class:`StreamProcessor` with the worker's stride, alert policy and gap rule, on
    ``store``."""
    return StreamProcessor(
        store,
        lambda: scorer,
        stride=settings.stride,
        policy=settings.alert_policy(),
        clock_ms=lambda: 0,
        gap_rule=settings.gap_rule(),
    )


def expected_outcome(sent: Iterable[Sent], settings: Settings, scorer: Scorer) -> Outcome:
    """Replay ``sent`` through the worker's own core in one batch: the reference result.

    Decoding, windowing, scoring and the alert policy are the worker's (same settings, same
    artifact); only Kafka and Redis are left out.
    """
    spec = scorer.artifact.spec
    events, dead = decode_sent(sent, settings, scorer)
    processor = processor_of(InMemoryWindowStore(spec.window, spec.features), settings, scorer)
    outcome = processor.process(events)
    assert not processor.save(outcome.touched)
    return Outcome(
        blobs={s: encode_state(st) for s, st in outcome.touched.items()},
        alert_ids={a["alert_id"] for a in outcome.alerts},
        applied=outcome.events_applied,
        dead_lettered=dead,
        alert_gaps={a["alert_id"]: a["window"].get("gap") for a in outcome.alerts},
    )


def alerts_of(records: Iterable[Any]) -> list[dict[str, Any]]:
    """Alert records (as read from the alerts topic) parsed from JSON."""
    import orjson

    return [orjson.loads(r.value) for r in records]


def decode_states_equal(a: Mapping[str, bytes], b: Mapping[str, bytes]) -> list[str]:
    """Streams whose encoded states differ between ``a`` and ``b`` (field-by-field decode when
    the bytes differ, so the message says what differs)."""
    differing = []
    for stream in sorted(set(a) | set(b)):
        if a.get(stream) == b.get(stream):
            continue
        left, right = a.get(stream), b.get(stream)
        if left is None or right is None:
            differing.append(f"{stream}: only on one side")
            continue
        sa, sb = decode_state(left), decode_state(right)
        fields_differing = [
            name
            for name in ("count", "topic", "partition", "offset", "alert")
            if getattr(sa, name) != getattr(sb, name)
        ] + [
            name
            for name in ("values", "ts_ms", "stat_mean", "stat_m2")
            if not np.array_equal(getattr(sa, name), getattr(sb, name))
        ]
        differing.append(f"{stream}: {fields_differing or 'encoding'}")
    return differing


def assert_same_as_uninterrupted(
    redis_client: Any,
    bootstrap_servers: str,
    run: Mapping[str, Any],
    reference: Mapping[str, Any],
    reference_settings: Settings,
    sent: Iterable[Sent],
    model: TinyModel,
) -> tuple[list[str], list[str]]:
    """A disturbed run (crashes, group churn) ends as an uninterrupted one and as the oracle:
    the same stored states, byte for byte, and the same set of alert ids (repeats allowed,
    nothing missing, nothing extra). ``run`` and ``reference`` are the two workers' configs.
    Returns the alert ids of both runs, in topic order."""
    run_blobs = stored_blobs(redis_client, run["redis_key_prefix"])
    reference_blobs = stored_blobs(redis_client, reference["redis_key_prefix"])
    assert decode_states_equal(run_blobs, reference_blobs) == []
    oracle = expected_outcome(sent, reference_settings, load_tiny_scorer(model))
    assert decode_states_equal(reference_blobs, oracle.blobs) == []
    run_ids = [a["alert_id"] for a in alerts_of(read_topic(bootstrap_servers, run["alerts_topic"]))]
    reference_ids = [
        a["alert_id"] for a in alerts_of(read_topic(bootstrap_servers, reference["alerts_topic"]))
    ]
    assert reference_ids, "no alert at all: the comparison would prove nothing"
    assert len(set(reference_ids)) == len(reference_ids)  # the uninterrupted run never repeats
    assert set(run_ids) == set(reference_ids) == oracle.alert_ids
    return run_ids, reference_ids
