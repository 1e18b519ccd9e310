"""``stream-ae evaluate csv``: the alerts a model would open on your own CSV files, and, with
``--labels FILE`` (``stream,start,end``), the labelled windows hit and missed, the false alerts
and the delays.

The files are read by the data reader every command shares (:func:`training.data.read_csv`:
column detection, time units, order, gaps, missing values) and the labels by the one labels
reader (:func:`training.data.read_labels_file`, as ``stream-ae-train report --labels``). The
events are streamed through the worker's own processor and alert policy
(:func:`training.shadow.shadow_run`: :class:`~stream_ae.worker.processor.StreamProcessor` over
an in-memory store, the policy of the ``STREAM_AE_*`` settings), so the alerts are the ones a
worker would open; there is no scoring path here. The alerts are scored by
:mod:`training.evaluation.alert_quality`, the code ``evaluate nab`` counts NAB's alerts with.

``--out DIR`` writes ``evaluation.json`` (the figures per stream and pooled, every labelled
window with its first alert, every false alert) and ``alerts.jsonl`` (every alert message, as
the worker would produce it); ``--plot TEXT`` adds ``plots/<stream>.png`` for the streams whose
name contains TEXT: the score timeline every command draws (:mod:`stream_ae.score_timeline`),
built from the run as ``stream-ae-train report`` builds its own
(:func:`training.plots.series_timeline`), labelled windows shaded.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream_ae.core.alerting import AlertPolicy
from stream_ae.core.records import ms_to_iso
from stream_ae.errors import ConfigError
from stream_ae.io.series_files import add_read_options, read_options_from
from stream_ae.score_timeline import file_stem, plot_timeline, pyplot
from training.data import (
    DataSourceError,
    Series,
    labelled_windows,
    read_csv,
    read_labels_file,
)
from training.evaluation.alert_quality import (
    AlertMatch,
    AlertQuality,
    format_quality,
    match_alerts,
    opened_times,
    quality_per_stream,
)

if TYPE_CHECKING:
    from training.shadow import ScoreTrack

EVALUATION_JSON = "evaluation.json"
ALERTS_JSONL = "alerts.jsonl"
PLOTS_DIR = "plots"

EXAMPLES = (
    "stream-ae evaluate csv cpu.csv mem.csv --artifact artifacts/cpu --labels incidents.csv",
    "stream-ae evaluate csv last-week.csv --registry artifacts/model --version latest "
    "--labels incidents.csv --out reports/eval",
    "stream-ae evaluate csv hosts.csv --stream-column host --time-unit s --artifact artifacts/h",
    "stream-ae evaluate csv cpu.csv mem.csv --artifact artifacts/cpu --labels incidents.csv "
    "--out reports/eval --plot cpu",
)


@dataclass(frozen=True)
class CsvEvaluation:
    """What a model did on the streams of some files: its alerts, the windows scored per
    stream, and, when the streams are labelled, each labelled window's outcome and the figures
    per stream and pooled."""

    model: str
    alerts: list[dict[str, Any]]
    rows: dict[str, int]  # scored windows per stream
    stream_days: dict[str, float]
    match: AlertMatch | None
    per_stream: dict[str, AlertQuality]
    pooled: AlertQuality | None
    tracks: dict[str, ScoreTrack] = field(default_factory=dict)  # scores per stream, for plots

    @property
    def alerts_opened(self) -> Counter[str]:
        return Counter(str(a["stream"]) for a in self.alerts if a["status"] == "open")

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON: per stream, pooled, each labelled window, each false alert."""
        opened = self.alerts_opened
        streams: dict[str, Any] = {
            name: {
                "scored_windows": rows,
                "alerts_opened": opened[name],
                "stream_days": self.stream_days.get(name, 0.0),
                **({"quality": self.per_stream[name].to_dict()} if name in self.per_stream else {}),
            }
            for name, rows in sorted(self.rows.items())
        }
        out: dict[str, Any] = {
            "model": self.model,
            "streams": streams,
            "alerts_opened": sum(opened.values()),
            "pooled": self.pooled.to_dict() if self.pooled else None,
        }
        if self.match is not None:
            out["windows"] = [
                {
                    "stream": w.stream,
                    "start": ms_to_iso(w.start_ms),
                    "end": ms_to_iso(w.end_ms),
                    "hit": w.hit,
                    "first_alert": None
                    if w.first_alert_ms is None
                    else ms_to_iso(w.first_alert_ms),
                    "delay_s": None if w.delay_ms is None else w.delay_ms / 1000,
                }
                for w in self.match.windows
            ]
            out["false_alerts"] = {
                stream: [ms_to_iso(t) for t in times]
                for stream, times in self.match.false_alerts.items()
                if times
            }
        return out


