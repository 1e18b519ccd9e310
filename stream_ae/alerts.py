"""A typed follower of the alerts topic, for services that act on alerts.

:func:`follow` yields :class:`Alert` objects as the workers emit them:

- **Once each.** A worker that restarts after a crash re-sends the alerts of the batch it was
  in, with the same ``alert_id`` (a hash of what determines the alert): the follower drops
  repeats, remembering the last ``remember`` ids (bounded memory; a replay reaches back a batch
  or two, never a hundred thousand alerts).
- **Validated.** Each message is parsed against its schema version (``stream-ae.alert/v1`` to
  ``/v4``; the fields a version lacks are None). A message that is not an alert of a known
  version is skipped with one WARNING per reason, or raises :class:`~stream_ae.errors.SchemaError`
  with ``on_invalid="raise"``: a consumer built for today's alerts keeps running when a newer
  worker emits a version it does not know, and says so.
- **Paired.** A ``resolved`` alert carries the ``open`` alert it closes in
  :attr:`Alert.opened_by`, when the follower saw it (the last open alert of the stream).

>>> payload = (
...     b'{"schema": "stream-ae.alert/v3", "alert_id": "0123456789abcdef0123456789abcdef",'
...     b' "stream": "host-7/cpu", "status": "open", "score": 0.99, "raw_score": 0.999,'
...     b' "stage": "likelihood", "threshold": 0.9, "distance": 4.2, "window": {"start_ts":'
...     b' "2026-01-01T00:00:00.000Z", "end_ts": "2026-01-01T00:01:03.000Z", "size": 64},'
...     b' "source": {"topic": "metrics", "partition": 3, "offset": 12345}, "model": {"name":'
...     b' "default", "version": "v1"}, "features": [{"name": "cpu", "contribution": 1.0,'
...     b' "direction": "above", "step": 63, "observed": 97.5, "expected": 41.0}],'
...     b' "emitted_at": "2026-01-01T00:01:04.000Z"}'
... )
>>> alerts = AlertSequence()
>>> [alert] = alerts.feed([payload, payload])        # the replayed copy is dropped
>>> alert.status, alert.stream, alert.top_feature.name, alert.top_feature.expected
('open', 'host-7/cpu', 'cpu', 41.0)
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import orjson

from stream_ae.core.postprocess import STAGES
from stream_ae.errors import SchemaError
from stream_ae.io.kafka import BatchConsumer, KafkaConnection, Partition
from stream_ae.settings import Settings, load_settings

log = logging.getLogger(__name__)

SCHEMA_VERSIONS = (
    "stream-ae.alert/v1",
    "stream-ae.alert/v2",
    "stream-ae.alert/v3",
    "stream-ae.alert/v4",
)
# Ids remembered for de-duplication: a replay re-sends at most a batch or two of alerts.
DEFAULT_REMEMBER = 100_000
OnInvalid = Literal["skip", "raise"]


@dataclass(frozen=True)
class FeatureExplanation:
    """One feature's part in an alert. ``step``, ``observed`` and ``expected`` (schema v3 on;
    None before) are the window step of its largest deviation from the model's expected value
    and both values there, in the units the events came in."""

    name: str
    contribution: float
    direction: Literal["above", "below"]
    step: int | None = None
    observed: float | None = None
    expected: float | None = None


@dataclass(frozen=True)
class SourcePosition:
    """The Kafka position of the window's last event."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Alert:
    """An alert as the workers emit it (see ``stream_ae/schemas/alert.v4.json``).

    ``raw_score`` and ``stage`` are None for schema v1 alerts. ``window_gap`` (v4) is whether
    the window spans a gap in its stream's events, None when the worker did not check
    (``STREAM_AE_GAP_POLICY=score``) or the alert predates v4. ``opened_by`` is, for a
    ``resolved`` alert, the ``open`` alert of the same stream it closes (None when the follower
    did not see it, e.g. it started after it). ``payload`` is the alert's JSON as received.
    """

    schema: str
    alert_id: str
    stream: str
    status: Literal["open", "resolved"]
    score: float
    threshold: float
    distance: float
    raw_score: float | None
    stage: str | None
    window_start: datetime
    window_end: datetime
    window_size: int
    source: SourcePosition
    model_name: str
    model_version: str
    features: tuple[FeatureExplanation, ...]
    emitted_at: datetime
    window_gap: bool | None = None
    opened_by: Alert | None = None
    payload: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def top_feature(self) -> FeatureExplanation:
        """The feature with the largest share of the window's error."""
        return max(self.features, key=lambda f: f.contribution)


