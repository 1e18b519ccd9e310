"""``stream-ae-train train``: fit a model on CSV, NAB or a topic replay, to a directory or to the
registry (gated against the champion)."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.cli import common
from training.cli.common import Command
from training.cli.data_options import add_data_options, feature_names_of, load_data
from training.detector import DEFAULT_DETECTOR


def add_train(parser: argparse.ArgumentParser) -> None:
    add_data_options(parser)
    # Defaults: the detector the NAB evaluation chose (training.detector).
    common.add_model_options(parser, base=DEFAULT_DETECTOR.model)
    common.add_fit_options(parser, base=DEFAULT_DETECTOR.fit)
    common.add_post_options(parser)
    out = parser.add_argument_group("output (--out, or publish to the registry)")
    out.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write the artifact to this (new or empty) directory instead of the registry",
    )
    out.add_argument("--version", help="version string (default: UTC time, sortable)")
    out.add_argument(
        "--export-encoder",
        type=Path,
        metavar="FILE.keras",
        help="also save the encoder alone as an embedding model",
    )
    out.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="also write the report (plots and report.md) for the training data to DIR",
    )
    common.add_registry_options(parser)
    common.add_gate_options(parser, plan=("gate_fraction", "shadow"))


def run_train(args: argparse.Namespace) -> int:
    from stream_ae.model.artifacts import load_artifact
    from training.data import time_span
    from training.fit import fit_series, save_fit
    from training.refit import publish_gated, refit_once

    # First: a bad --post-processing file costs no data read.
    post, detector_policy = common.build_detector(args)
    series = load_data(args)
    if not series:
        raise ValueError("the data options selected no events")
    spec = common.build_spec(args, feature_names_of(args, series), base=DEFAULT_DETECTOR.model)
    config = common.build_fit_config(args, base=DEFAULT_DETECTOR.fit)
    if args.out:
        result = fit_series(series, spec, config)
        path = save_fit(
            result,
            args.out,
            name=common.model_name(args),
            version=args.version,
            extra_metrics={"train_span_ms": time_span(series)},
            post=post,
            policy=detector_policy,
        )
        print(
            f"wrote {path}: {result.metrics['train_windows']} training windows, "
            f"{result.metrics['epochs_run']} epochs in {result.train_seconds:.1f}s, "
            f"validation loss {result.metrics['val_loss']:.4g}"
        )
    else:
        registry = common.registry(args)
        # A first fit: no warm start, and nothing to exclude but labelled anomalies.
        plan = common.build_plan(
            args,
            name=common.model_name(args),
            spec=spec,
            fit=config,
            post=post,
            detector_policy=detector_policy,
            exclude="none",
            warm_start=False,
            policy=common.alert_policy(),
        )
        if args.force:
            result = fit_series(series, spec, config)
            published = publish_gated(
                registry,
                plan.name,
                result,
                gate_series=[],
                gate=plan.gate,
                force=True,
                extra_metrics={"train_span_ms": time_span(series)},
                post=post,
                detector_policy=detector_policy,
            )
            version, promoted, reason = published.version, True, published.reason
        else:
            outcome = refit_once(registry, plan, lambda: series)
            version, promoted, reason = outcome.version, outcome.promoted, outcome.reason
        where = registry.location(plan.name, version)
        print(f"published {where}: {'promoted' if promoted else 'not promoted'} ({reason})")
        path = registry.path(plan.name, version)  # local: a copy of it on object storage
    if args.export_encoder or args.report:
        artifact = load_artifact(path)
        if args.export_encoder:
            from training.embed import export_encoder

            print(f"wrote {export_encoder(artifact, args.export_encoder)}")
        if args.report:
            from training.plots import build_report

            report = build_report(artifact, series, args.report)
            print("wrote " + ", ".join(str(p) for p in report.files))
    return 0


COMMANDS = {
    "train": Command(
        add_train,
        run_train,
        "fit a model on CSV, NAB or a topic replay",
        (
            "stream-ae-train train --csv cpu.csv --time-column time --out artifacts/cpu",
            "stream-ae-train train --nab data/nab/data --train-fraction 0.15 --out artifacts/nab",
            "stream-ae-train train --csv a.csv b.csv --scaling stream --per-stream-thresholds "
            "--registry artifacts/model --name cpu",
        ),
        required="(--csv FILE [FILE ...] | --nab DIR | --topic TOPIC)",
    ),
}
