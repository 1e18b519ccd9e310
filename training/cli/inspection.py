"""Looking into a model: ``report`` (plots and a markdown summary), ``embed`` (latent codes of
windows) and ``export-encoder`` (the encoder alone, as .keras)."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.cli import common
from training.cli.common import Command
from training.cli.data_options import add_data_options, load_data


def add_report(parser: argparse.ArgumentParser) -> None:
    common.add_artifact_options(parser)
    add_data_options(parser)
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

    artifact = common.load_artifact(args)
    series = load_data(args, artifact.spec.feature_names)
    report = build_report(
        artifact,
        series,
        args.out,
        stride=args.stride,
        train_fraction=args.trained_fraction,
        title=args.title,
        reconstructions=args.reconstructions,
        policy=common.alert_policy(),
    )
    print(report.summary)
    print("wrote " + ", ".join(str(p) for p in report.files))
    return 0


def add_embed(parser: argparse.ArgumentParser) -> None:
    common.add_artifact_options(parser)
    add_data_options(parser)
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

    artifact = common.load_artifact(args)
    series = load_data(args, artifact.spec.feature_names)
    windows, codes = embed_series(artifact, series, stride=args.stride)
    print(
        f"wrote {write_embeddings(args.out, windows, codes)}: {codes.shape[0]} x {codes.shape[1]}"
    )
    if args.encoder_out:
        print(f"wrote {export_encoder(artifact, args.encoder_out)}")
    return 0


def add_export_encoder(parser: argparse.ArgumentParser) -> None:
    common.add_artifact_options(parser)
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE.keras", help="where the encoder goes"
    )


def run_export_encoder(args: argparse.Namespace) -> int:
    from training.embed import export_encoder

    print(f"wrote {export_encoder(common.load_artifact(args), args.out)}")
    return 0


COMMANDS = {
    "report": Command(
        add_report,
        run_report,
        "plots (PNG) and a markdown summary of a model",
        (
            "stream-ae-train report --artifact artifacts/cpu --csv cpu.csv --out reports/cpu",
            "stream-ae-train report --artifact artifacts/nab --nab data/nab/data "
            "--trained-fraction 0.15 --out reports/nab",
            "stream-ae-train report --csv cpu.csv --labels incidents.csv --out reports/cpu",
        ),
        required="(--csv FILE [FILE ...] | --nab DIR | --topic TOPIC) --out DIR",
    ),
    "embed": Command(
        add_embed,
        run_embed,
        "latent codes of windows from the encoder",
        ("stream-ae-train embed --artifact artifacts/cpu --csv cpu.csv --out codes.npz",),
        required="(--csv FILE [FILE ...] | --nab DIR | --topic TOPIC) --out FILE",
    ),
    "export-encoder": Command(
        add_export_encoder,
        run_export_encoder,
        "save the encoder as .keras",
        ("stream-ae-train export-encoder --artifact artifacts/cpu --out encoder.keras",),
        required="--out FILE.keras",
    ),
}