def evaluate_series(
    artifact: Any, series: Sequence[Series], *, policy: AlertPolicy | None = None
) -> CsvEvaluation:
    """Stream ``series`` through the worker's processor on ``artifact`` with ``policy`` and
    score its alerts against the series' labels (those marked labelled)."""
    from training.shadow import DAY_MS, shadow_run

    run = shadow_run(artifact, series, policy=policy)
    labelled = labelled_windows(series)
    match, per_stream = None, {}
    if labelled:
        opened = opened_times(run.alerts)
        opened = {name: opened.get(name, []) for name in labelled}
        rows = {name: run.rows.get(name, 0) for name in labelled}
        match = match_alerts(opened, labelled)
        per_stream = quality_per_stream(opened, labelled, rows=rows)
    return CsvEvaluation(
        model=f"{artifact.name}/{artifact.version}",
        alerts=run.alerts,
        rows={s.name: run.rows.get(s.name, 0) for s in series},
        stream_days={
            s.name: max(int(s.ts_ms[-1]) - int(s.ts_ms[0]), 0) / DAY_MS for s in series if len(s)
        },
        match=match,
        per_stream=per_stream,
        pooled=run.quality,  # the same alert_quality, pooled over the labelled streams
        tracks=run.tracks,
    )


def read_files(paths: Sequence[Path], args: argparse.Namespace) -> list[Series]:
    """The series of ``paths`` by the shared reader (``args``: its options), one name each."""
    options = read_options_from(args)
    series: list[Series] = []
    origin: dict[str, Path] = {}
    for path in paths:
        for s in read_csv(path, options):
            if s.name in origin:
                raise DataSourceError(
                    f"{path}: a stream named {s.name!r} was read from {origin[s.name]} already; "
                    "rename one file (a file's stream is its stem)"
                )
            origin[s.name] = path
            series.append(s)
    return series


