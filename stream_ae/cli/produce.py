"""``stream-ae produce``: replay a CSV or synthetic streams with injected anomalies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from stream_ae.core.synthetic import SyntheticStream, make_streams
from stream_ae.io.producing import interleave, send_events
from stream_ae.io.series_files import (
    SeriesFileError,
    add_read_options,
    read_options_from,
    read_series_file,
)
from stream_ae.settings import load_settings

EXAMPLES = (
    "stream-ae produce --synthetic 20 --anomalous 5 --rate 200",
    "stream-ae produce --csv cpu.csv mem.csv --rate 1000",
    "stream-ae produce --csv host1.csv --stream host-1.cpu --topic stream-ae.metrics",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Send events {stream, ts, value} to the input topic (key = stream id). Either --csv "
        "files (one stream per file, named after the file unless --stream is given) or "
        "--synthetic N sine streams with injected anomalies. Kafka settings come from STREAM_AE_*."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--csv",
        type=Path,
        nargs="+",
        help="CSV file(s) with a time column and value columns (read as stream-ae-train reads "
        "them: see the CSV options)",
    )
    source.add_argument("--synthetic", type=int, metavar="N", help="number of synthetic streams")
    parser.add_argument("--stream", help="stream id for a single --csv file (default: file stem)")
    parser.add_argument(
        "--steps", type=int, default=1000, help="events per synthetic stream (1000)"
    )
    parser.add_argument(
        "--anomalous", type=int, default=0, help="synthetic streams that get 2 anomalies each"
    )
    parser.add_argument("--features", type=int, default=1, help="features per synthetic event (1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic streams")
    parser.add_argument(
        "--rate", type=float, help="events per second (default: as fast as possible)"
    )
    parser.add_argument("--topic", help="topic (default: the first of STREAM_AE_INPUT_TOPICS)")
    parser.add_argument("--bootstrap-servers", help="override STREAM_AE_BOOTSTRAP_SERVERS")
    add_read_options(parser.add_argument_group("CSV files (read as stream-ae-train reads them)"))


def run(args: argparse.Namespace) -> int:
    from stream_ae.io.kafka import KafkaConnection, confluent_installed

    overrides = {"bootstrap_servers": args.bootstrap_servers} if args.bootstrap_servers else {}
    settings = load_settings(overrides)
    # The load generator must not be the bottleneck: librdkafka produces ~50x faster.
    client = "confluent" if confluent_installed() else settings.kafka_client
    topic = args.topic or settings.input_topics[0]
    if args.csv:
        streams = []
        name = args.stream if args.stream and len(args.csv) == 1 else None
        try:
            for path in args.csv:
                found, report = read_series_file(path, read_options_from(args), name=name)
                print(report.summary(), file=sys.stderr)
                streams += [SyntheticStream(f.name, f.values, f.ts_ms, []) for f in found]
        except SeriesFileError as exc:
            print(f"stream-ae produce: error: {exc}", file=sys.stderr)
            return 2
    else:
        streams = make_streams(
            args.synthetic,
            args.steps,
            anomalous=args.anomalous,
            features=args.features,
            seed=args.seed,
        )
        for s in streams:
            for start, end, kind in s.anomalies:
                print(f"{s.name}: {kind} anomaly at steps {start}-{end - 1}")
    total = sum(len(s.values) for s in streams)
    producer = KafkaConnection.from_settings(settings, client).producer(linger_ms=20)
    with tqdm(total=total, unit="ev", desc=f"-> {topic} ({client})") as bar:
        sent = send_events(producer, topic, interleave(streams), rate_per_s=args.rate, progress=bar)
    producer.close()
    print(f"sent {sent} events of {len(streams)} streams to {topic}")
    return 0