def parse_alert(payload: bytes | str | Mapping[str, Any]) -> Alert:
    """An :class:`Alert` from its JSON (or the decoded dict); :class:`SchemaError` naming the
    first problem when it is not an alert of a known schema version."""
    if isinstance(payload, bytes | str):
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise SchemaError("not_json", f"an alert must be JSON: {exc}") from None
    else:
        body = payload
    if not isinstance(body, Mapping):
        raise SchemaError("not_object", "an alert must be a JSON object")
    schema = body.get("schema")
    if schema not in SCHEMA_VERSIONS:
        raise SchemaError(
            "unknown_schema",
            f"schema {str(schema)[:60]!r} is not one this follower knows "
            f"({', '.join(SCHEMA_VERSIONS)}): upgrade stream-ae to read it",
        )
    version = SCHEMA_VERSIONS.index(schema) + 1
    window, source, model = (_object(body, name) for name in ("window", "source", "model"))
    features = body.get("features")
    if not isinstance(features, list) or not features:
        raise SchemaError("bad_alert", "'features' must be a non-empty array")
    status = body.get("status")
    if status not in ("open", "resolved"):
        raise SchemaError("bad_alert", f"'status' must be open or resolved, got {status!r}")
    alert_id = _text(body, "alert_id")
    if len(alert_id) != 32 or any(c not in "0123456789abcdef" for c in alert_id):
        raise SchemaError("bad_alert", f"'alert_id' must be 32 hex digits, got {alert_id[:40]!r}")
    return Alert(
        schema=schema,
        alert_id=alert_id,
        stream=_text(body, "stream"),
        status=status,
        score=_number(body, "score", 0.0, 1.0),
        threshold=_number(body, "threshold", 0.0, 1.0),
        distance=_number(body, "distance", 0.0),
        raw_score=_number(body, "raw_score", 0.0, 1.0) if version >= 2 else None,
        stage=_stage(body) if version >= 2 else None,
        window_start=_time(window, "start_ts"),
        window_end=_time(window, "end_ts"),
        window_size=_integer(window, "size", 1),
        source=SourcePosition(
            _text(source, "topic"), _integer(source, "partition", 0), _integer(source, "offset", 0)
        ),
        model_name=_text(model, "name", empty=True),
        model_version=_text(model, "version", empty=True),
        features=tuple(_feature(item, version) for item in features),
        emitted_at=_time(body, "emitted_at"),
        window_gap=_gap(window) if version >= 4 else None,
        payload=body,
    )


class AlertSequence:
    """The pure part of :func:`follow`: raw messages in, each alert once and paired, out.

    ``remember`` bounds the ids kept for de-duplication (oldest forgotten first) and the open
    alerts kept for pairing (one per stream, least recently opened forgotten first).
    """

    def __init__(self, *, remember: int = DEFAULT_REMEMBER, on_invalid: OnInvalid = "skip") -> None:
        if remember < 1:
            raise ValueError(f"remember must be at least 1, got {remember}")
        self.remember = remember
        self.on_invalid = on_invalid
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._open: OrderedDict[str, Alert] = OrderedDict()
        self._warned: set[str] = set()
        self.skipped = 0  # messages that were not alerts of a known version

    def feed(self, payloads: Iterable[bytes | None]) -> list[Alert]:
        """The new alerts among ``payloads`` (message values, in topic order)."""
        out: list[Alert] = []
        for payload in payloads:
            if payload is None:
                continue
            try:
                alert = parse_alert(payload)
            except SchemaError as exc:
                if self.on_invalid == "raise":
                    raise
                self.skipped += 1
                if exc.reason not in self._warned:  # once per reason, not once per message
                    self._warned.add(exc.reason)
                    log.warning("skipping messages that are not alerts: %s", exc.detail)
                continue
            if alert.alert_id in self._seen:
                self._seen.move_to_end(alert.alert_id)
                continue
            self._seen[alert.alert_id] = None
            if len(self._seen) > self.remember:
                self._seen.popitem(last=False)
            out.append(self._paired(alert))
        return out

    def _paired(self, alert: Alert) -> Alert:
        if alert.status == "open":
            self._open[alert.stream] = alert
            self._open.move_to_end(alert.stream)
            if len(self._open) > self.remember:
                self._open.popitem(last=False)
            return alert
        opened = self._open.pop(alert.stream, None)
        return replace(alert, opened_by=opened) if opened is not None else alert


