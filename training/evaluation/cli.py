"""``stream-ae evaluate``: NAB evaluation of detectors.

Subcommands:

* ``score`` -- score a results directory in NAB's layout with our reimplementation of NAB v1.1's
  scorer (``training.evaluation.nab_score``), for every cost profile, each at the threshold
  NAB's sweep picks; print the table and write ``scores.json`` into the results directory.
  ``--baseline-dir`` scores a second detector (e.g. NAB's published HTM results) the same way,
  side by side.
* ``nab`` -- run a detector over the NAB data files; implemented in
  ``training.evaluation.nab_run``, imported only when this subcommand runs.
* ``skab`` -- run a detector over SKAB files and score it with SKAB's protocol; implemented in
  ``training.evaluation.skab_run``.
* ``csv`` -- the alerts a model opens on your own CSV files and, with ``--labels``, the
  labelled windows hit and missed, the false alerts and the delays; implemented in
  ``training.evaluation.csv_run``.
* ``cv`` -- cross-validated choice of post-processing and alert parameters for NAB and SKAB;
  implemented in ``training.evaluation.cv``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from training.evaluation.nab_score import (
    DEFAULT_PROBATION_PERCENT,
    CorpusScore,
    CostProfile,
    DetectorOutput,
    NABScoringError,
    Window,
    load_profiles,
    load_windows,
    read_results_dir,
    results_files,
    score_corpus,
)

HELP = "alert quality on your own CSVs, NAB and SKAB evaluation and scoring"

EXAMPLES = (
    "stream-ae evaluate nab NAB/ --out results --plot machine_temp",
    "stream-ae evaluate score results --windows NAB/labels/combined_windows.json "
    "--profiles NAB/config/profiles.json",
    "stream-ae evaluate csv cpu.csv --artifact artifacts/cpu --labels incidents.csv",
)

SCORES_FILE = "scores.json"

Handler = Callable[[argparse.Namespace], int]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` subcommands and their options to ``parser``."""
    sub = parser.add_subparsers(dest="evaluate_command", metavar="SUBCOMMAND", required=True)

    score = sub.add_parser(
        "score",
        help="score NAB results CSVs with NAB v1.1's scorer (all profiles)",
        description="Score a directory of detector results in NAB's layout "
        "(<category>/<detector>_<file>.csv or <category>/<file>.csv, columns timestamp,"
        "anomaly_score at least) with a reimplementation of NAB v1.1's scorer. For each cost "
        "profile the threshold is chosen by NAB's sweep over the whole corpus; the raw score is "
        "normalised so that the null detector scores 0 and the perfect detector 100. Prints a "
        f"table and writes {SCORES_FILE} into RESULTS_DIR.",
    )
    score.add_argument(
        "results_dir",
        type=Path,
        metavar="RESULTS_DIR",
        help="directory of results CSVs, one subdirectory per NAB category "
        f"({SCORES_FILE} is written here)",
    )
    score.add_argument(
        "--windows",
        type=Path,
        required=True,
        metavar="PATH",
        help="NAB's labelled anomaly windows, combined_windows.json (file -> [[start, end]])",
    )
    score.add_argument(
        "--profiles",
        type=Path,
        required=True,
        metavar="PATH",
        help="NAB's cost profiles, profiles.json (profile -> CostMatrix of tp/fp/fn weights)",
    )
    score.add_argument(
        "--baseline-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="results directory of a second detector (e.g. NAB's published numenta/HTM "
        "results) to score with the same scorer, on the same files, and show side by side",
    )
    score.add_argument(
        "--probation-percent",
        type=float,
        default=DEFAULT_PROBATION_PERCENT,
        metavar="FRACTION",
        help="leading fraction of each file left unscored, capped at FRACTION*5000 rows "
        "(default: %(default)s, NAB's)",
    )
    score.set_defaults(evaluate_handler=_run_score)

    nab = sub.add_parser(
        "nab",
        help="run a detector over the NAB data files and write NAB results CSVs",
        description="Run a detector over the NAB data files and write its results in NAB's "
        "layout, ready for `stream-ae evaluate score` (training.evaluation.nab_run).",
    )
    _add_nab_arguments(nab)
    nab.set_defaults(evaluate_handler=_run_nab)

    skab = sub.add_parser(
        "skab",
        help="run a detector over SKAB files and write SKAB predictions",
        description="Per SKAB file: fit on the first 400 rows, stream the rest through the "
        "worker's processor (no look-ahead), write <out>/<group>/<n>.csv (datetime;anomaly_pred), "
        "print SKAB's pooled F1, FAR and MAR and which sensors the alerts name "
        "(training.evaluation.skab_run).",
        epilog="examples:\n  stream-ae evaluate skab SKAB/ --out skab-results\n"
        "  stream-ae evaluate skab SKAB/ --out skab-results --only valve1 --plot valve1/1",
        formatter_class=parser.formatter_class,
    )
    from training.evaluation import skab_run

    skab_run.add_arguments(skab)
    skab.set_defaults(evaluate_handler=_run_skab)

    from training.evaluation import csv_run

    own = sub.add_parser(
        "csv",
        help="alerts of a model on your own CSV files; hits, misses, false alerts with --labels",
        description="Stream your own CSV files (read as every command reads them) through the "
        "worker's processor with a model and the alert policy of the STREAM_AE_* settings; "
        "print the alerts opened per stream and, with --labels FILE (a CSV stream,start,end), "
        "the labelled windows hit and missed, the false alerts and the median delay from a "
        "window's start to its first alert (training.evaluation.csv_run, scored by the code "
        "evaluate nab uses).",
        epilog="examples:\n" + "\n".join(f"  {line}" for line in csv_run.EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    csv_run.add_arguments(own)
    own.set_defaults(evaluate_handler=_run_csv)

    cv = sub.add_parser(
        "cv",
        help="cross-validate post-processing and alert parameters (NAB or SKAB)",
        description="Choose post-processing and alert parameters on training folds and score "
        "the fold left out (NAB: leave one category out; SKAB: leave one group out), from the "
        "per-window outputs kept by `evaluate nab|skab --trace-dir`; prints the pooled "
        "held-out score beside the in-sample one (training.evaluation.cv).",
    )
    from training.evaluation import cv as cv_module

    cv_module.add_arguments(cv)
    cv.set_defaults(evaluate_handler=_run_cv)


def _add_nab_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``evaluate nab``, defined by :mod:`training.evaluation.nab_run` (which
    imports no model runtime at module level, so this costs ``evaluate score`` no TensorFlow).
    """
    from training.evaluation import nab_run

    nab_run.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``evaluate`` subcommand; returns the process exit status."""
    handler: Handler = args.evaluate_handler
    return int(handler(args))


def _run_nab(args: argparse.Namespace) -> int:
    """``evaluate nab``: delegate to ``training.evaluation.nab_run``."""
    # Imported here, not at the top: running detectors loads the model runtime, which
    # `evaluate score` and `stream-ae --help` must not pay for.
    from training.evaluation import nab_run

    return int(nab_run.run(args))


def _run_skab(args: argparse.Namespace) -> int:
    """``evaluate skab``: delegate to ``training.evaluation.skab_run``."""
    from training.evaluation import skab_run

    return int(skab_run.run(args))


def _run_csv(args: argparse.Namespace) -> int:
    """``evaluate csv``: delegate to ``training.evaluation.csv_run``."""
    from training.evaluation import csv_run

    return int(csv_run.run(args))


def _run_cv(args: argparse.Namespace) -> int:
    """``evaluate cv``: delegate to ``training.evaluation.cv``."""
    from training.evaluation import cv

    return int(cv.run(args))


def _run_score(args: argparse.Namespace) -> int:
    """``evaluate score``: score RESULTS_DIR (and the baseline), print, write scores.json."""
    try:
        windows = load_windows(args.windows)
        profiles = load_profiles(args.profiles)
        results = _read_results(args.results_dir, windows)
        baseline = None
        if args.baseline_dir is not None:
            baseline = _read_results(args.baseline_dir, windows)
            baseline = _same_files(baseline, results, args.baseline_dir)
        detector_scores = _score_all(results, windows, profiles, args.probation_percent)
        baseline_scores = (
            None
            if baseline is None
            else _score_all(baseline, windows, profiles, args.probation_percent)
        )
    except NABScoringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print(_summary_table(args.results_dir, detector_scores, args.baseline_dir, baseline_scores))
    print()
    print(_file_table(detector_scores, baseline_scores))

    report = {
        "results_dir": str(args.results_dir),
        "windows": str(args.windows),
        "profiles": str(args.profiles),
        "probation_percent": args.probation_percent,
        "scores": _scores_json(detector_scores),
        "baseline": None
        if baseline_scores is None
        else {"dir": str(args.baseline_dir), "scores": _scores_json(baseline_scores)},
    }
    out_path = Path(args.results_dir) / SCORES_FILE
    try:
        out_path.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        print(f"error: cannot write {out_path}: {exc}", file=sys.stderr)
        return 1
    print(f"\nwrote {out_path}")
    return 0


def _read_results(
    results_dir: Path, windows: Mapping[str, Sequence[Window]]
) -> dict[str, DetectorOutput]:
    """Read a results directory, with a progress bar when stderr is a terminal."""
    paths = results_files(results_dir)
    progress = tqdm(
        paths, desc=f"reading {results_dir.name}", unit="file", disable=None, file=sys.stderr
    )
    return read_results_dir(results_dir, known_files=windows.keys(), paths=progress)


def _same_files(
    baseline: dict[str, DetectorOutput],
    results: Mapping[str, DetectorOutput],
    baseline_dir: Path,
) -> dict[str, DetectorOutput]:
    """The baseline restricted to the detector's files, so both are scored on one corpus."""
    missing = sorted(set(results) - set(baseline))
    if missing:
        # Still scored, but over fewer files: say so rather than compare unlike corpora quietly.
        print(
            f"warning: {baseline_dir} lacks {len(missing)} of the scored files: "
            + ", ".join(missing),
            file=sys.stderr,
        )
    return {key: output for key, output in baseline.items() if key in results}


def _score_all(
    results: Mapping[str, DetectorOutput],
    windows: Mapping[str, Sequence[Window]],
    profiles: Mapping[str, CostProfile],
    probation_percent: float,
) -> dict[str, CorpusScore]:
    """Every profile's corpus score, each at its own optimised threshold."""
    return {
        name: score_corpus(results, windows, profile, probation_percent=probation_percent)
        for name, profile in profiles.items()
    }


def _format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-align the first column, right-align the others."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _summary_table(
    results_dir: Path,
    scores: Mapping[str, CorpusScore],
    baseline_dir: Path | None,
    baseline_scores: Mapping[str, CorpusScore] | None,
) -> str:
    """One row per detector and profile: threshold, raw, null, perfect and normalised score."""
    header = ["detector / profile", "threshold", "raw", "null", "perfect", "normalised"]
    rows = []
    sources = [(results_dir, scores)]
    if baseline_dir is not None and baseline_scores is not None:
        sources.append((baseline_dir, baseline_scores))
    for directory, by_profile in sources:
        n_files = len(next(iter(by_profile.values())).files) if by_profile else 0
        for name, score in by_profile.items():
            rows.append(
                [
                    f"{directory.name} ({n_files} files) / {name}",
                    f"{score.threshold:.6f}",
                    f"{score.raw_score:.4f}",
                    f"{score.null_score:.2f}",
                    f"{score.perfect_score:.2f}",
                    f"{score.normalised_score:.2f}",
                ]
            )
    return "NAB scores (normalised: null detector 0, perfect 100)\n" + _format_table(header, rows)


def _file_table(
    scores: Mapping[str, CorpusScore], baseline_scores: Mapping[str, CorpusScore] | None
) -> str:
    """Raw score of each file under each profile at that profile's threshold.

    With a baseline, each profile has two columns: the detector's and the baseline's (``base``).
    """
    header = ["file"]
    columns: list[tuple[Mapping[str, CorpusScore], str]] = []
    for name in scores:
        header.append(name)
        columns.append((scores, name))
        if baseline_scores is not None:
            header.append(f"{name} base")
            columns.append((baseline_scores, name))
    files = sorted(next(iter(scores.values())).files) if scores else []
    rows = []
    for key in files:
        row = [key]
        for source, name in columns:
            file_score = source[name].files.get(key)
            row.append("-" if file_score is None else f"{file_score.score:.4f}")
        rows.append(row)
    title = "Per-file raw scores at each profile's threshold"
    return title + "\n" + _format_table(header, rows)


def _json_number(value: float) -> float | None:
    """JSON has no NaN: an undefined score (a corpus without windows) is written as null."""
    return None if math.isnan(value) else value


def _scores_json(scores: Mapping[str, CorpusScore]) -> dict[str, Any]:
    """The corpus scores as plain JSON-able dicts, per profile."""
    return {
        name: {
            "threshold": score.threshold,
            "raw_score": score.raw_score,
            "null_score": score.null_score,
            "perfect_score": score.perfect_score,
            "normalised_score": _json_number(score.normalised_score),
            "files": {key: asdict(row) for key, row in score.files.items()},
        }
        for name, score in scores.items()
    }
