"""The ``stream-ae-train`` command line (also ``python -m training``).

Commands: ``train``, ``thresholds``, ``calibrate``, ``report``, ``embed``, ``export-encoder``,
``publish``, ``promote``, ``rollback``, ``list`` and ``refit``; ``stream-ae-train COMMAND
--help`` explains every option. Defaults for Kafka, Redis and the registry come from the
``STREAM_AE_*`` settings (see the README), read only when a command needs them, so ``--help``
works without any environment and without loading TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

log = logging.getLogger("training")

DEFAULT_NAB_LABELS = "combined_windows.json"


# --- shared option groups ------------------------------------------------------------------


def _add_data_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
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
        "--time-column", default="timestamp", help="CSV time column (default: %(default)s)"
    )
    group.add_argument(
        "--value-columns",
        metavar="A,B",
        help="CSV value column(s), comma-separated (default: every other column)",
    )
    group.add_argument(
        "--stream-column",
        metavar="COL",
        help="CSV long format: the column naming each row's stream",
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
        help="NAB label windows (default: combined_windows.json next to the data directory, "
        "if present)",
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
        "back from now such as 6h or 7d",
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


def _add_spec_options(parser: argparse.ArgumentParser, *, optional_spec: bool = False) -> None:
    note = " (default: the champion's spec)" if optional_spec else ""
    group = parser.add_argument_group("model" + note)
    group.add_argument(
        "--kind",
        choices=["reconstruct", "predict", "composite"],
        default=None if optional_spec else "reconstruct",
        help="reconstruct the window, predict its last --horizon steps, or both (composite)"
        + ("" if optional_spec else "; default: %(default)s"),
    )
    group.add_argument("--window", type=int, help="window length in events (default: 64)")
    group.add_argument("--hidden", type=int, help="LSTM units per layer (default: 64)")
    group.add_argument("--layers", type=int, help="stacked LSTM layers (default: 1)")
    group.add_argument("--latent", type=int, help="size of the latent code (default: --hidden)")
    group.add_argument(
        "--dropout", type=float, help="dropout after each LSTM layer, in [0, 1) (default: 0)"
    )
    group.add_argument(
        "--reverse",
        action="store_true",
        default=None,
        help="reconstruct the window reversed (easier to learn for long windows)",
    )
    group.add_argument(
        "--horizon", type=int, help="steps predicted by predict/composite models (default: 8)"
    )
    group.add_argument(
        "--masking",
        action="store_true",
        default=None,
        help="mask padded steps: series shorter than the window become padded windows",
    )


def _add_fit_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fitting and calibration")
    group.add_argument("--epochs", type=int, default=30, help="most epochs (default: %(default)s)")
    group.add_argument(
        "--batch-size", type=int, default=64, help="windows per batch (default: %(default)s)"
    )
    group.add_argument(
        "--learning-rate",
        type=float,
        default=1e-3,
        help="Adam learning rate (default: %(default)s)",
    )
    group.add_argument(
        "--patience",
        type=int,
        default=5,
        help="early stopping: epochs without a better validation loss (default: %(default)s); "
        "the best weights are restored",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="last fraction of every series' windows held out for validation and calibration "
        "(time-ordered, never shuffled; default: %(default)s)",
    )
    group.add_argument(
        "--stride", type=int, default=1, help="one training window every N events (default: 1)"
    )
    group.add_argument(
        "--seed", type=int, default=0, help="random seed: same data and seed, same model"
    )
    group.add_argument(
        "--scaling",
        choices=["global", "stream"],
        default="global",
        help="global: constants fitted on the training data; stream: each stream by its own "
        "running mean/std (series of different levels; default: %(default)s)",
    )
    group.add_argument(
        "--threshold-method",
        choices=["quantile", "far", "pot"],
        default="far",
        help="quantile: empirical quantile of normal distances; far: target false-alert rate "
        "1 - level per window; pot: peaks over threshold (generalised Pareto tail; default: "
        "%(default)s)",
    )
    group.add_argument(
        "--threshold-level",
        type=float,
        default=0.999,
        help="the quantile / 1 - false-alert rate, in (0.5, 1) (default: %(default)s)",
    )
    group.add_argument(
        "--per-stream-thresholds",
        action="store_true",
        help="calibrate every stream with enough validation windows on its own",
    )
    group.add_argument(
        "--min-stream-windows",
        type=int,
        default=50,
        help="validation windows a stream needs for its own threshold (default: %(default)s)",
    )
    group.add_argument(
        "--min-length",
        type=int,
        default=8,
        help="with --masking, the shortest series used as a padded window (default: %(default)s)",
    )
    group.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_registry_options(parser: argparse.ArgumentParser, *, notify: bool = True) -> None:
    group = parser.add_argument_group("registry")
    group.add_argument(
        "--registry",
        type=Path,
        metavar="DIR",
        help="registry root (default: $STREAM_AE_MODEL_PATH, else artifacts/model)",
    )
    group.add_argument(
        "--name", help="model name in the registry (default: $STREAM_AE_MODEL_NAME, else default)"
    )
    if notify:
        group.add_argument(
            "--redis-url",
            help="notify workers of a new champion on the Redis pub/sub channel "
            "stream-ae.models (default: $STREAM_AE_REDIS_URL if set, else no notification)",
        )


def _add_gate_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("champion/challenger gate")
    group.add_argument(
        "--error-tolerance",
        type=float,
        default=0.10,
        help="the challenger's error may exceed the champion's by this fraction "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--far-tolerance",
        type=float,
        default=0.002,
        help="its false-alert rate per window may exceed the champion's by this much "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--gate-fraction",
        type=float,
        default=0.2,
        help="most recent fraction of every series held out to compare the two models on "
        "(default: %(default)s; unused while there is no champion)",
    )
    group.add_argument(
        "--force", action="store_true", help="promote without the gate (recorded as forced)"
    )


def _add_artifact_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model to use (an artifact, or a registry version)")
    group.add_argument(
        "--artifact",
        type=Path,
        metavar="DIR",
        help="an artifact directory (or a registry root: its --name champion)",
    )
    group.add_argument(
        "--registry",
        type=Path,
        metavar="DIR",
        help="registry root (default: $STREAM_AE_MODEL_PATH, else artifacts/model)",
    )
    group.add_argument(
        "--name", help="model name in the registry (default: $STREAM_AE_MODEL_NAME, else default)"
    )
    group.add_argument("--version", help="registry version (default: the champion)")


# --- resolving options ---------------------------------------------------------------------


def _settings() -> Any:
    from stream_ae.settings import load_settings

    return load_settings()


def _registry_root(args: argparse.Namespace) -> Path:
    return Path(args.registry) if args.registry else Path(_settings().model_path)


def _model_name(args: argparse.Namespace) -> str:
    return str(args.name or _settings().model_name)


def _registry(args: argparse.Namespace) -> Any:
    from training.registry import Registry, redis_notifier

    url = getattr(args, "redis_url", None) or os.environ.get("STREAM_AE_REDIS_URL")
    if not url:
        return Registry(_registry_root(args), None)
    settings = _settings()  # the ACL credentials are secrets of the settings, as for the worker
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    notifier = redis_notifier(url, username=settings.redis_username, password=password)
    return Registry(_registry_root(args), notifier)


def _artifact_dir(args: argparse.Namespace) -> Path:
    from stream_ae.errors import ArtifactError
    from stream_ae.model.artifacts import resolve_artifact_dir

    if args.artifact:
        return resolve_artifact_dir(args.artifact, _model_name(args))
    root, name = _registry_root(args), _model_name(args)
    if args.version:
        return root / name / args.version
    from stream_ae.model.artifacts import read_champion

    version = read_champion(root, name)
    if version is None:
        raise ArtifactError(f"no --artifact given and {root}/{name} has no champion")
    return root / name / version


def _load_artifact(args: argparse.Namespace) -> Any:
    from stream_ae.model.artifacts import load_artifact

    return load_artifact(_artifact_dir(args))


def _split(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _bootstrap(args: argparse.Namespace) -> str:
    return str(args.bootstrap_servers or _settings().bootstrap_servers)


def _consumer_security() -> dict[str, Any]:
    """The Kafka security options of the settings, as the worker uses them."""
    from stream_ae.io.kafka import security_config

    return security_config(_settings())


def load_data(args: argparse.Namespace, feature_names: Sequence[str] | None = None) -> list[Any]:
    """The series the data options name (after --train-fraction and --max-gap)."""
    from training import data

    series: list[data.Series]
    if args.csv:
        series = []
        for path in args.csv:
            series += data.read_csv(
                path,
                time_column=args.time_column,
                value_columns=_split(args.value_columns),
                stream_column=args.stream_column,
            )
    elif args.nab:
        labels_path = args.nab_labels or args.nab.parent / DEFAULT_NAB_LABELS
        labels = data.load_nab_labels(labels_path) if labels_path.is_file() else None
        series = data.read_nab(args.nab, categories=_split(args.nab_categories), labels=labels)
    elif args.topic:
        series, stats = data.replay_topic(
            _bootstrap(args),
            args.topic,
            feature_names=_split(args.feature_names) or list(feature_names or ["value"]),
            start_ms=data.parse_time_bound(args.start),
            end_ms=data.parse_time_bound(args.end),
            max_events_per_stream=args.max_events_per_stream,
            timeout_s=args.replay_timeout,
            consumer_config=_consumer_security(),
            progress=sys.stderr.isatty(),
        )
        log.info(
            "replayed %d messages (%d used, invalid: %s) in %.1fs",
            stats.messages,
            stats.used,
            stats.invalid or "none",
            stats.seconds,
        )
    else:
        return []
    if args.max_gap:
        series = data.split_at_gaps(series, int(data.parse_duration_s(args.max_gap) * 1000))
    if args.train_fraction:
        series = data.head_fraction(series, args.train_fraction)
    series = [s for s in series if len(s)]
    log.info("data: %s", data.describe(series))
    return series


def _spec(args: argparse.Namespace, features: int, names: Sequence[str]) -> Any:
    from stream_ae.model.network import ModelKind, ModelSpec

    kind = args.kind or "reconstruct"
    return ModelSpec(
        kind=cast(ModelKind, kind),
        window=args.window or 64,
        features=features,
        feature_names=tuple(names),
        hidden=args.hidden or 64,
        layers=args.layers or 1,
        latent=args.latent,
        dropout=args.dropout or 0.0,
        reverse=bool(args.reverse),
        horizon=0 if kind == "reconstruct" else (args.horizon or 8),
        masking=bool(args.masking),
    )


def _spec_given(args: argparse.Namespace) -> bool:
    keys = ("kind", "window", "hidden", "layers", "latent", "dropout", "reverse", "horizon")
    return any(getattr(args, k) is not None for k in (*keys, "masking"))


def _fit_config(args: argparse.Namespace) -> Any:
    from training.fit import FitConfig, default_verbosity

    return FitConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        patience=args.patience,
        val_fraction=args.val_fraction,
        train_stride=args.stride,
        seed=args.seed,
        scaling=args.scaling,
        threshold_method=args.threshold_method,
        threshold_level=args.threshold_level,
        per_stream_calibration=args.per_stream_thresholds,
        verbose=0 if args.quiet else default_verbosity(),
        min_length=args.min_length,
        min_stream_windows=args.min_stream_windows,
    )


def _gate_config(args: argparse.Namespace) -> Any:
    from training.gate import GateConfig

    return GateConfig(error_tolerance=args.error_tolerance, far_tolerance=args.far_tolerance)


def _feature_names(args: argparse.Namespace, series: Sequence[Any]) -> list[str]:
    names = _split(getattr(args, "feature_names", None)) or _split(
        getattr(args, "value_columns", None)
    )
    features = series[0].features if series else 1
    if names and len(names) == features:
        return names
    return ["value"] if features == 1 else [f"f{i}" for i in range(features)]


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# --- commands ------------------------------------------------------------------------------


def add_train(parser: argparse.ArgumentParser) -> None:
    _add_data_options(parser)
    _add_spec_options(parser)
    _add_fit_options(parser)
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
    _add_registry_options(parser)
    _add_gate_options(parser)


def run_train(args: argparse.Namespace) -> int:
    from stream_ae.model.artifacts import load_artifact
    from training.fit import fit_series, save_fit
    from training.refit import RefitPlan, refit_once

    series = load_data(args)
    if not series:
        raise ValueError("the data options selected no events")
    names = _feature_names(args, series)
    spec = _spec(args, series[0].features, names)
    config = _fit_config(args)
    if args.out:
        result = fit_series(series, spec, config)
        path = save_fit(result, args.out, name=_model_name(args), version=args.version)
        print(
            f"wrote {path}: {result.metrics['train_windows']} training windows, "
            f"{result.metrics['epochs_run']} epochs in {result.train_seconds:.1f}s, "
            f"validation loss {result.metrics['val_loss']:.4g}"
        )
    else:
        registry = _registry(args)
        plan = RefitPlan(
            name=_model_name(args),
            spec=spec,
            fit=config,
            gate=_gate_config(args),
            gate_fraction=args.gate_fraction,
            exclude="none",
            warm_start=False,
        )
        if args.force:
            result = fit_series(series, spec, config)
            from training.refit import publish_gated

            published = publish_gated(
                registry, plan.name, result, gate_series=[], gate=plan.gate, force=True
            )
            version, promoted, reason = published.version, True, published.reason
        else:
            outcome = refit_once(registry, plan, lambda: series)
            version, promoted, reason = outcome.version, outcome.promoted, outcome.reason
        path = registry.path(plan.name, version)
        print(f"published {path}: {'promoted' if promoted else 'not promoted'} ({reason})")
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


def add_thresholds(parser: argparse.ArgumentParser) -> None:
    _add_artifact_options(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_thresholds(args: argparse.Namespace) -> int:
    from stream_ae.model.artifacts import CalibrationSet, read_manifest
    from training.calibrate import describe_thresholds, format_thresholds

    directory = _artifact_dir(args)
    manifest = read_manifest(directory, verify=True)
    # Only the calibration is needed: no model load, no TensorFlow.
    calibration = CalibrationSet.from_dict(json.loads((directory / "calibration.json").read_text()))
    rows = describe_thresholds(calibration)
    if args.json:
        _print_json(
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
    _add_artifact_options(parser)
    _add_data_options(parser)
    group = parser.add_argument_group("calibration")
    group.add_argument(
        "--threshold-method",
        choices=["quantile", "far", "pot"],
        default="far",
        help="how the threshold is derived (see train --help; default: %(default)s)",
    )
    group.add_argument(
        "--threshold-level", type=float, default=0.999, help="level (default: %(default)s)"
    )
    group.add_argument(
        "--per-stream-thresholds", action="store_true", help="one threshold per stream"
    )
    group.add_argument(
        "--min-stream-windows",
        type=int,
        default=50,
        help="windows a stream needs for its own threshold (default: %(default)s)",
    )
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
    from stream_ae.model.artifacts import save_artifact
    from training.calibrate import describe_thresholds, fit_calibration_set, format_thresholds
    from training.fit import all_windows, pad_side, run_model

    if not args.out and not args.publish:
        raise ValueError("say where the recalibrated artifact goes: --out DIR or --publish")
    artifact = _load_artifact(args)
    spec = artifact.spec
    series = load_data(args, spec.feature_names)
    side = pad_side(spec)
    windows = all_windows(series, spec.window, args.stride, pad=side if spec.masking else None)
    # Thresholds are fitted on normal data: labelled anomalies, if any, are left out.
    windows = windows.select(~windows.labels(series))
    errors = run_model(artifact.model, spec, artifact.scaling, windows).errors
    calibration = fit_calibration_set(
        errors,
        windows.streams,
        method=args.threshold_method,
        level=args.threshold_level,
        per_stream=args.per_stream_thresholds,
        min_windows=args.min_stream_windows,
    )
    metrics = dict(artifact.metrics) | {
        "recalibrated_from": artifact.version,
        "calibration_windows": len(windows),
    }

    def write(directory: Path, version: str | None) -> Path:
        return save_artifact(
            directory,
            model=artifact.model,
            spec=spec,
            scaling=artifact.scaling,
            calibration=calibration,
            name=artifact.name,
            version=version,
            metrics=metrics,
        )

    if args.out:
        print(f"wrote {write(args.out, None)}")
    if args.publish:
        args.name = args.name or artifact.name
        registry = _registry(args)
        version = registry.publish(artifact.name, write)
        if args.promote:
            registry.promote(artifact.name, version, reason=f"recalibrated {artifact.version}")
        print(f"published {registry.path(artifact.name, version)}")
    print(format_thresholds(describe_thresholds(calibration)))
    return 0


def add_report(parser: argparse.ArgumentParser) -> None:
    _add_artifact_options(parser)
    _add_data_options(parser)
    group = parser.add_argument_group("report")
    group.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory for the PNGs and report.md",
    )
    group.add_argument("--title", help="title of report.md")
    group.add_argument(
        "--trained-fraction",
        type=float,
        metavar="F",
        help="the model trained on the first fraction F of every series: report those windows "
        "apart from the unseen normal ones",
    )
    group.add_argument(
        "--stride", type=int, default=1, help="score one window every N events (default: 1)"
    )
    group.add_argument(
        "--reconstructions", type=int, default=6, help="windows drawn (default: %(default)s)"
    )


def run_report(args: argparse.Namespace) -> int:
    from training.plots import build_report

    artifact = _load_artifact(args)
    series = load_data(args, artifact.spec.feature_names)
    report = build_report(
        artifact,
        series,
        args.out,
        stride=args.stride,
        train_fraction=args.trained_fraction,
        title=args.title,
        reconstructions=args.reconstructions,
    )
    print(report.summary)
    print("wrote " + ", ".join(str(p) for p in report.files))
    return 0


def add_embed(parser: argparse.ArgumentParser) -> None:
    _add_artifact_options(parser)
    _add_data_options(parser)
    group = parser.add_argument_group("embeddings")
    group.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help="codes per window: .npz (codes, streams, times) or .csv (one row per window)",
    )
    group.add_argument(
        "--encoder-out", type=Path, metavar="FILE.keras", help="also save the encoder alone"
    )
    group.add_argument(
        "--stride", type=int, default=1, help="embed one window every N events (default: 1)"
    )


def run_embed(args: argparse.Namespace) -> int:
    from training.embed import embed_series, export_encoder, write_embeddings

    artifact = _load_artifact(args)
    series = load_data(args, artifact.spec.feature_names)
    windows, codes = embed_series(artifact, series, stride=args.stride)
    print(
        f"wrote {write_embeddings(args.out, windows, codes)}: {codes.shape[0]} x {codes.shape[1]}"
    )
    if args.encoder_out:
        print(f"wrote {export_encoder(artifact, args.encoder_out)}")
    return 0


def add_export_encoder(parser: argparse.ArgumentParser) -> None:
    _add_artifact_options(parser)
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE.keras", help="where the encoder goes"
    )


def run_export_encoder(args: argparse.Namespace) -> int:
    from training.embed import export_encoder

    print(f"wrote {export_encoder(_load_artifact(args), args.out)}")
    return 0


def add_publish(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", type=Path, help="the artifact directory to publish")
    _add_registry_options(parser)
    _add_gate_options(parser)
    _add_data_options(parser, required=False)


def run_publish(args: argparse.Namespace) -> int:
    from stream_ae.model.artifacts import load_artifact, read_manifest
    from training.gate import decide, evaluate_artifact
    from training.refit import labels_filter, load_champion

    registry = _registry(args)
    name = args.name or str(read_manifest(args.artifact, verify=False).get("name"))
    champion = load_champion(registry, name)
    version = registry.publish_dir(name, args.artifact)
    path = registry.path(name, version)
    if args.force or champion is None:
        reason = "forced (gate skipped)" if args.force else "first champion"
        registry.promote(name, version, reason=reason)
        print(f"published and promoted {path} ({reason})")
        return 0
    series = load_data(args, champion.spec.feature_names)
    if not series:
        print(f"published {path} as a candidate: no gate data given (see --csv/--nab/--topic)")
        return 0
    keep = labels_filter(series)  # labelled anomalies are not "normal data"
    decision = decide(
        evaluate_artifact(load_artifact(path), series, keep=keep),
        evaluate_artifact(champion, series, keep=keep),
        _gate_config(args),
    )
    if decision.accepted:
        registry.promote(name, version, reason=decision.reason, gate=decision.to_dict())
    else:
        registry.reject(name, version, decision.reason, gate=decision.to_dict())
    print(
        f"published {path}: {'promoted' if decision.accepted else 'rejected'} ({decision.reason})"
    )
    return 0 if decision.accepted else 3


def add_promote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", help="the version to make champion")
    _add_registry_options(parser)
    parser.add_argument("--reason", default="promoted by hand", help="recorded in the history")
    parser.add_argument(
        "--allow-rejected", action="store_true", help="promote even a rejected candidate"
    )


def run_promote(args: argparse.Namespace) -> int:
    from stream_ae.errors import ArtifactError

    registry, name = _registry(args), _model_name(args)
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
    _add_registry_options(parser)
    parser.add_argument(
        "--to", metavar="VERSION", help="this version (default: the champion before the current)"
    )
    parser.add_argument("--reason", default="rollback", help="recorded in the history")


def run_rollback(args: argparse.Namespace) -> int:
    registry, name = _registry(args), _model_name(args)
    version = registry.rollback(name, to=args.to, reason=args.reason)
    print(f"{name}: rolled back, champion is now {version}")
    return 0


def add_list(parser: argparse.ArgumentParser) -> None:
    _add_registry_options(parser, notify=False)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--history", action="store_true", help="also print champion changes")


def run_list(args: argparse.Namespace) -> int:
    from training.registry import Registry

    registry, name = Registry(_registry_root(args)), _model_name(args)
    versions = registry.list_versions(name)
    if args.json:
        _print_json(
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
        help="replay the events of the last DURATION (default: %(default)s)",
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
        "--replay-timeout", type=float, default=600.0, metavar="S", help="replay time limit"
    )
    group.add_argument(
        "--exclude",
        choices=["alerts", "scores", "both", "none"],
        default="both",
        help="leave out of training the windows covered by alerts on the alerts topic, those "
        "the champion scores above its threshold, both (default), or none",
    )
    group.add_argument("--alerts-topic", help="alerts topic (default: $STREAM_AE_ALERTS_TOPIC)")
    group.add_argument(
        "--no-warm-start",
        action="store_true",
        help="fit from scratch even when the champion has the same spec",
    )
    _add_spec_options(parser, optional_spec=True)
    _add_fit_options(parser)
    _add_registry_options(parser)
    _add_gate_options(parser)


def run_refit(args: argparse.Namespace) -> int:
    from training import data
    from training.refit import RefitPlan, load_champion, refit_once, run_every

    registry, name = _registry(args), _model_name(args)
    settings = _settings()
    topic = args.topic or settings.input_topics[0]
    bootstrap = _bootstrap(args)
    alerts_topic = args.alerts_topic or settings.alerts_topic

    def job() -> None:
        champion = load_champion(registry, name)
        spec = None
        if _spec_given(args) or champion is None:
            base = champion.spec if champion else None
            names = list(base.feature_names) if base else ["value"]
            spec = _spec(args, len(names), names)
        start_ms = data.parse_time_bound("-" + args.since)
        feature_names = spec.feature_names if spec else champion.spec.feature_names  # type: ignore[union-attr]

        def load_series() -> list[data.Series]:
            series, stats = data.replay_topic(
                bootstrap,
                topic,
                feature_names=feature_names,
                start_ms=start_ms,
                max_events_per_stream=args.max_events_per_stream,
                timeout_s=args.replay_timeout,
                consumer_config=_consumer_security(),
            )
            log.info("replayed %s: %s", topic, stats)
            return series

        def load_alerts() -> list[dict[str, Any]]:
            return data.read_alerts(
                bootstrap,
                alerts_topic,
                model_name=name,
                start_ms=start_ms,
                consumer_config=_consumer_security(),
            )

        plan = RefitPlan(
            name=name,
            spec=spec,
            fit=_fit_config(args),
            gate=_gate_config(args),
            gate_fraction=args.gate_fraction,
            exclude=args.exclude,
            warm_start=not args.no_warm_start,
        )
        outcome = refit_once(
            registry,
            plan,
            load_series,
            load_alerts if args.exclude in ("alerts", "both") else None,
        )
        print(
            f"refit {name}: {outcome.version} {'promoted' if outcome.promoted else 'not promoted'}"
            f" ({outcome.reason}); warm start: {outcome.warm_start}, excluded windows: "
            f"{outcome.excluded_windows}, fit {outcome.train_seconds:.1f}s",
            flush=True,
        )

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


# name -> (add_arguments, run, one-line help)
COMMANDS: dict[
    str,
    tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str],
] = {
    "train": (add_train, run_train, "fit a model on CSV, NAB or a topic replay"),
    "thresholds": (add_thresholds, run_thresholds, "show each threshold and how it was derived"),
    "calibrate": (add_calibrate, run_calibrate, "refit an artifact's thresholds on new data"),
    "report": (add_report, run_report, "plots (PNG) and a markdown summary of a model"),
    "embed": (add_embed, run_embed, "latent codes of windows from the encoder"),
    "export-encoder": (add_export_encoder, run_export_encoder, "save the encoder as .keras"),
    "publish": (add_publish, run_publish, "publish an artifact, gated against the champion"),
    "promote": (add_promote, run_promote, "make a version the champion"),
    "rollback": (add_rollback, run_rollback, "return to the previous champion"),
    "list": (add_list, run_list, "versions of a model with their status"),
    "refit": (add_refit, run_refit, "periodic or one-shot refit: replay, fit, gate, publish"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-ae-train",
        description="Train, calibrate, inspect and publish stream-ae models. Defaults for "
        "Kafka, Redis and the registry come from STREAM_AE_* settings.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add, run, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add(command)
        command.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``stream-ae-train``; returns the exit status."""
    from stream_ae.errors import StreamAEError

    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args._run(args) or 0)
    except (StreamAEError, ValueError, OSError) as exc:
        print(f"stream-ae-train {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
