"""``stream-ae tail TOPIC``: peek at any topic (input, alerts, dead letters), as a table or as
JSON lines, without joining a consumer group."""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from stream_ae.cli.topic_reading import batches, headers_of, topic_reader
from stream_ae.io.kafka import KafkaConnection, Record
from stream_ae.settings import load_settings

HELP = "peek at a topic: its messages as a table or JSON lines"
EXAMPLES = (
    "stream-ae tail metrics --from-beginning --max 20",
    "stream-ae tail stream-ae.alerts --json --idle-timeout 10",
)
# Characters of a value shown in the table view.
VALUE_CHARS = 100


def record_json(record: Record) -> dict[str, Any]:
    """A record as a JSON-ready dict: the value decoded as JSON when it is JSON, else as text."""
    value: Any = None
    if record.value is not None:
        try:
            value = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            value = record.value.decode("utf-8", "replace")
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": None if record.key is None else record.key.decode("utf-8", "replace"),
        "value": value,
        "headers": headers_of(record),
    }


def record_row(record: Record) -> str:
    """A record as one table row: partition, offset, key and the start of the value."""
    key = "-" if record.key is None else record.key.decode("utf-8", "replace")
    value = "(null)" if record.value is None else record.value.decode("utf-8", "replace")
    value = value.replace("\n", " ")
    if len(value) > VALUE_CHARS:
        value = value[: VALUE_CHARS - 3] + "..."
    return f"{record.partition:>4} {record.offset:>10}  {key[:24]:<25}{value}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print the messages of any topic: new ones as they come, or from the oldest with "
        "--from-beginning. Reads without a consumer group (nothing is committed). Kafka "
        "settings come from STREAM_AE_*."
    )
    parser.add_argument("topic", metavar="TOPIC", help="the topic to read")
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest")
    parser.add_argument("--max", type=int, dest="max_messages", help="stop after this many")
    parser.add_argument(
        "--idle-timeout", type=float, help="stop after this many seconds without messages"
    )
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    parser.add_argument("--bootstrap-servers", help="override STREAM_AE_BOOTSTRAP_SERVERS")


def run(args: argparse.Namespace) -> int:
    overrides = {"bootstrap_servers": args.bootstrap_servers} if args.bootstrap_servers else {}
    connection = KafkaConnection.from_settings(load_settings(overrides))
    consumer = topic_reader(
        connection, args.topic, from_beginning=args.from_beginning, purpose="tail"
    )
    count = 0
    if not args.json:
        print(f"{'part':>4} {'offset':>10}  {'key':<25}value", flush=True)
    try:
        for records in batches(consumer, idle_s=args.idle_timeout):
            for record in records:
                if args.max_messages is not None and count >= args.max_messages:
                    return 0
                text = (
                    orjson.dumps(record_json(record)).decode() if args.json else record_row(record)
                )
                print(text, flush=True)
                count += 1
            if args.max_messages is not None and count >= args.max_messages:
                return 0
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
