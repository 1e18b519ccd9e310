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
    common.add_gate_options(parser, plan=())
    add_data_options(parser, required=False)


def run_publish(args: argparse.Namespace) -> int:
    from stream_ae.model.artifacts import read_manifest
    from training.refit import gate_and_promote, labels_filter, load_champion

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
    )
    rejected = outcome.decision is not None and not outcome.promoted
    status = "promoted" if outcome.promoted else "rejected" if rejected else "kept as a candidate"
    print(f"published {registry.path(name, version)}: {status} ({outcome.reason})")
    return 3 if rejected else 0


def add_promote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", help="the version to make champion")
    common.add_registry_options(parser)
    parser.add_argument("--reason", default="promoted by hand", help="recorded in the history")
    parser.add_argument(
        "--allow-rejected", action="store_true", help="promote even a rejected candidate"
    )


def run_promote(args: argparse.Namespace) -> int:
    from stream_ae.errors import ArtifactError

    registry, name = common.registry(args), common.model_name(args)
    record = registry.decision(name, args.version)
    if record.get("status") == "rejected" and not args.allow_rejected:
        raise ArtifactError(
            f"{name}/{args.version} was rejected ({record.get('reason')}); "
            "add --allow-rejected to promote it anyway"
        )
    registry.promote(name, args.version, reason=args.reason)
    print(f"{name}: champion is now {args.version}")
    return 0


def add_rollback(parser: argparse.ArgumentParser) -> None:
    common.add_registry_options(parser)
    parser.add_argument(
        "--to", metavar="VERSION", help="this version (default: the champion before the current)"
    )
    parser.add_argument("--reason", default="rollback", help="recorded in the history")


def run_rollback(args: argparse.Namespace) -> int:
    registry, name = common.registry(args), common.model_name(args)
    version = registry.rollback(name, to=args.to, reason=args.reason)
    print(f"{name}: rolled back, champion is now {version}")
    return 0


def add_list(parser: argparse.ArgumentParser) -> None:
    common.add_registry_options(parser, notify=False)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--history", action="store_true", help="also print champion changes")


def run_list(args: argparse.Namespace) -> int:
    from training.registry import Registry

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
        print(f"{registry.root / name}: no versions")
        return 0
    print(f"{'version':<26} {'status':<10} {'kind':<12} {'window':>6} {'val_loss':>9}  reason")
    for v in versions:
        loss = v.metrics.get("val_loss")
        loss_text = f"{loss:.4g}" if isinstance(loss, int | float) else "-"
        print(
            f"{v.version:<26} {v.status:<10} {v.kind:<12} {v.window:>6} {loss_text:>9}  {v.reason}"
        )
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