def follow(
    settings_or_bootstrap: Settings | str,
    *,
    topic: str | None = None,
    from_beginning: bool = False,
    idle_timeout_s: float | None = None,
    max_alerts: int | None = None,
    remember: int = DEFAULT_REMEMBER,
    on_invalid: OnInvalid = "skip",
) -> Iterator[Alert]:
    """Yield the alerts of the alerts topic as they arrive, each once, paired, typed.

    ``settings_or_bootstrap``: the settings (brokers, security, alerts topic), or a bootstrap
    address (the other settings from ``STREAM_AE_*``). ``topic`` overrides the alerts topic.
    Reads without a consumer group (nothing is committed): from the latest alert, or the
    oldest with ``from_beginning``. Stops after ``max_alerts``, or ``idle_timeout_s`` without
    any (None: follows for ever); waits for the topic when it does not exist yet.
    """
    settings = (
        settings_or_bootstrap
        if isinstance(settings_or_bootstrap, Settings)
        else load_settings({"bootstrap_servers": settings_or_bootstrap})
    )
    topic = topic or settings.alerts_topic
    consumer = KafkaConnection.from_settings(settings).consumer(
        group_id=None,  # a reader, not a member of any group: nothing is committed
        auto_offset_reset="earliest" if from_beginning else "latest",
        fetch_max_wait_ms=100,
        client_id_suffix="alerts",
    )
    sequence = AlertSequence(remember=remember, on_invalid=on_invalid)
    count = 0
    try:
        partitions = wait_for_partitions(consumer, topic, idle_timeout_s)
        if not partitions:
            return
        consumer.assign([Partition(topic, p) for p in partitions])
        last = time.monotonic()
        while max_alerts is None or count < max_alerts:
            records = consumer.poll_batch(timeout_ms=500, max_records=500)
            if not records:
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            for alert in sequence.feed(r.value for r in records):
                yield alert
                count += 1
                if max_alerts is not None and count >= max_alerts:
                    return
    finally:
        consumer.close()


def wait_for_partitions(consumer: BatchConsumer, topic: str, timeout_s: float | None) -> list[int]:
    """The topic's partitions, once it exists ([] if it does not within ``timeout_s``)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not (partitions := consumer.partitions_of(topic)):
        if deadline is not None and time.monotonic() > deadline:
            return []
        time.sleep(0.5)
    return partitions


# --- field readers: one line each error, naming the field ----------------------------------


def _object(body: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = body.get(name)
    if not isinstance(value, Mapping):
        raise SchemaError("bad_alert", f"{name!r} must be an object")
    return value


def _text(body: Mapping[str, Any], name: str, *, empty: bool = False) -> str:
    value = body.get(name)
    if not isinstance(value, str) or (not value and not empty):
        raise SchemaError("bad_alert", f"{name!r} must be a{'' if empty else ' non-empty'} string")
    return value


def _number(body: Mapping[str, Any], name: str, low: float, high: float | None = None) -> float:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError("bad_alert", f"{name!r} must be a number")
    if value < low or (high is not None and value > high):
        raise SchemaError("bad_alert", f"{name!r} = {value} is out of range")
    return float(value)


def _integer(body: Mapping[str, Any], name: str, low: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SchemaError("bad_alert", f"{name!r} must be an integer >= {low}")
    return value


def _time(body: Mapping[str, Any], name: str) -> datetime:
    text = _text(body, name)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SchemaError("bad_alert", f"{name!r} is not an ISO-8601 time: {text[:40]!r}") from None
    if parsed.tzinfo is None:
        raise SchemaError("bad_alert", f"{name!r} has no time zone: {text[:40]!r}")
    return parsed


def _gap(window: Mapping[str, Any]) -> bool | None:
    gap = window.get("gap")
    if gap is not None and not isinstance(gap, bool):
        raise SchemaError("bad_alert", f"'gap' must be true or false, got {str(gap)[:40]!r}")
    return gap


def _stage(body: Mapping[str, Any]) -> str:
    stage = _text(body, "stage")
    if stage not in STAGES:
        raise SchemaError("bad_alert", f"'stage' must be one of {', '.join(STAGES)}: {stage!r}")
    return stage


def _feature(item: Any, version: int) -> FeatureExplanation:
    if not isinstance(item, Mapping):
        raise SchemaError("bad_alert", "each of 'features' must be an object")
    direction = item.get("direction")
    if direction not in ("above", "below"):
        raise SchemaError(
            "bad_alert", f"a feature's 'direction' must be above or below: {direction!r}"
        )
    explained = version >= 3
    return FeatureExplanation(
        name=_text(item, "name", empty=True),
        contribution=_number(item, "contribution", 0.0, 1.0),
        direction=direction,
        step=_integer(item, "step", 0) if explained else None,
        observed=_number(item, "observed", -float("inf")) if explained else None,
        expected=_number(item, "expected", -float("inf")) if explained else None,
    )
