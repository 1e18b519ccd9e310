"""``stream-ae alerts``: follow the alerts topic and print alerts as a table (or JSON lines),
through the typed follower :func:`stream_ae.alerts.follow`."""

from __future__ import annotations

import argparse

import orjson

from stream_ae.alerts import Alert, follow
from stream_ae.settings import load_settings

HEADER = (
    f"{'status':<9}{'stream':<20}{'window end (UTC)':<26}{'score':>9}  "
    f"{'top feature':<34}{'model':<24}"
)


EXAMPLES = (
    "stream-ae alerts",
    "stream-ae alerts --from-beginning --max 10",
    "stream-ae alerts --json --idle-timeout 30",
)


def format_alert(alert: Alert) -> str:
    """One table row: the top feature with its observed and expected value when the alert
    carries them (schema v3), and ``across a gap`` after the model when its window spans a gap
    in the stream (schema v4, ``STREAM_AE_GAP_POLICY=mark``).

    >>> from stream_ae.alerts import parse_alert
    >>> from stream_ae.core.records import build_alert
    >>> import numpy as np
    >>> one = np.ones(1)
    >>> alert = parse_alert(build_alert(
    ...     stream="cpu", status="open", score=0.99, raw_score=0.99, stage="calibration",
    ...     threshold=0.9, distance=3.0, start_ts_ms=0, end_ts_ms=60_000, window_size=2,
    ...     topic="t", partition=0, offset=5, model_name="m", model_version="v1",
    ...     feature_names=["value"], contributions=one, directions=one, steps=one,
    ...     observed=one, expected=one, emitted_at_ms=0, gap=True))
    >>> format_alert(alert).split()[-3:]
    ['across', 'a', 'gap']
    """
    top = alert.top_feature
    feature = f"{top.name} {top.direction} {top.contribution:.0%}"
    if top.observed is not None and top.expected is not None:
        feature += f" ({top.observed:.4g} vs {top.expected:.4g})"
    end = alert.window_end.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    row = (
        f"{alert.status:<9}{alert.stream[:19]:<20}{end:<26}"
        f"{alert.score:>9.5f}  {feature[:33]:<34}{alert.model_version[:23]:<24}"
    )
    return f"{row}across a gap" if alert.window_gap else row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Follow the alerts topic and print each alert once (replays are de-duplicated by "
        "alert_id; messages that are not alerts of a known schema version are skipped with a "
        "warning). Kafka settings come from STREAM_AE_*."
    )
    parser.add_argument("--from-beginning", action="store_true", help="start at the oldest alert")
    parser.add_argument("--max", type=int, dest="max_alerts", help="stop after this many alerts")
    parser.add_argument(
        "--idle-timeout", type=float, help="stop after this many seconds without alerts"
    )
    parser.add_argument("--json", action="store_true", help="print the JSON of each alert")
    parser.add_argument("--bootstrap-servers", help="override STREAM_AE_BOOTSTRAP_SERVERS")


def run(args: argparse.Namespace) -> int:
    overrides = {"bootstrap_servers": args.bootstrap_servers} if args.bootstrap_servers else {}
    settings = load_settings(overrides)
    if not args.json:
        print(HEADER, flush=True)
    try:
        for alert in follow(
            settings,
            from_beginning=args.from_beginning,
            idle_timeout_s=args.idle_timeout,
            max_alerts=args.max_alerts,
        ):
            text = orjson.dumps(alert.payload).decode() if args.json else format_alert(alert)
            print(text, flush=True)
    except KeyboardInterrupt:
        pass
    return 0
