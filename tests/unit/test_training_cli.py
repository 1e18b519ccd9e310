"""The ``stream-ae-train`` command line: help for every option, and the commands end to end on
a small NAB-layout directory (train, thresholds, report, embed, export-encoder, registry)."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest

from stream_ae.model.artifacts import load_artifact
from tests.support.timeline_png import timeline_description
from training.cli import COMMANDS, build_parser, main
from training.detector import DEFAULT_DETECTOR
from training.plots import HISTOGRAM_PNG, LATENT_PNG, LOSS_PNG, RECONSTRUCTIONS_PNG, REPORT_MD


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_command_explains_every_option() -> None:
    commands = _subparsers(build_parser())
    assert set(commands) == set(COMMANDS)
    for name, parser in commands.items():
        assert parser.description, name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and len(action.help) > 8, (name, action.dest)
        text = parser.format_help()
        assert "usage:" in text


def test_python_m_training_help_needs_no_tensorflow() -> None:
    for argv in (["--help"], ["train", "--help"], ["refit", "--help"]):
        result = subprocess.run(
            [sys.executable, "-m", "training", *argv], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
    assert "--every DURATION" in result.stdout and "--once" in result.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, contextlib, io\n"
            "from training.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['train', '--help'])\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.stdout.split() == ["False", "False"], probe.stderr


def _write_nab(root: Path) -> Path:
    """Two NAB-layout files of a noisy daily-like sine, a labelled spike in each."""
    data = root / "data"
    labels: dict[str, list[list[str]]] = {}
    rng = np.random.default_rng(0)
    for category, name, level in (("realA", "one.csv", 10.0), ("artB", "two.csv", 50.0)):
        (data / category).mkdir(parents=True)
        times = np.datetime64("2024-01-01T00:00") + np.arange(700) * np.timedelta64(5, "m")
        values = (
            level + 3 * np.sin(np.arange(700) * 2 * np.pi / 48) + 0.2 * rng.standard_normal(700)
        )
        values[500:506] += 15  # the labelled anomaly
        lines = ["timestamp,value"] + [
            f"{str(t).replace('T', ' ')}:00,{v:.4f}" for t, v in zip(times, values, strict=True)
        ]
        (data / category / name).write_text("\n".join(lines) + "\n")
        labels[f"{category}/{name}"] = [
            [
                f"{str(times[490]).replace('T', ' ')}:00.000000",
                f"{str(times[515]).replace('T', ' ')}:00.000000",
            ]
        ]
    (root / "combined_windows.json").write_text(json.dumps(labels))
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nab")
    data = _write_nab(root)
    artifact = root / "artifact"
    code = main(
        [
            "train",
            "--nab",
            str(data),
            "--train-fraction",
            "0.5",
            "--scaling",
            "stream",
            # The encoder tests below feed whole windows: a reconstruct model, not the default.
            "--kind",
            "reconstruct",
            "--window",
            "16",
            "--hidden",
            "8",
            "--epochs",
            "4",
            "--stride",
            "2",
            "--per-stream-thresholds",
            "--min-stream-windows",
            "20",
            "--quiet",
            "--out",
            str(artifact),
            "--name",
            "nab",
            "--version",
            "v1",
        ]
    )
    assert code == 0
    return data, artifact


def test_train_then_thresholds(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, artifact_dir = trained
    artifact = load_artifact(artifact_dir)
    assert (artifact.name, artifact.version, artifact.scaling.mode) == ("nab", "v1", "stream")
    assert artifact.metrics["train_windows"] > 0
    # The default detector's post-processing travels in the artifact (detector.json).
    assert artifact.post == DEFAULT_DETECTOR.post
    capsys.readouterr()
    assert main(["thresholds", "--artifact", str(artifact_dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    scopes = [row["scope"] for row in shown["thresholds"]]
    assert scopes == ["global", "artB/two.csv", "realA/one.csv"]
    assert all(
        row["method"] == "far" and "false-alert rate" in row["how"] for row in shown["thresholds"]
    )
    assert main(["thresholds", "--artifact", str(artifact_dir)]) == 0
    assert "distance thr" in capsys.readouterr().out


def test_calibrate_refits_the_thresholds(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, artifact_dir = trained
    out = tmp_path / "recalibrated"
    argv = ["calibrate", "--artifact", str(artifact_dir), "--nab", str(data), "--stride", "2"]
    assert (
        main([*argv, "--threshold-method", "pot", "--threshold-level", "0.99", "--out", str(out)])
        == 0
    )
    assert "peaks over threshold" in capsys.readouterr().out
    before, after = load_artifact(artifact_dir), load_artifact(out)
    assert after.calibration.default.method == "pot" and not after.calibration.per_stream
    assert after.metrics["recalibrated_from"] == "v1"
    # Same model, same preprocessing: only the calibration changed.
    assert after.spec == before.spec and after.scaling == before.scaling
    assert after.calibration.default.details["windows"] == after.metrics["calibration_windows"]


def test_report_writes_the_plots_and_the_summary(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, artifact_dir = trained
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                "--artifact",
                str(artifact_dir),
                "--nab",
                str(data),
                "--trained-fraction",
                "0.5",
                "--stride",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    for name in (LOSS_PNG, RECONSTRUCTIONS_PNG, LATENT_PNG, HISTOGRAM_PNG):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = (out / REPORT_MD).read_text()
    assert "| labelled anomaly |" in summary and "| normal |" in summary
    assert "| training part |" in summary
    # A score timeline per series, drawn by the shared function: every row of the file, a
    # score per window (stride 1, as a worker scores), its labelled window shaded.
    timelines = sorted(out.glob("timeline_*.png"))
    assert [p.name for p in timelines] == [
        "timeline_artB_two.csv.png",
        "timeline_realA_one.csv.png",
    ]
    window = load_artifact(artifact_dir).spec.window
    for png in timelines:
        drawn = timeline_description(png)
        assert f"700 values, {700 - window + 1} scores (final score, model score)" in drawn
        assert "1 labelled windows" in drawn
        assert f"![{png.stem}]({png.name})" in summary


def test_report_on_your_own_csv_counts_alerts_against_your_labels(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, artifact_dir = trained
    csv = data / "realA" / "one.csv"
    labels = tmp_path / "incidents.csv"
    # The spike's range (steps of 5 minutes), in epoch seconds (the reader detects the unit);
    # the stream is the file stem.
    start, end = (
        (np.datetime64("2024-01-01T00:00") + np.array([490, 515]) * 5)
        .astype("datetime64[s]")
        .astype(np.int64)
    )
    labels.write_text(f"stream,start,end\none,{start},{end}\n")
    base = ["report", "--artifact", str(artifact_dir), "--csv", str(csv), "--stride", "2"]
    assert main([*base, "--labels", str(labels), "--out", str(tmp_path / "r")]) == 0
    summary = (tmp_path / "r" / REPORT_MD).read_text()
    assert "| labelled anomaly |" in summary
    assert "labelled windows hit: **1 of 1** (missed 0)" in summary
    opened = int(summary.split("- alerts opened: ")[1].split()[0])
    drawn = timeline_description(tmp_path / "r" / "timeline_one.png")
    assert f"1 labelled windows, {opened} alerts opened" in drawn
    assert "false alerts: **" in summary and "median delay" in summary
    # NAB labels name NAB keys: with --csv they would match nothing, so they are refused.
    capsys.readouterr()
    nab_labels = ["--nab-labels", str(data.parent / "combined_windows.json")]
    assert main([*base, *nab_labels, "--out", str(tmp_path / "x")]) == 1
    assert "--nab-labels applies to --nab data only" in capsys.readouterr().err
    labels.write_text(f"stream,start,end\ntwo,{start},{end}\n")
    assert main([*base, "--labels", str(labels), "--out", str(tmp_path / "y")]) == 2
    assert "stream(s) not in the data: two (streams: one)" in capsys.readouterr().err


def test_embed_and_export_encoder(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, artifact_dir = trained
    codes_path, encoder_path = tmp_path / "codes.npz", tmp_path / "encoder.keras"
    assert (
        main(
            [
                "embed",
                "--artifact",
                str(artifact_dir),
                "--nab",
                str(data),
                "--out",
                str(codes_path),
                "--encoder-out",
                str(encoder_path),
            ]
        )
        == 0
    )
    saved = np.load(codes_path)
    assert saved["codes"].shape == (2 * (700 - 15), 8)
    assert set(saved["streams"].tolist()) == {"realA/one.csv", "artB/two.csv"}
    encoder = keras.saving.load_model(encoder_path, safe_mode=True)
    assert encoder.output_shape == (None, 8)
    # The exported encoder alone, fed the artifact's scaling, gives the same codes.
    from training.data import load_nab_labels, read_nab
    from training.windows import all_windows, scale_windows

    artifact = load_artifact(artifact_dir)
    series = read_nab(data, labels=load_nab_labels(data.parent / "combined_windows.json"))
    windows = all_windows(series, 16)
    codes = encoder.predict(scale_windows(artifact.scaling, windows), verbose=0)
    assert np.allclose(codes, saved["codes"], atol=1e-5)
    assert (
        main(
            ["export-encoder", "--artifact", str(artifact_dir), "--out", str(tmp_path / "e2.keras")]
        )
        == 0
    )
    assert (tmp_path / "e2.keras").stat().st_size > 0


def test_registry_commands(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, artifact_dir = trained
    registry = str(tmp_path / "registry")
    assert main(["publish", str(artifact_dir), "--registry", registry]) == 0
    assert "first champion" in capsys.readouterr().out
    assert main(["list", "--registry", registry, "--name", "nab", "--json", "--history"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["champion"] == "v1"
    assert [v["status"] for v in listing["versions"]] == ["champion"]
    assert listing["history"][0]["event"] == "promote"
    # A rollback with no earlier champion fails with a message, not a traceback.
    assert main(["rollback", "--registry", registry, "--name", "nab"]) == 1
    assert "no earlier champion" in capsys.readouterr().err
    assert (
        main(["promote", "v1", "--registry", registry, "--name", "nab", "--reason", "again"]) == 0
    )
    assert main(["list", "--registry", registry, "--name", "nab"]) == 0
    assert "champion" in capsys.readouterr().out


def _command(name: str) -> argparse.ArgumentParser:
    return _subparsers(build_parser())[name]


def test_options_come_from_the_dataclasses_with_their_defaults() -> None:
    from stream_ae.model.network import ModelSpec
    from training.cli import common, options
    from training.fit import FitConfig
    from training.gate import GateConfig

    args = _command("train").parse_args(["--csv", "x.csv", "--quiet"])
    assert common.build_fit_config(args) == FitConfig(verbose=0)
    assert common.build_gate_config(args) == GateConfig()
    assert common.build_spec(args, ["value"]) == ModelSpec()
    # train builds on the default detector, the one `evaluate nab` measures, and says so.
    assert common.build_fit_config(args, DEFAULT_DETECTOR.fit) == replace(
        DEFAULT_DETECTOR.fit, verbose=0
    )
    assert common.build_spec(args, ["value"], base=DEFAULT_DETECTOR.model) == replace(
        DEFAULT_DETECTOR.model, features=1, feature_names=("value",)
    )
    assert common.build_post(args) == DEFAULT_DETECTOR.post
    no_post = _command("train").parse_args(["--csv", "x.csv", "--no-post-processing"])
    assert common.build_post(no_post) is None
    help_text = " ".join(_command("train").format_help().split())
    for cls, base in ((FitConfig, DEFAULT_DETECTOR.fit), (ModelSpec, DEFAULT_DETECTOR.model)):
        for f in options.cli_fields(cls, exclude=("features", "feature_names")):
            assert options.option_name(f) in help_text, f.name
            if f.name not in ("horizon", "latent"):
                assert f"(default: {getattr(base, f.name)})" in help_text, f.name
    assert "(default: 4 (predict), 8 (predict, composite), 0 (reconstruct))" in help_text
    assert "--no-post-processing" in help_text
    # Given options change only their field; a reconstruct model has no horizon, a predict
    # model given on ModelSpec's defaults gets a horizon of its own.
    args = _command("train").parse_args(
        ["--csv", "x.csv", "--kind", "predict", "--epochs", "3", "--no-per-stream-thresholds"]
    )
    assert common.build_spec(args, ["value"]).horizon == common.DEFAULT_HORIZON
    assert options.given(FitConfig, args) == {"epochs": 3, "per_stream_calibration": False}
    back = _command("train").parse_args(["--csv", "x.csv", "--kind", "reconstruct"])
    assert common.build_spec(back, ["value"], base=DEFAULT_DETECTOR.model).horizon == 0


def test_refit_options_not_given_keep_the_champions_values() -> None:
    from training.cli import common, options
    from training.fit import FitConfig

    parser = _command("refit")
    assert "(default: the champion's)" in " ".join(parser.format_help().split())
    args = parser.parse_args(["--once"])
    assert common.spec_given(args) == {} and options.given(FitConfig, args) == {}
    args = parser.parse_args(["--once", "--window", "32", "--scaling", "stream"])
    assert common.spec_given(args) == {"window": 32}
    assert options.given(FitConfig, args) == {"scaling": "stream"}


def test_every_command_ends_with_real_examples() -> None:
    for name, parser in _subparsers(build_parser()).items():
        text = parser.format_help()
        examples = text.split("examples:\n", 1)[1].strip().splitlines()
        assert 1 <= len(examples) <= 3, name
        for line in examples:
            words = shlex.split(line)
            argv = words[1:]
            assert words[0] == "stream-ae-train" and argv[0] == name
            parser.parse_args(argv[1:])  # each example parses


def test_the_nab_detector_restates_no_default() -> None:
    from dataclasses import fields

    from stream_ae.model.network import ModelSpec
    from training.evaluation.nab_run import NAB_FIT, NAB_MODEL, DetectorParams
    from training.fit import FitConfig

    own = {f.name for f in fields(DetectorParams)}
    assert not own & ({f.name for f in fields(FitConfig)} | {f.name for f in fields(ModelSpec)})
    differs = {f.name for f in fields(FitConfig) if getattr(NAB_FIT, f.name) != f.default}
    assert differs == {"epochs", "learning_rate", "patience", "verbose"}
    assert DetectorParams.from_dict(DetectorParams().to_dict()) == DetectorParams()
    assert DetectorParams.of(window=16, calibration_level=0.99).fit.threshold_level == 0.99
    assert DetectorParams.of(window=16).model == ModelSpec(**{**NAB_MODEL.__dict__, "window": 16})


def test_a_refit_kind_change_brings_its_horizon() -> None:
    from stream_ae.model.network import ModelSpec
    from training.cli.refit import _spec_changes

    parser = _command("refit")
    champion = ModelSpec(kind="predict", window=16, horizon=4)
    assert _spec_changes(parser.parse_args(["--once"]), champion) == {}
    back = parser.parse_args(["--once", "--kind", "reconstruct"])
    assert _spec_changes(back, champion) == {"kind": "reconstruct", "horizon": 0}
    to_predict = parser.parse_args(["--once", "--kind", "predict"])
    assert _spec_changes(to_predict, ModelSpec(window=16)) == {"kind": "predict", "horizon": 8}


def test_post_processing_from_a_detector_file(tmp_path: Path) -> None:
    """--post-processing FILE: another detector's post-processing (the SKAB detector shipped in
    docs/skab/detector.json is the one `stream-ae evaluate skab` measures); bad files are one
    line each."""
    from stream_ae.core.postprocess import PostParams
    from stream_ae.errors import ConfigError
    from training.cli import common
    from training.evaluation.skab_run import SkabParams

    shipped = Path(__file__).parents[2] / "docs" / "skab" / "detector.json"
    args = _command("train").parse_args(["--csv", "x.csv", "--post-processing", str(shipped)])
    assert common.build_post(args) == SkabParams().post()
    # Its alert policy too: the one `evaluate skab` runs (resolve after 10 windows).
    assert common.build_detector(args) == (SkabParams().post(), SkabParams().policy())
    assert SkabParams().policy().resolve_after == 10
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(PostParams(hold=100).to_dict()))
    args = _command("train").parse_args(["--csv", "x.csv", "--post-processing", str(bare)])
    assert common.build_post(args) == PostParams(hold=100)
    with pytest.raises(SystemExit):  # the two detector options exclude each other
        _command("train").parse_args(
            ["--csv", "x.csv", "--no-post-processing", "--post-processing", str(bare)]
        )
    bad = {
        "missing.json": None,
        "text.json": "not json",
        "list.json": "[1, 2]",
        "unknown.json": json.dumps({"post": {"hold": 1, "smoothing": 3}}),
        "invalid.json": json.dumps({"post": {"hold": -5}}),
        "policy_key.json": json.dumps({"post": {"hold": 1}, "policy": {"resolve": 3}}),
        "policy_value.json": json.dumps({"policy": {"resolve_after": 0}}),
        "top_key.json": json.dumps({"post": {"hold": 1}, "polcy": {}}),
    }
    for name, text in bad.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        args = _command("train").parse_args(["--csv", "x.csv", "--post-processing", str(path)])
        with pytest.raises(ConfigError, match=r"^--post-processing: .*detector\.json") as caught:
            common.build_post(args)
        assert "\n" not in str(caught.value), name


def test_train_writes_the_detector_files_alert_policy(tmp_path: Path) -> None:
    """`train --post-processing FILE`: the file's "policy" lands in the artifact's
    detector.json, which the worker and the evaluators read."""
    from stream_ae.core.alerting import AlertPolicy
    from stream_ae.core.postprocess import PostParams

    rng = np.random.default_rng(0)
    times = np.datetime64("2024-01-01T00:00") + np.arange(400) * np.timedelta64(5, "m")
    values = rng.normal(size=400)
    rows = [f"{str(t).replace('T', ' ')}:00,{v:.4f}" for t, v in zip(times, values, strict=True)]
    (tmp_path / "data.csv").write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    detector = tmp_path / "detector.json"
    detector.write_text(
        json.dumps({"post": PostParams(hold=10).to_dict(), "policy": {"resolve_after": 10}})
    )
    out = tmp_path / "artifact"
    argv = ["train", "--csv", str(tmp_path / "data.csv"), "--window", "8", "--hidden", "4"]
    argv += ["--epochs", "1", "--quiet", "--post-processing", str(detector), "--out", str(out)]
    assert main(argv) == 0
    artifact = load_artifact(out)
    assert (artifact.post, artifact.policy) == (PostParams(hold=10), AlertPolicy(resolve_after=10))
    assert json.loads((out / "detector.json").read_text())["policy"] == {"resolve_after": 10}
