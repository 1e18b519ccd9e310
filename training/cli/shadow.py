"""``stream-ae-train shadow``: what a challenger would alert on, against the champion, over the
most recent traffic, without promoting anything.

Both models replay the same events (a topic replay, CSV files or NAB) through the worker's own
processor and alert policy (:mod:`training.shadow`); the command prints the comparison the
publish/refit gate would decide on, and exits 3 where that gate would refuse the challenger.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.cli import common, options
from training.cli.common import Command
from training.cli.data_options import add_data_options, load_data
from training.gate import GateConfig

# The exit status of a challenger the gate would refuse (as ``publish`` uses for a rejection).
REJECTED = 3


def add_shadow(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("challenger (an artifact, or a registry version)")
    group.add_argument(
        "--artifact", type=Path, metavar="DIR", help="the challenger's artifact directory"
    )
    group.add_argument(
        "--version",
        help="the challenger as a registry version (a full version, a unique prefix, latest)",
    )
    champion = parser.add_argument_group("champion (default: the registry's)")
    common.add_registry_location(champion)
    champion.add_argument(
        "--champion",
        type=Path,
        metavar="DIR",
        help="compare with this artifact directory instead of the registry's champion",
    )
    add_data_options(parser)
    replay = parser.add_argument_group("shadow replay")
    replay.add_argument(
        "--since",
        metavar="DURATION",
        help="with --topic: the events of the last DURATION before the newest event in the "
        "topic (event time, never the wall clock); same as --from DURATION",
    )
    options.add_options(replay, GateConfig, exclude=("error_tolerance", "far_tolerance"))
    replay.add_argument("--json", action="store_true", help="print the figures as JSON")


def run_shadow(args: argparse.Namespace) -> int:
    from stream_ae.model.artifacts import load_artifact
    from stream_ae.model.registry import local_version_dir, read_champion, resolve_version
    from training.shadow import format_verdict, shadow_gate

    if bool(args.artifact) == bool(args.version):
        raise ValueError("name the challenger: --artifact DIR or --version VERSION (one of them)")
    if args.since:
        if args.start or not args.topic:
            raise ValueError("--since needs --topic and no --from (it is --from DURATION)")
        args.start = args.since
    root, name = common.registry_root(args), common.model_name(args)
    if args.artifact:
        challenger = load_artifact(args.artifact)
    else:
        version = resolve_version(root, name, args.version)
        challenger = load_artifact(local_version_dir(root, name, version))
    champion = None
    if args.champion:
        champion = load_artifact(args.champion)
    elif (champion_version := read_champion(root, name)) is not None:
        champion = load_artifact(local_version_dir(root, name, champion_version))
    series = load_data(args, challenger.spec.feature_names)
    if not series:
        raise ValueError("the data options selected no events")
    gate = options.build(GateConfig, args)
    verdict = shadow_gate(
        champion,
        challenger,
        series,
        policy=common.alert_policy(),
        max_alert_ratio=gate.max_alert_ratio,
        min_excess_alerts=gate.min_excess_alerts,
    )
    if args.json:
        from training.refit import shadow_record

        quality = {
            role: result.quality.to_dict()
            for role, result in (("champion", verdict.champion), ("challenger", verdict.challenger))
            if result is not None and result.quality is not None
        }
        common.print_json(shadow_record(verdict) | ({"quality": quality} if quality else {}))
    else:
        print(format_verdict(verdict))
    return 0 if verdict.passed else REJECTED


COMMANDS = {
    "shadow": Command(
        add_shadow,
        run_shadow,
        "compare a challenger's alerts with the champion's on recent traffic (no promotion)",
        (
            "stream-ae-train shadow --artifact artifacts/cpu2 --name cpu --topic metrics "
            "--since 1d",
            "stream-ae-train shadow --version latest --name cpu --csv last-week.csv "
            "--labels incidents.csv",
        ),
        required="(--artifact DIR | --version VERSION) (--csv FILE [FILE ...] | --nab DIR | "
        "--topic TOPIC)",
    ),
}
