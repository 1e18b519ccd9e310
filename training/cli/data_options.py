"""The data options shared by the commands (one source: --csv, --nab or --topic) and the loader
that turns them into series.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stream_ae.io.series_files import add_read_options, read_options_from
from training.cli.common import settings, split

log = logging.getLogger("training")

DEFAULT_NAB_LABELS = "combined_windows.json"


def add_data_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_argument_group(
        "data (one source: --csv, --nab or --topic)" + ("" if required else ", optional")
    )
    source = group.add_mutually_exclusive_group(required=required)
    source.add_argument(
        "--csv",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="CSV file(s): one series per file (named by the file stem), or long format with "
        "--stream-column",
    )
    source.add_argument(
        "--nab",
        type=Path,
        metavar="DIR",
        help="a directory in NAB layout, <category>/<name>.csv with timestamp,value; series "
        "are named <category>/<name>.csv",
    )
    source.add_argument(
        "--topic",
        metavar="TOPIC",
        help="replay this Kafka topic (messages as the worker reads them); see --from/--to",
    )
    group.add_argument(
        "--nab-categories",
        metavar="A,B",
        help="NAB categories to read, comma-separated (default: every sub-directory)",
    )
    group.add_argument(
        "--nab-labels",
        type=Path,
        metavar="FILE",
        help="with --nab: NAB label windows (default: combined_windows.json next to the data "
        "directory, if present); for your own data use --labels",
    )
    group.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="labelled anomaly ranges of the data: a CSV stream,start,end, both ends included "
        "(times as the data reader accepts them: ISO 8601, epoch s/ms/us/ns); a stream named "
        "in no row is normal throughout. Gives alert-level hits, misses, false alerts and "
        "delays",
    )
    group.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="Kafka brokers for --topic (default: $STREAM_AE_BOOTSTRAP_SERVERS)",
    )
    group.add_argument(
        "--from",
        dest="start",
        metavar="TIME",
        help="replay from this time: 'earliest' (default), ISO-8601, epoch ms, or a duration "
        "such as 6h or 7d before the newest event in the topic (event time, not the clock)",
    )
    group.add_argument(
        "--to", dest="end", metavar="TIME", help="replay up to this time (default: the end)"
    )
    group.add_argument(
        "--max-events-per-stream",
        type=int,
        metavar="N",
        help="keep only the newest N events of each stream from the replay (default: all)",
    )
    group.add_argument(
        "--replay-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="give up a replay after this many seconds (default: %(default)s)",
    )
    group.add_argument(
        "--feature-names",
        metavar="A,B",
        help="feature names of topic messages (default: the model's, else 'value')",
    )
    group.add_argument(
        "--train-fraction",
        type=float,
        metavar="F",
        help="use only the first fraction F of every series (NAB trains on 0.15)",
    )
    group.add_argument(
        "--max-gap",
        metavar="DURATION",
        help="cut series where consecutive events are further apart than this (e.g. 1h); "
        "segments shorter than the window are padded when the model masks",
    )
    add_read_options(parser.add_argument_group("CSV files (read as stream-ae produce reads them)"))


def bootstrap(args: argparse.Namespace) -> str:
    return str(args.bootstrap_servers or settings().bootstrap_servers)


def consumer_security() -> dict[str, Any]:
    """kafka-python options for the security settings (the worker's own, one definition)."""
    from stream_ae.io.kafka import security_config

    return security_config(settings())


def load_data(args: argparse.Namespace, feature_names: Sequence[str] | None = None) -> list[Any]:
    """The series the data options name (after --train-fraction and --max-gap)."""
    from training import data

    series: list[data.Series]
    if args.nab_labels and not args.nab:
        # Silently ignoring it would call every window of your own data normal.
        raise ValueError(
            "--nab-labels applies to --nab data only; for CSV or topic data give --labels "
            "FILE (a CSV stream,start,end)"
        )
    if args.csv:
        series = []
        for path in args.csv:
            series += data.read_csv(path, read_options_from(args))
    elif args.nab:
        labels_path = args.nab_labels or args.nab.parent / DEFAULT_NAB_LABELS
        labels = data.load_nab_labels(labels_path) if labels_path.is_file() else None
        series = data.read_nab(args.nab, categories=split(args.nab_categories), labels=labels)
    elif args.topic:
        window = data.ReplayWindow.from_bounds(args.start, args.end)
        series, stats = data.replay_topic(
            bootstrap(args),
            args.topic,
            feature_names=split(args.feature_names) or list(feature_names or ["value"]),
            start_ms=window.start_ms,
            end_ms=window.end_ms,
            max_events_per_stream=args.max_events_per_stream,
            timeout_s=args.replay_timeout,
            consumer_config=consumer_security(),
            progress=sys.stderr.isatty(),
        )
        log.info(
            "replayed %d messages (%d used, invalid: %s) in %.1fs",
            stats.messages,
            stats.used,
            stats.invalid or "none",
            stats.seconds,
        )
        series = window.apply(series, stats)
    else:
        return []
    if args.labels:
        series = data.read_labels_file(series, args.labels, args.time_unit)
    if args.max_gap:
        series = data.split_at_gaps(series, int(data.parse_duration_s(args.max_gap) * 1000))
    if args.train_fraction:
        series = data.head_fraction(series, args.train_fraction)
    series = [s for s in series if len(s)]
    log.info("data: %s", data.describe(series))
    return series


def feature_names_of(args: argparse.Namespace, series: Sequence[Any]) -> list[str]:
    names = split(getattr(args, "feature_names", None)) or split(
        getattr(args, "value_columns", None)
    )
    features = series[0].features if series else 1
    if names and len(names) == features:
        return names
    return ["value"] if features == 1 else [f"f{i}" for i in range(features)]
