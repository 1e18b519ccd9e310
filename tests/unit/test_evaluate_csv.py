"""``stream-ae evaluate csv FILES --labels FILE``: your own CSVs streamed through the worker's
processor, the alerts scored against your labels, on a case whose figures are computed by hand;
and ``stream-ae-train report --labels`` giving the same figures from the same reader and scorer.

The data: three streams, one event a minute from 2024-01-01T00:00Z, each the continuation of
the sine the model learnt, with spikes of +6 (six times the sine's amplitude) where an alert
must open. The first window holding a spike ends on it, so the alert opens at the spike's
minute; it resolves long before the next spike.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from stream_ae.cli import app
from tests.support.timeline_png import timeline_description
from training.cli import main as train_main
from training.evaluation.csv_run import ALERTS_JSONL, EVALUATION_JSON, PLOTS_DIR

T0_S = 1_704_067_200  # 2024-01-01T00:00:00Z
ROWS = 600
WINDOW = 12
HISTORY = 2000
# stream -> (its sine's period / 2 pi, rows of its spikes)
STREAMS = {"cpu": (6.0, (200, 400)), "mem": (8.0, (300,)), "disk": (10.0, (100,))}

# Hand-computed from the spikes (cpu 03:20 and 06:40, mem 05:00, disk 01:40) and these labels:
# cpu 03:15-03:30 is hit 5 min after its start, cpu 08:00-08:30 is missed, mem 04:58-05:10 is
# hit after 2 min; cpu's 06:40 alert is false, and so is disk's (disk is named in no row: normal
# throughout). Scored windows: 600 - 11 = 589 per stream.
LABELS = """stream,start,end
cpu,2024-01-01T03:15:00Z,2024-01-01T03:30:00Z
cpu,2024-01-01T08:00:00Z,2024-01-01T08:30:00Z
mem,2024-01-01T04:58:00Z,2024-01-01T05:10:00Z
"""
EXPECTED_TABLE = [
    # stream, windows, hits, misses, false alerts, per 10k rows, median delay (min)
    ["cpu", "2", "1", "1", "1", f"{1e4 / 589:.1f}", "5.0"],
    ["disk", "0", "0", "0", "1", f"{1e4 / 589:.1f}", "-"],
    ["mem", "1", "1", "0", "0", "0.0", "2.0"],
    ["pooled", "3", "2", "1", "2", f"{2e4 / 1767:.1f}", "3.5"],
]


def wave(name: str, steps: np.ndarray) -> np.ndarray:
    return np.sin(steps / STREAMS[name][0])


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.api import fit_detector

    steps = np.arange(HISTORY)
    history = {name: wave(name, steps) for name in STREAMS}
    out = tmp_path_factory.mktemp("evaluate-csv")
    # Without post-processing the final score is the calibrated one, whose margins the test
    # reasons about (spikes score 1.0, the sine stays below 0.99).
    return fit_detector(
        history, out, window=WINDOW, hidden=8, epochs=3, seed=0, post_processing=False
    )


def write_data(folder: Path) -> list[Path]:
    """cpu.csv with ISO times, mem.csv in epoch seconds (column 'time'), disk.csv in epoch
    milliseconds (column 'ts'): the reader detects each."""
    steps = np.arange(HISTORY, HISTORY + ROWS)
    seconds = T0_S + 60 * np.arange(ROWS)
    paths = []
    for name, (_, spikes) in STREAMS.items():
        values = wave(name, steps)
        values[list(spikes)] += 6.0
        if name == "cpu":
            times = [np.datetime64(int(s), "s").astype(str) + "Z" for s in seconds]
            header = "timestamp,value"
        elif name == "mem":
            times, header = [str(s) for s in seconds], "time,value"
        else:
            times, header = [str(s * 1000) for s in seconds], "ts,value"
        rows = [f"{t},{v:.6f}" for t, v in zip(times, values, strict=True)]
        path = folder / f"{name}.csv"
        path.write_text(header + "\n" + "\n".join(rows) + "\n")
        paths.append(path)
    return paths


def test_evaluate_csv_counts_hits_misses_and_false_alerts_against_your_labels(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's alert policy comes from the settings. The spikes score 1.0; the sine's normal
    # windows stay below 0.99 (measured), so a threshold of 0.9999 leaves a wide margin against
    # the small changes of a model fitted on another machine.
    monkeypatch.setenv("STREAM_AE_THRESHOLD", "0.9999")
    files = [str(p) for p in write_data(tmp_path)]
    labels = tmp_path / "incidents.csv"
    labels.write_text(LABELS)
    out = tmp_path / "eval"
    argv = ["evaluate", "csv", *files, "--artifact", str(model), "--labels", str(labels)]
    assert app.main([*argv, "--out", str(out), "--plot", "cpu", "--plot", "mem"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "1767 windows scored on 3 stream(s), 4 alert(s) opened" in printed[0]
    table = [line.split() for line in printed[2:6]]
    assert table == EXPECTED_TABLE, "\n".join(printed)

    figures = json.loads((out / EVALUATION_JSON).read_text())
    pooled = figures["pooled"]
    assert (pooled["windows"], pooled["hits"], pooled["misses"]) == (3, 2, 1)
    assert (pooled["false_alerts"], pooled["alerts_opened"], pooled["rows"]) == (2, 4, 1767)
    assert pooled["median_delay_ms"] == 3.5 * 60_000
    assert [
        (w["stream"], w["hit"], w["first_alert"], w["delay_s"]) for w in figures["windows"]
    ] == [
        ("cpu", True, "2024-01-01T03:20:00.000Z", 300.0),
        ("cpu", False, None, None),
        ("mem", True, "2024-01-01T05:00:00.000Z", 120.0),
    ]
    assert figures["false_alerts"] == {
        "cpu": ["2024-01-01T06:40:00.000Z"],
        "disk": ["2024-01-01T01:40:00.000Z"],
    }
    assert figures["streams"]["disk"]["quality"]["false_alerts"] == 1
    alerts = [json.loads(line) for line in (out / ALERTS_JSONL).read_text().splitlines()]
    assert sum(a["status"] == "open" for a in alerts) == 4
    assert {a["schema"] for a in alerts} == {alerts[0]["schema"]}  # the worker's messages

    # --plot: the score timelines of the streams asked for (not disk), drawn by the shared
    # function from the same run: each stream's labelled windows, the alerts it opened and
    # resolved, and the threshold of the worker's policy.
    plots = out / PLOTS_DIR
    assert sorted(p.name for p in plots.iterdir()) == ["cpu.png", "mem.png"]
    assert printed[-1] == f"wrote 2 score timeline(s): {plots / 'cpu.png'}, {plots / 'mem.png'}"
    drawn = "score timeline: 600 values, 589 scores (final score, model score), threshold 0.9999"
    assert timeline_description(plots / "cpu.png") == (
        f"{drawn}, 2 labelled windows, 2 alerts opened, 2 resolved"
    )
    assert timeline_description(plots / "mem.png") == (
        f"{drawn}, 1 labelled windows, 1 alerts opened, 1 resolved"
    )

    # Without labels: the alerts per stream, and how to get the rest.
    assert app.main(argv[:-2]) == 0
    printed = capsys.readouterr().out
    assert "4 alert(s) opened" in printed and "no --labels" in printed
    assert [line.split() for line in printed.splitlines()[2:5]] == [
        ["cpu", "589", "2"],
        ["disk", "589", "1"],
        ["mem", "589", "1"],
    ]

    # report reads the same labels and scores the same alerts with the same code.
    report = ["report", "--artifact", str(model), "--csv", *files, "--labels", str(labels)]
    assert train_main([*report, "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "report.md").read_text()
    assert "labelled windows hit: **2 of 3** (missed 1); false alerts: **2** (11.32" in summary
    assert "median delay from a window's start to its first alert: 3.5 min" in summary


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("stream,start,end\nnet,2024-01-01T03:00Z,2024-01-01T04:00Z\n", "not in the data: net"),
        (
            "stream,start,end\ncpu,2024-01-01T04:00Z,2024-01-01T03:00Z\n",
            ":2: the range ends (2024-01-01T03:00:00.000Z) before it starts",
        ),
        ("stream,start,end\ncpu,2024-01-01T04:00Z,soon\n", ":2: end 'soon' is neither ISO"),
        ("stream,begin,end\ncpu,2024-01-01T03:00Z,2024-01-01T04:00Z\n", "(missing start;"),
        ("stream,start,end\ncpu,1704067,1704068\n", "overlaps its stream's data"),
    ],
)
def test_a_bad_labels_file_stops_evaluate_csv_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], labels: str, message: str
) -> None:
    files = [str(p) for p in write_data(tmp_path)]
    path = tmp_path / "incidents.csv"
    path.write_text(labels)
    # The labels are read before the model is loaded: no model is needed to find the mistake.
    argv = ["evaluate", "csv", *files, "--artifact", str(tmp_path / "none"), "--labels", str(path)]
    assert app.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("stream-ae evaluate csv: error: ") and err.count("\n") == 1, err
    assert message in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--plot", "cpu"],
            "--plot needs --out: the plots are written to DIR/plots/<stream>.png; add --out DIR",
        ),
        (
            ["--out", "eval", "--plot", "cpu", "--plot", "net"],
            "--plot 'net' matches no stream (streams: cpu, mem, disk, cpu_1, cpu 1); give part",
        ),
        (
            ["--out", "eval", "--plot", "1"],
            "--plot: streams 'cpu_1' and 'cpu 1' would both be drawn to plots/cpu_1.png; choose",
        ),
    ],
)
def test_a_plot_that_cannot_be_drawn_stops_evaluate_csv_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
    message: str,
) -> None:
    files = write_data(tmp_path)
    for name in ("cpu_1", "cpu 1"):
        files.append(tmp_path / f"{name}.csv")
        files[-1].write_text(files[0].read_text())
    # Found before the model is loaded (there is none) and before anything is written.
    argv = ["evaluate", "csv", *map(str, files), "--artifact", str(tmp_path / "none")]
    monkeypatch.chdir(tmp_path)  # --out eval
    assert app.main([*argv, *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stream-ae evaluate csv: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "eval").exists()


def test_plot_chooses_the_streams_whose_name_contains_a_text(tmp_path: Path) -> None:
    from training.data import read_csv
    from training.evaluation.csv_run import streams_to_plot

    series = [s for path in write_data(tmp_path) for s in read_csv(path)]
    assert [s.name for s in streams_to_plot(series, [])] == []
    assert [s.name for s in streams_to_plot(series, ["m", "cpu"])] == ["cpu", "mem"]
    assert [s.name for s in streams_to_plot(series, [""])] == ["cpu", "mem", "disk"]  # --plot ''


def test_evaluate_csv_help_ends_with_examples_that_parse(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from training.evaluation.csv_run import EXAMPLES

    with pytest.raises(SystemExit) as exit_info:
        app.main(["evaluate", "csv", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--labels FILE" in text and "stream,start,end" in text
    assert [line.strip() for line in text.rstrip().splitlines()[-len(EXAMPLES) :]] == list(EXAMPLES)
    for example in EXAMPLES:
        argv = shlex.split(example.removeprefix("stream-ae "))
        args = app.build_parser(only="evaluate").parse_args(argv)
        assert args.evaluate_command == "csv" and args.files
