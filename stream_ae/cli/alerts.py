"""``stream-ae alerts``: follow the alerts topic and print alerts as a table."""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson

from stream_ae.io.kafka import BatchConsumer, KafkaConnection, Partition
from stream_ae.settings import load_settings

HEADER = (
    f"{'status':<9}{'stream':<20}{'window end (UTC)':<26}{'score':>9}  "
    f"{'top feature':<22}{'model':<24}"
)


EXAMPLES = (
    "stream-ae alerts",
    "stream-ae alerts --from-beginning --max 10",
    "stream-ae alerts --json --idle-timeout 30",
)


def format_alert(alert: dict[str, Any]) -> str:
    top = max(alert["features"], key=lambda f: f["contribution"])
    feature = f"{top['name']} {top['direction']} {top['contribution']:.0%}"
    return (
        f"{alert['status']:<9}{alert['stream'][:19]:<20}{alert['window']['end_ts']:<26}"
        f"{alert['score']:>9.5f}  {feature:<22}{alert['model']['version'][:23]:<24}"
    )


def follow(
    consumer: BatchConsumer, *, max_alerts: int | None, idle_timeout_s: float | None, as_json: bool
) -> int:
    """Print alerts until ``max_alerts`` or ``idle_timeout_s`` without any; returns the count."""
    seen: set[str] = set()
    count = 0
    last = time.monotonic()
    if not as_json:
        print(HEADER, flush=True)
    while max_alerts is None or count < max_alerts:
        messages = consumer.poll_batch(timeout_ms=500, max_records=500)
        if not messages:
            if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                break
            continue
        last = time.monotonic()
        for m in messages:
            if m.value is None:
                continue
            alert = orjson.loads(m.value)
            if alert["alert_id"] in seen:  # a replay after a worker crash: same id, skip
                continue
            seen.add(alert["alert_id"])
            count += 1
            print(m.value.decode() if as_json else format_alert(alert), flush=True)
    return count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Follow the alerts topic and print each alert once (replays are de-duplicated by "
        "alert_id). Kafka settings come from STREAM_AE_*."
    )
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest alert")
    parser.add_argument("--max", type=int, dest="max_alerts", help="stop after this many alerts")
    parser.add_argument(
        "--idle-timeout", type=float, help="stop after this many seconds without alerts"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON of each alert")
    parser.add_argument("--bootstrap-servers", help="override STREAM_AE_BOOTSTRAP_SERVERS")


def run(args: argparse.Namespace) -> int:
    overrides = {"bootstrap_servers": args.bootstrap_servers} if args.bootstrap_servers else {}
    settings = load_settings(overrides)
    consumer = KafkaConnection.from_settings(settings).consumer(
        group_id=None,  # a reader, not a member of any group: nothing is committed
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        fetch_max_wait_ms=100,
        client_id_suffix="alerts",
    )
    try:
        partitions = _wait_for_partitions(consumer, settings.alerts_topic, args.idle_timeout)
        consumer.assign([Partition(settings.alerts_topic, p) for p in partitions])
        follow(
            consumer,
            max_alerts=args.max_alerts,
            idle_timeout_s=args.idle_timeout,
            as_json=args.json,
        )
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def _wait_for_partitions(consumer: BatchConsumer, topic: str, timeout_s: float | None) -> list[int]:
    """The topic's partitions, once it exists (the worker creates it with its first alert)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not (partitions := consumer.partitions_of(topic)):
        if deadline is not None and time.monotonic() > deadline:
            return []
        time.sleep(0.5)
    return partitions
