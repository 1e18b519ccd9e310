"""The registry commands: ``publish`` (gated against the champion), ``promote``, ``rollback``
and ``list``."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.cli import common
from training.cli.common import Command
from training.cli.data_options import add_data_options, load_data


def add_publish(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path, help="the artifact directory to publish")
    common.add_registry_options(parser)
    common.add_gate_options(parser, plan=("shadow",))
    add_data_options(parser, required=False)


def run_publish(args: argparse.Namespace) -> int:
    from stream_ae.model.artifacts import read_manifest
    from training.refit import gate_and_promote, labels_filter, load_champion
    from training.shadow import format_verdict

    registry = common.registry(args)
    name = args.name or str(read_manifest(args.artifact, verify=False).get("name"))
    champion = load_champion(registry, name)
    version = registry.publish_dir(name, args.artifact)
    series = []
    if champion is not None and not args.force:
        series = load_data(args, champion.spec.feature_names)
    outcome = gate_and_promote(
        registry,
        name,
        version,
        champion,
        gate_series=series,
        gate=common.build_gate_config(args),
        keep=labels_filter(series),  # labelled anomalies are not "normal data"
        force=args.force,
        # The data given is the recent traffic both models replay, as a worker would.
        shadow_series=series if args.shadow is not False else (),
        policy=common.alert_policy(),
    )
    if outcome.shadow is not None:
        print(format_verdict(outcome.shadow))
    status = (
        "promoted"
        if outcome.promoted
        else "rejected"
        if outcome.rejected
        else "kept as a candidate"
    )
    print(f"published {registry.location(name, version)}: {status} ({outcome.reason})")
    return 3 if outcome.rejected else 0


FORCE_HELP = (
    "promote a model whose window or features differ from the champion's (running workers "
    "refuse it: roll it out as a new worker group, see docs/operations.md)"
)


def add_promote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "version", help="the version to make champion: a full version, a unique prefix, latest"
    )
    common.add_registry_options(parser)
    parser.add_argument("--reason", default="promoted by hand", help="recorded in the history")
    parser.add_argument(
        "--allow-rejected", action="store_true", help="promote even a rejected candidate"
    )
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def run_promote(args: argparse.Namespace) -> int:
    registry, name = common.registry(args), common.model_name(args)
    version = registry.promote(
        name,
        args.version,
        reason=args.reason,
        allow_rejected=args.allow_rejected,
        force=args.force,
    )
    print(f"{name}: champion is now {version}")
    return 0


def add_rollback(parser: argparse.ArgumentParser) -> None:
    common.add_registry_options(parser)
    parser.add_argument(
        "--to", metavar="VERSION", help="this version (default: the champion before the current)"
    )
    parser.add_argument("--reason", default="rollback", help="recorded in the history")
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def run_rollback(args: argparse.Namespace) -> int:
    registry, name = common.registry(args), common.model_name(args)
    version = registry.rollback(name, to=args.to, reason=args.reason, force=args.force)
    print(f"{name}: rolled back, champion is now {version}")
    return 0


def add_list(parser: argparse.ArgumentParser) -> None:
    common.add_registry_options(parser, notify=False)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--history", action="store_true", help="also print champion changes")


def run_list(args: argparse.Namespace) -> int:
    from training.registry import Registry, format_versions

    registry, name = Registry(common.registry_root(args)), common.model_name(args)
    versions = registry.list_versions(name)
    if args.json:
        common.print_json(
            {
                "name": name,
                "champion": registry.champion(name),
                "versions": [v.to_dict() for v in versions],
                **({"history": registry.history(name)} if args.history else {}),
            }
        )
        return 0
    if not versions:
        print(f"{registry.root}/{name}: no versions")
        return 0
    print(format_versions(versions))
    if args.history:
        for entry in registry.history(name):
            print(f"{entry['at']}  {entry['event']:<8} {entry['version']}  ({entry['reason']})")
    return 0


COMMANDS = {
    "publish": Command(
        add_publish,
        run_publish,
        "publish an artifact, gated against the champion",
        (
            "stream-ae-train publish artifacts/cpu --registry artifacts/model --name cpu",
            "stream-ae-train publish artifacts/cpu2 --name cpu --csv last-week.csv",
        ),
        required="ARTIFACT_DIR",
    ),
    "promote": Command(
        add_promote,
        run_promote,
        "make a version the champion",
        ("stream-ae-train promote 20260107T120000123456Z --name cpu --reason 'checked by hand'",),
        required="VERSION",
    ),
    "rollback": Command(
        add_rollback,
        run_rollback,
        "return to the previous champion",
        ("stream-ae-train rollback --name cpu", "stream-ae-train rollback --name cpu --to VERSION"),
    ),
    "list": Command(
        add_list,
        run_list,
        "versions of a model with their status",
        ("stream-ae-train list --name cpu --history", "stream-ae-train list --name cpu --json"),
    ),
}
