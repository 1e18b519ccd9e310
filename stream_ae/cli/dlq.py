"""``stream-ae dlq show`` and ``stream-ae dlq replay``: read the dead-letter topic, and re-send
chosen dead letters (optionally fixed) to the topic they came from.

A replay is idempotent: each re-sent message carries its dead letter's id in the
``stream-ae.replayed-from`` header, and a replay first reads the target topic for those
headers and skips the dead letters already there. (A replayed message the worker refuses again
becomes a new dead letter, with its new source offset and a new id.) Dead letters cut to fit the
topic (``stream-ae.truncated``) are never replayed: their original bytes are gone.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from stream_ae.cli.topic_reading import batches, headers_of, topic_reader
from stream_ae.errors import ConfigError
from stream_ae.io.kafka import KafkaConnection, Record
from stream_ae.settings import load_settings
from stream_ae.worker.dead_letters import ID_HEADER, REPLAYED_HEADER, TRUNCATED_HEADER

HELP = "list dead letters, or re-send chosen ones to their input topic"
EXAMPLES = (
    "stream-ae dlq show --reason bad_ts",
    "stream-ae dlq replay --reason unknown_feature --rename temp=temperature",
    "stream-ae dlq replay --offset 1042 --offset 1043 --dry-run",
)
# Characters of a dead letter's value shown in the table view.
VALUE_CHARS = 60


@dataclass(frozen=True)
class DeadLetterView:
    """A dead letter as read back: why, from where, and the original message."""

    dead_letter_id: str
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    truncated_from: int | None  # the original size in bytes when the value was cut
    key: bytes | None
    value: bytes | None
    dlq_partition: int
    dlq_offset: int

    @classmethod
    def of(cls, record: Record) -> DeadLetterView:
        headers = headers_of(record)
        truncated = headers.get(TRUNCATED_HEADER)
        return cls(
            dead_letter_id=headers.get(ID_HEADER, ""),
            reason=headers.get("stream-ae.reason", "?"),
            detail=headers.get("stream-ae.detail", ""),
            source_topic=headers.get("stream-ae.source.topic", ""),
            source_partition=int(headers.get("stream-ae.source.partition", "-1")),
            source_offset=int(headers.get("stream-ae.source.offset", "-1")),
            truncated_from=int(truncated) if truncated is not None else None,
            key=record.key,
            value=record.value,
            dlq_partition=record.partition,
            dlq_offset=record.offset,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "dead_letter_id": self.dead_letter_id,
            "reason": self.reason,
            "detail": self.detail,
            "source": {
                "topic": self.source_topic,
                "partition": self.source_partition,
                "offset": self.source_offset,
            },
            "truncated_from": self.truncated_from,
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
            "value": None if self.value is None else self.value.decode("utf-8", "replace"),
            "dlq": {"partition": self.dlq_partition, "offset": self.dlq_offset},
        }


@dataclass(frozen=True)
class Selection:
    """Which dead letters to act on: every given criterion must hold (none given: all)."""

    reasons: frozenset[str] = frozenset()
    source_offsets: frozenset[int] = frozenset()
    ids: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.reasons or self.source_offsets or self.ids)

    def matches(self, letter: DeadLetterView) -> bool:
        return (
            (not self.reasons or letter.reason in self.reasons)
            and (not self.source_offsets or letter.source_offset in self.source_offsets)
            and (not self.ids or any(letter.dead_letter_id.startswith(i) for i in self.ids))
        )


def rename_keys(value: bytes | None, renames: dict[str, str]) -> bytes | None:
    """``value`` with the top-level keys of its JSON object renamed (jq's
    ``with_entries(.key |= ...)``); anything but a JSON object is returned unchanged.

    >>> rename_keys(b'{"temp": 21.5, "ts": 1}', {"temp": "temperature"})
    b'{"temperature":21.5,"ts":1}'
    >>> rename_keys(b"not json", {"temp": "temperature"})
    b'not json'
    """
    if value is None or not renames:
        return value
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    if not isinstance(body, dict):
        return value
    return orjson.dumps({renames.get(k, k): v for k, v in body.items()})


def read_dead_letters(connection: KafkaConnection, topic: str) -> list[DeadLetterView]:
    """Every dead letter on ``topic``, each id once (a crash can leave duplicates)."""
    consumer = topic_reader(connection, topic, from_beginning=True, purpose="dlq")
    letters: dict[str, DeadLetterView] = {}
    try:
        for records in batches(consumer):
            for record in records:
                letter = DeadLetterView.of(record)
                letters.setdefault(letter.dead_letter_id or f"@{record.offset}", letter)
    finally:
        consumer.close()
    return sorted(letters.values(), key=lambda d: (d.dlq_partition, d.dlq_offset))


def replayed_ids(connection: KafkaConnection, topic: str) -> set[str]:
    """The dead-letter ids re-sent to ``topic`` already (their ``replayed-from`` header)."""
    consumer = topic_reader(connection, topic, from_beginning=True, purpose="dlq-replayed")
    found: set[str] = set()
    try:
        for records in batches(consumer):
            for record in records:
                for name, value in record.headers or ():
                    if name == REPLAYED_HEADER:
                        found.add(value.decode("utf-8", "replace"))
    finally:
        consumer.close()
    return found


# --- the command -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Read the dead-letter topic (STREAM_AE_DLQ_TOPIC), and re-send chosen dead letters to "
        "the topic they came from, idempotently: a dead letter replayed once is skipped after."
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="list dead letters with reason, detail and source")
    replay = sub.add_parser("replay", help="re-send chosen dead letters to their input topic")
    for each in (show, replay):
        each.add_argument(
            "--reason", action="append", default=[], help="only this reason (repeatable)"
        )
        each.add_argument(
            "--offset",
            type=int,
            action="append",
            default=[],
            help="only the dead letter of this source offset (repeatable)",
        )
        each.add_argument(
            "--id", action="append", default=[], help="only this dead-letter id or its prefix"
        )
        each.add_argument("--topic", help="the dead-letter topic (default STREAM_AE_DLQ_TOPIC)")
        each.add_argument("--bootstrap-servers", help="override STREAM_AE_BOOTSTRAP_SERVERS")
    show.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    show.add_argument("--max", type=int, dest="max_letters", help="show at most this many")
    replay.add_argument(
        "--all", action="store_true", help="replay every dead letter (no filter given)"
    )
    replay.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="fix: rename a top-level key of the JSON body (repeatable)",
    )
    replay.add_argument("--to", help="send to this topic instead of each one's source topic")
    replay.add_argument("--dry-run", action="store_true", help="say what would be sent, send none")


def run(args: argparse.Namespace) -> int:
    overrides = {"bootstrap_servers": args.bootstrap_servers} if args.bootstrap_servers else {}
    settings = load_settings(overrides)
    connection = KafkaConnection.from_settings(settings)
    selection = Selection(frozenset(args.reason), frozenset(args.offset), frozenset(args.id))
    letters = [
        d
        for d in read_dead_letters(connection, args.topic or settings.dlq_topic)
        if selection.matches(d)
    ]
    if args.action == "show":
        return _show(letters[: args.max_letters] if args.max_letters else letters, args.json)
    if not selection and not args.all:
        raise ConfigError("dlq replay: choose with --reason, --offset or --id, or give --all")
    return _replay(connection, letters, _renames(args.rename), args.to, args.dry_run)


def _show(letters: Sequence[DeadLetterView], as_json: bool) -> int:
    if as_json:
        for letter in letters:
            print(orjson.dumps(letter.to_json()).decode(), flush=True)
        return 0
    print(f"{'reason':<16}{'source':<28}{'id':<14}{'detail':<42}value")
    for d in letters:
        source = f"{d.source_topic}:{d.source_partition}@{d.source_offset}"
        value = "(null)" if d.value is None else d.value.decode("utf-8", "replace")
        value = value.replace("\n", " ")[:VALUE_CHARS]
        if d.truncated_from is not None:
            value = f"(cut from {d.truncated_from} B) {value}"
        print(
            f"{d.reason[:15]:<16}{source[:27]:<28}{d.dead_letter_id[:12]:<14}"
            f"{d.detail[:41]:<42}{value}"
        )
    print(f"{len(letters)} dead letter(s)")
    return 0


def _replay(
    connection: KafkaConnection,
    letters: Sequence[DeadLetterView],
    renames: dict[str, str],
    to: str | None,
    dry_run: bool,
) -> int:
    targets = sorted({to or d.source_topic for d in letters})
    done = set().union(*(replayed_ids(connection, t) for t in targets)) if targets else set()
    producer = None if dry_run else connection.producer()
    sent = skipped = cut = 0
    try:
        for d in letters:
            if d.truncated_from is not None:
                cut += 1
                print(f"not replayed (cut from {d.truncated_from} B): {d.dead_letter_id}")
                continue
            if d.dead_letter_id in done:
                skipped += 1
                continue
            value = rename_keys(d.value, renames)
            target = to or d.source_topic
            print(
                f"{'would send' if dry_run else 'sent'} {d.dead_letter_id} ({d.reason}) to {target}"
            )
            if producer is not None:
                headers = [(REPLAYED_HEADER, d.dead_letter_id.encode())]
                producer.send(target, value, key=d.key, headers=headers)
            done.add(d.dead_letter_id)
            sent += 1
        if producer is not None:
            producer.flush(30.0)
    finally:
        if producer is not None:
            producer.close()
    verb = "would replay" if dry_run else "replayed"
    print(f"{verb} {sent} dead letter(s); skipped {skipped} replayed before, {cut} cut")
    return 0


def _renames(pairs: Sequence[str]) -> dict[str, str]:
    renames: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise ConfigError(
                f"--rename {pair!r}: expected OLD=NEW, e.g. --rename temp=temperature"
            )
        renames[old] = new
    return renames