def check_features(series: Sequence[Series], spec: Any) -> None:
    """Every series has the model's number of features (a one-line error names the fix)."""
    for s in series:
        if s.features != spec.features:
            raise DataSourceError(
                f"stream {s.name}: {s.features} value column(s) for a model of {spec.features} "
                f"feature(s) ({', '.join(spec.feature_names)}); choose them with --value-columns"
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``evaluate csv``."""
    from training.cli import common

    parser.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="CSV file(s): one stream per file (named by the file stem), or long format with a "
        "stream column",
    )
    common.add_artifact_options(parser)
    group = parser.add_argument_group("labels and output")
    group.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="labelled anomaly ranges: a CSV stream,start,end, both ends included, times as the "
        "data reader accepts them (ISO 8601, epoch s/ms/us/ns); a stream named in no row is "
        "normal throughout. Gives hits, misses, false alerts and delays",
    )
    group.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"write {EVALUATION_JSON} (figures, each labelled window, each false alert) and "
        f"{ALERTS_JSONL} (every alert) here",
    )
    group.add_argument(
        "--plot",
        action="append",
        default=[],
        metavar="TEXT",
        help=f"write DIR/{PLOTS_DIR}/<stream>.png (DIR: --out), the score timeline (values, "
        "score, alert threshold, alerts opened and resolved, labelled windows shaded), for the "
        "streams whose name contains TEXT (repeatable; --plot '' for every stream; needs "
        "matplotlib)",
    )
    add_read_options(parser.add_argument_group("CSV files (read as stream-ae produce reads them)"))


def run(args: argparse.Namespace) -> int:
    """``evaluate csv``: read, stream, score, print; write the files of ``--out``."""
    from training.cli import common

    if args.plot and not args.out:
        raise ConfigError(
            f"--plot needs --out: the plots are written to DIR/{PLOTS_DIR}/<stream>.png",
            fix="add --out DIR",
        )
    # The data, the labels and the plots asked for first: their mistakes are found before the
    # model loads.
    series = read_files(args.files, args)
    if args.labels:
        series = read_labels_file(series, args.labels, args.time_unit)
    plotted = streams_to_plot(series, args.plot)
    if plotted:
        pyplot()  # matplotlib missing: one line now, not after the run
    artifact = common.load_artifact(args)
    check_features(series, artifact.spec)
    policy = common.alert_policy()
    result = evaluate_series(artifact, series, policy=policy)
    print(summary(result))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        figures = {
            "files": [str(p) for p in args.files],
            "labels": str(args.labels) if args.labels else None,
            **result.to_dict(),
        }
        (args.out / EVALUATION_JSON).write_text(json.dumps(figures, indent=2) + "\n")
        (args.out / ALERTS_JSONL).write_text(
            "".join(json.dumps(alert, sort_keys=True) + "\n" for alert in result.alerts)
        )
        print(f"wrote {args.out / EVALUATION_JSON}, {args.out / ALERTS_JSONL}")
    if plotted:
        paths = plot_streams(result, plotted, artifact, args.out / PLOTS_DIR, policy=policy)
        unscored = [s.name for s in plotted if s.name not in result.tracks]
        if paths:
            print(f"wrote {len(paths)} score timeline(s): {', '.join(map(str, paths))}")
        if unscored:
            print(f"no plot of {', '.join(unscored)}: no window scored (shorter than the window)")
    return 0


def streams_to_plot(series: Sequence[Series], texts: Sequence[str]) -> list[Series]:
    """The series whose name contains one of ``texts`` (``--plot``), in order; a text that
    matches no stream, or two chosen streams that would share a PNG, stop with one line."""
    names = [s.name for s in series]
    for text in texts:
        if not any(text in name for name in names):
            shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise ConfigError(
                f"--plot {text!r} matches no stream (streams: {shown})",
                fix="give part of a stream's name (a file's stream is its stem)",
            )
    chosen = [s for s in series if any(text in s.name for text in texts)]
    stems: dict[str, str] = {}
    for s in chosen:
        other = stems.setdefault(file_stem(s.name), s.name)
        if other != s.name:
            raise ConfigError(
                f"--plot: streams {other!r} and {s.name!r} would both be drawn to "
                f"{PLOTS_DIR}/{file_stem(s.name)}.png",
                fix="choose one of them with a longer --plot TEXT",
            )
    return chosen


def plot_streams(
    result: CsvEvaluation,
    series: Sequence[Series],
    artifact: Any,
    plot_dir: Path,
    *,
    policy: AlertPolicy | None = None,
) -> list[Path]:
    """``<plot_dir>/<stream>.png`` for each of ``series`` that had windows scored: the score
    timeline ``stream-ae-train report`` draws (:func:`training.plots.series_timeline`), the
    series' labelled windows shaded."""
    from training.plots import series_timeline

    paths = []
    for s in series:
        if s.name not in result.tracks:
            continue
        timeline = series_timeline(artifact, s, result.tracks[s.name], result.alerts, policy=policy)
        paths.append(plot_timeline(timeline, plot_dir / f"{file_stem(s.name)}.png"))
    return paths


def summary(result: CsvEvaluation) -> str:
    """What ``evaluate csv`` prints: the alerts per stream, and the labelled figures."""
    opened = result.alerts_opened
    days = sum(result.stream_days.values())
    lines = [
        f"{result.model}: {sum(result.rows.values())} windows scored on {len(result.rows)} "
        f"stream(s), {sum(opened.values())} alert(s) opened"
        + (f" ({sum(opened.values()) / days:.2f} per stream-day)" if days else "")
    ]
    if result.pooled is None:
        width = max(len(name) for name in result.rows) if result.rows else 6
        lines.append(f"{'stream':<{width}}  {'windows scored':>14}  {'alerts opened':>13}")
        lines += [
            f"{name:<{width}}  {rows:>14}  {opened[name]:>13}"
            for name, rows in sorted(result.rows.items())
        ]
        lines.append("(no --labels: give a CSV stream,start,end for hits, misses, false alerts)")
    else:
        lines.append(format_quality(result.per_stream, result.pooled))
    return "\n".join(lines)
