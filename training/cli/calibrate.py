"""``thresholds`` (show each threshold and how it was derived) and ``calibrate`` (refit an
artifact's thresholds on new data)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from training.cli import common, options
from training.cli.common import Command
from training.cli.data_options import add_data_options, load_data
from training.fit import FitConfig

# The FitConfig fields a recalibration uses (the model and its scaling stay as they are).
CALIBRATION_FIELDS = (
    "threshold_method",
    "threshold_level",
    "per_stream_calibration",
    "min_stream_windows",
)


def add_thresholds(parser: argparse.ArgumentParser) -> None:
    common.add_artifact_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_thresholds(args: argparse.Namespace) -> int:
    from stream_ae.model.artifacts import CalibrationSet, read_manifest
    from training.calibrate import describe_thresholds, format_thresholds

    directory = common.artifact_dir(args)
    manifest = read_manifest(directory, verify=True)
    # Only the calibration is needed: no model load, no TensorFlow.
    calibration = CalibrationSet.from_dict(json.loads((directory / "calibration.json").read_text()))
    rows = describe_thresholds(calibration)
    if args.json:
        common.print_json(
            {
                "model": manifest["name"],
                "version": manifest["version"],
                "thresholds": [r.to_dict() for r in rows],
            }
        )
    else:
        print(f"{manifest['name']} {manifest['version']} ({directory})")
        print(format_thresholds(rows))
    return 0


def add_calibrate(parser: argparse.ArgumentParser) -> None:
    common.add_artifact_options(parser)
    add_data_options(parser)
    group = parser.add_argument_group("calibration")
    others = {f.name for f in options.cli_fields(FitConfig)} - set(CALIBRATION_FIELDS)
    options.add_options(group, FitConfig, exclude=others)
    group.add_argument(
        "--stride", type=int, default=1, help="one window every N events (default: 1)"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, metavar="DIR", help="write the new artifact here")
    out.add_argument(
        "--publish",
        action="store_true",
        help="publish it to the registry (as a candidate; add --promote to make it champion)",
    )
    out.add_argument("--promote", action="store_true", help="with --publish: make it champion")
    out.add_argument("--redis-url", help="notify workers on promotion (see train --help)")


def run_calibrate(args: argparse.Namespace) -> int:
    from stream_ae.model.artifacts import write_artifact
    from training.calibrate import describe_thresholds, format_thresholds
    from training.model_runner import run_model
    from training.windows import all_windows, pad_side

    if not args.out and not args.publish:
        raise ValueError("say where the recalibrated artifact goes: --out DIR or --publish")
    artifact = common.load_artifact(args)
    spec = artifact.spec
    config = options.build(FitConfig, args)
    series = load_data(args, spec.feature_names)
    side = pad_side(spec)
    windows = all_windows(series, spec.window, args.stride, pad=side if spec.masking else None)
    # Thresholds are fitted on normal data: labelled anomalies, if any, are left out.
    windows = windows.select(~windows.labels(series))
    errors = run_model(artifact.model, spec, artifact.scaling, windows).errors
    calibration = config.calibrate(errors, windows.streams)
    recalibrated = dataclasses.replace(
        artifact,
        version="",  # a new version: the model is the same, its thresholds are not
        calibration=calibration,
        metrics=dict(artifact.metrics)
        | {"recalibrated_from": artifact.version, "calibration_windows": len(windows)},
    )
    if args.out:
        print(f"wrote {write_artifact(recalibrated, args.out)}")
    if args.publish:
        args.name = args.name or artifact.name
        registry = common.registry(args)
        version = registry.publish(
            artifact.name, lambda directory, v: write_artifact(recalibrated, directory, version=v)
        )
        if args.promote:
            registry.promote(artifact.name, version, reason=f"recalibrated {artifact.version}")
        print(f"published {registry.location(artifact.name, version)}")
    print(format_thresholds(describe_thresholds(calibration)))
    return 0


COMMANDS = {
    "thresholds": Command(
        add_thresholds,
        run_thresholds,
        "show each threshold and how it was derived",
        (
            "stream-ae-train thresholds --artifact artifacts/cpu",
            "stream-ae-train thresholds --registry artifacts/model --name cpu --json",
        ),
    ),
    "calibrate": Command(
        add_calibrate,
        run_calibrate,
        "refit an artifact's thresholds on new data",
        (
            "stream-ae-train calibrate --artifact artifacts/cpu --csv last-week.csv "
            "--threshold-method pot --threshold-level 0.995 --out artifacts/cpu-pot",
        ),
        required="(--csv FILE [FILE ...] | --nab DIR | --topic TOPIC)",
    ),
}
