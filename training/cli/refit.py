"""``stream-ae-train refit``: replay the input topic, fit a challenger from the champion's own
definition, gate it, publish; once (cron) or every DURATION until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import threading
from typing import Any

from training.cli import common, options
from training.cli.common import Command
from training.cli.data_options import bootstrap, consumer_security
from training.detector import DEFAULT_DETECTOR
from training.fit import FitConfig

log = logging.getLogger("training")


def add_refit(parser: argparse.ArgumentParser) -> None:
    schedule = parser.add_mutually_exclusive_group(required=True)
    schedule.add_argument(
        "--every",
        metavar="DURATION",
        help="refit now and then every DURATION (e.g. 6h) until SIGTERM/SIGINT",
    )
    schedule.add_argument(
        "--once", action="store_true", help="refit once and exit (cron, Kubernetes CronJob)"
    )
    group = parser.add_argument_group("recent data (a replay of the input topic)")
    group.add_argument(
        "--topic", help="input topic (default: the first of $STREAM_AE_INPUT_TOPICS)"
    )
    group.add_argument(
        "--since",
        default="7d",
        metavar="DURATION",
        help="train on the events of the last DURATION before the newest event in the topic "
        "(event time, never the wall clock; default: %(default)s)",
    )
    group.add_argument(
        "--from",
        dest="start",
        metavar="TIME",
        help="absolute lower bound instead of --since: ISO-8601 or epoch ms",
    )
    group.add_argument(
        "--to", dest="end", metavar="TIME", help="absolute upper bound: ISO-8601 or epoch ms"
    )
    group.add_argument(
        "--max-events-per-stream",
        type=int,
        default=20_000,
        metavar="N",
        help="keep the newest N events of each stream (default: %(default)s)",
    )
    group.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="Kafka brokers (default: $STREAM_AE_BOOTSTRAP_SERVERS)",
    )
    group.add_argument(
        "--replay-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="give up a replay after this many seconds (default: %(default)s)",
    )
    group.add_argument("--alerts-topic", help="alerts topic (default: $STREAM_AE_ALERTS_TOPIC)")
    common.add_model_options(parser, inherit=True)
    common.add_fit_options(parser, inherit=True)
    common.add_registry_options(parser)
    common.add_gate_options(parser, plan=("gate_fraction", "exclude", "warm_start", "shadow"))


def run_refit(args: argparse.Namespace) -> int:
    from training import data
    from training.refit import load_champion, refit_once, run_every

    registry, name = common.registry(args), common.model_name(args)
    config = common.settings()
    topic = args.topic or config.input_topics[0]
    servers = bootstrap(args)
    alerts_topic = args.alerts_topic or config.alerts_topic
    window = data.ReplayWindow.from_options(args.since, args.start, args.end)
    fit_changes = options.given(FitConfig, args) | {
        "verbose": common.build_fit_config(args).verbose
    }

    def job() -> None:
        champion = load_champion(registry, name)
        spec = None
        if champion is None:  # a first fit: the options, on the default detector
            spec = common.build_spec(args, ["value"], base=DEFAULT_DETECTOR.model)
        feature_names = spec.feature_names if spec else champion.spec.feature_names  # type: ignore[union-attr]

        def load_series() -> tuple[list[data.Series], data.ReplayStats]:
            return data.replay_topic(
                servers,
                topic,
                feature_names=feature_names,
                start_ms=window.start_ms,
                end_ms=window.end_ms,
                max_events_per_stream=args.max_events_per_stream,
                timeout_s=args.replay_timeout,
                consumer_config=consumer_security(),
            )

        def load_alerts() -> list[dict[str, Any]]:
            return data.read_alerts(
                servers,
                alerts_topic,
                model_name=name,
                start_ms=window.start_ms,
                consumer_config=consumer_security(),
            )

        plan = common.build_plan(
            args,
            name=name,
            spec=spec,
            spec_changes=_spec_changes(args, champion.spec) if champion else {},
            fit=common.build_fit_config(args, base=DEFAULT_DETECTOR.fit),
            fit_changes=fit_changes,
            post=DEFAULT_DETECTOR.post,
            detector_policy=DEFAULT_DETECTOR.policy,
            policy=config.alert_policy(),
        )
        outcome = refit_once(
            registry,
            plan,
            lambda: window.apply(*load_series()),
            load_alerts if plan.exclude in ("alerts", "both") else None,
        )
        print(outcome.summary(name), flush=True)

    if args.once:
        job()
        return 0
    interval_s = data.parse_duration_s(args.every)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("refitting %s every %s", name, args.every)
    failures = run_every(interval_s, job, stop)
    return 1 if failures else 0


def _spec_changes(args: argparse.Namespace, champion_spec: Any) -> dict[str, Any]:
    """The spec fields the options change from the champion's (a kind change brings its
    horizon along, as for ``train``)."""
    target = common.build_spec(args, champion_spec.feature_names, base=champion_spec)
    return {
        f.name: getattr(target, f.name)
        for f in dataclasses.fields(target)
        if getattr(target, f.name) != getattr(champion_spec, f.name)
    }


COMMANDS = {
    "refit": Command(
        add_refit,
        run_refit,
        "periodic or one-shot refit: replay, fit, gate, publish",
        (
            "stream-ae-train refit --once --name cpu --since 7d",
            "stream-ae-train refit --every 6h --name cpu --exclude both",
            "stream-ae-train refit --once --name cpu --from 2026-01-01 --to 2026-01-08 --window 32",
        ),
        required="(--once | --every DURATION)",
    ),
}
