"""Training data sources: CSV layouts, NAB directories, gaps, spans and time bounds (the topic
replay, which needs the broker, is in tests/integration/test_training_replay.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stream_ae.core.records import ms_to_iso
from stream_ae.core.windowing import series_windows
from stream_ae.io.series_files import ReadOptions
from training.data import (
    DataSourceError,
    Series,
    alert_spans,
    head_fraction,
    load_nab_labels,
    parse_duration_s,
    parse_time_bound,
    read_csv,
    read_nab,
    split_at_gaps,
    split_recent,
    time_range,
)


def test_csv_one_series_per_file(tmp_path: Path) -> None:
    path = tmp_path / "cpu.csv"
    path.write_text("timestamp,value,mem\n2024-01-01 00:00:00,1.5,3\n2024-01-01 00:01:00,2.5,4\n")
    (series,) = read_csv(path)
    assert series.name == "cpu"
    assert series.values.tolist() == [[1.5, 3.0], [2.5, 4.0]]
    assert np.diff(series.ts_ms).tolist() == [60_000]
    (only,) = read_csv(path, ReadOptions(value_columns=("mem",)))
    assert only.values[:, 0].tolist() == [3.0, 4.0]


def test_csv_long_format_keeps_each_streams_rows_in_order(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    rows = ["ts,stream,value"] + [f"{1000 * i},{'ab'[i % 2]},{i}" for i in range(10)]
    path.write_text("\n".join(rows) + "\n")
    series = {s.name: s for s in read_csv(path, ReadOptions(time_column="ts", time_unit="ms"))}
    assert series["a"].values[:, 0].tolist() == [0, 2, 4, 6, 8]
    assert series["b"].ts_ms.tolist() == [1000, 3000, 5000, 7000, 9000]


def test_csv_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,value\n2024-01-01,1\n2024-01-02,oops\n")
    with pytest.raises(DataSourceError, match=r"bad\.csv:3: column 'value': 'oops'"):
        read_csv(path)
    with pytest.raises(DataSourceError, match="no column"):
        read_csv(path, ReadOptions(time_column="time"))
    with pytest.raises(DataSourceError, match="cannot read"):
        read_csv(tmp_path / "missing.csv")


def test_nab_layout_with_labels(tmp_path: Path) -> None:
    for category, name in (("realA", "x.csv"), ("artB", "y.csv")):
        (tmp_path / category).mkdir()
        lines = ["timestamp,value"] + [f"2024-01-01 00:{m:02d}:00,{m}" for m in range(20)]
        (tmp_path / category / name).write_text("\n".join(lines) + "\n")
    labels_path = tmp_path / "windows.json"
    labels_path.write_text(
        json.dumps({"realA/x.csv": [["2024-01-01 00:05:00.000000", "2024-01-01 00:07:00.000000"]]})
    )
    series = read_nab(tmp_path, labels=load_nab_labels(labels_path))
    assert [s.name for s in series] == ["artB/y.csv", "realA/x.csv"]
    x = series[1]
    assert np.flatnonzero(x.label_mask()).tolist() == [5, 6, 7]
    assert series[0].labels == ()
    assert [s.name for s in read_nab(tmp_path, categories=["artB"])] == ["artB/y.csv"]
    assert len(head_fraction(series, 0.15)[0]) == 3
    with pytest.raises(DataSourceError, match="no directory"):
        read_nab(tmp_path, categories=["nope"])


def test_gaps_ranges_and_recent_split() -> None:
    ts = np.array([0, 1, 2, 10, 11, 12, 13, 30]) * 1000
    s = Series("s", np.arange(8, dtype=np.float32), ts)
    parts = split_at_gaps([s], max_gap_ms=5000)
    assert [p.name for p in parts] == ["s", "s#1", "s#2"]
    assert [len(p) for p in parts] == [3, 4, 1]
    (cut,) = time_range([s], 2000, 12_000)
    assert cut.values[:, 0].tolist() == [2, 3, 4, 5]
    long = Series("l", np.arange(100, dtype=np.float32), np.arange(100) * 1000)
    (older,), (recent,) = split_recent([long], 0.2, window=10)
    assert len(older) == 80
    # The recent part starts window - 1 events early: its windows end exactly on the last 20.
    assert series_windows(recent.values, 10).windows[:, -1, 0].tolist() == list(range(80, 100))


def test_durations_and_time_bounds() -> None:
    assert parse_duration_s("6h") == 6 * 3600
    assert parse_duration_s("1d12h") == 36 * 3600
    assert parse_duration_s("250ms") == 0.25
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_s("6 hours")
    assert parse_time_bound("earliest") is None
    assert parse_time_bound("-2h", now_ms=10_000_000) == 10_000_000 - 7_200_000
    assert parse_time_bound("2024-01-01T00:00:00Z") == 1_704_067_200_000
    assert parse_time_bound("1704067200000") == 1_704_067_200_000


def _alert(stream: str, status: str, start_ms: int, end_ms: int) -> dict[str, object]:
    return {
        "stream": stream,
        "status": status,
        "window": {"start_ts": ms_to_iso(start_ms), "end_ts": ms_to_iso(end_ms), "size": 4},
    }


def test_alert_spans_join_open_and_resolve() -> None:
    alerts = [
        _alert("a", "open", 1000, 4000),
        _alert("b", "open", 9000, 12_000),
        _alert("a", "resolved", 6000, 9000),
    ]
    spans = alert_spans(alerts)
    assert spans["a"] == [(1000, 9000)]
    assert spans["b"][0][0] == 9000 and spans["b"][0][1] > 10**15  # still open


def test_labels_of_your_own_data_read_any_time_format_and_refuse_typos(tmp_path: Path) -> None:
    from training.data import DataSourceError, attach_labels, load_labels

    path = tmp_path / "labels.csv"
    path.write_text("stream,start,end\ncpu,2024-01-01T00:10:00Z,2024-01-01T00:20:00Z\n")
    iso = load_labels(path)
    path.write_text("stream,start,end\ncpu,1704067800,1704068400\n\n")  # epoch seconds
    assert load_labels(path) == iso == {"cpu": [(1_704_067_800_000, 1_704_068_400_000)]}
    series = [Series("cpu", np.zeros(3), 1_704_067_800_000 + 60_000 * np.arange(3))]
    assert attach_labels(series, iso, "x")[0].labels == ((1_704_067_800_000, 1_704_068_400_000),)
    with pytest.raises(DataSourceError, match="not in the data: mem"):
        attach_labels(series, {"mem": [(0, 1)]}, "x")
    path.write_text("name,from,to\ncpu,1,2\n")
    with pytest.raises(DataSourceError, match="need the columns stream,start,end"):
        load_labels(path)
    path.write_text("stream,start,end\ncpu,1704069000,1704068400\n")
    with pytest.raises(DataSourceError, match=r":2: the range ends .* before it starts"):
        load_labels(path)
