"""The one CSV reader of train, produce, report and evaluate: each rule and its one-line error."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_ae.io.series_files import (
    ReadOptions,
    SeriesFileError,
    add_read_options,
    detect_unit,
    fill_missing,
    read_options_from,
    read_series_file,
    resample,
)

START_S = 1_700_000_000  # 2023-11-14


def _write(tmp_path: Path, text: str, name: str = "cpu.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_time_cpu_header_is_detected_and_what_was_detected_is_said(tmp_path: Path) -> None:
    path = _write(tmp_path, "time,cpu\n2024-01-01T00:00:00Z,1\n2024-01-01T00:01:00Z,2\n")
    (series,), report = read_series_file(path)
    assert (series.name, series.columns) == ("cpu", ("cpu",))
    assert series.ts_ms.tolist() == [1_704_067_200_000, 1_704_067_260_000]
    assert "time column 'time' read as ISO 8601" in report.summary()


def test_no_time_column_names_the_fix(tmp_path: Path) -> None:
    path = _write(tmp_path, "when,cpu\n1,2\n")
    with pytest.raises(SeriesFileError, match=r"no time column.*--time-column") as caught:
        read_series_file(path)
    assert "\n" not in str(caught.value)
    (series,), _ = read_series_file(path, ReadOptions(time_column="when", time_unit="s"))
    assert series.ts_ms.tolist() == [1000]


@pytest.mark.parametrize(
    ("scale", "unit"), [(1, "s"), (1_000, "ms"), (1_000_000, "us"), (1_000_000_000, "ns")]
)
def test_epoch_units_are_detected_by_magnitude(tmp_path: Path, scale: int, unit: str) -> None:
    rows = [f"{(START_S + 60 * i) * scale},{i}" for i in range(3)]
    path = _write(tmp_path, "timestamp,value\n" + "\n".join(rows) + "\n")
    (series,), report = read_series_file(path)
    assert report.time_unit == unit
    assert series.ts_ms.tolist() == [(START_S + 60 * i) * 1000 for i in range(3)]
    assert datetime.fromtimestamp(series.ts_ms[0] / 1000, UTC).year == 2023


@settings(max_examples=100, deadline=None)
# From 1973-03-03 (1e8 s: earlier epoch numbers are ambiguous, --time-unit says) to 2096.
@given(st.integers(min_value=100_000_000, max_value=4_000_000_000))
def test_any_date_since_1973_in_any_unit_is_detected(seconds: int) -> None:
    for scale, unit in ((1, "s"), (10**3, "ms"), (10**6, "us"), (10**9, "ns")):
        assert detect_unit(np.array([float(seconds * scale)])) == unit


def test_time_unit_forces_a_unit(tmp_path: Path) -> None:
    path = _write(tmp_path, "ts,value\n5,1\n6,2\n")
    (series,), report = read_series_file(path, ReadOptions(time_unit="ms"))
    assert series.ts_ms.tolist() == [5, 6] and report.time_unit == "ms"
    with pytest.raises(SeriesFileError, match="not a number of s"):
        read_series_file(
            _write(tmp_path, "ts,value\n2024-01-01,1\n", "iso.csv"), ReadOptions(time_unit="s")
        )


def test_rows_out_of_order_are_refused_or_sorted(tmp_path: Path) -> None:
    path = _write(tmp_path, f"ts,value\n{START_S + 60},2\n{START_S},1\n{START_S + 120},3\n")
    with pytest.raises(SeriesFileError, match=r"cpu\.csv:3: 1 row\(s\).*go back in time.*--sort"):
        read_series_file(path)
    (series,), report = read_series_file(path, ReadOptions(order="sort"))
    assert series.values[:, 0].tolist() == [1, 2, 3]
    assert report.sorted_rows == 1 and "sorted" in report.summary()
    (series,), report = read_series_file(path, ReadOptions(order="keep"))
    assert series.values[:, 0].tolist() == [2, 1, 3]
    assert "1 rows out of order kept as written" in report.summary()


def test_gaps_are_reported(tmp_path: Path) -> None:
    times = [START_S + 60 * i for i in (0, 1, 2, 3, 10, 11)]
    path = _write(tmp_path, "ts,value\n" + "\n".join(f"{t},1" for t in times) + "\n")
    _, report = read_series_file(path)
    assert (report.gaps, report.largest_gap_ms, report.period_ms) == (1, 420_000, 60_000)
    assert "1 gap(s)" in report.summary() and "largest 7m" in report.summary()


def test_missing_values_are_refused_with_counts_or_filled(tmp_path: Path) -> None:
    path = _write(tmp_path, f"ts,a,b\n{START_S},1,5\n{START_S + 60},,nan\n{START_S + 120},3,7\n")
    with pytest.raises(SeriesFileError, match=r"cpu\.csv:3: missing value.*a 1, b 1.*--fill"):
        read_series_file(path)
    (series,), report = read_series_file(path, ReadOptions(fill="interpolate"))
    assert series.values.tolist() == [[1, 5], [2, 6], [3, 7]]
    assert report.missing == {"a": 1, "b": 1} and report.filled == 2
    (series,), _ = read_series_file(path, ReadOptions(fill="ffill"))
    assert series.values.tolist() == [[1, 5], [1, 5], [3, 7]]


def test_not_a_number_names_the_cell(tmp_path: Path) -> None:
    path = _write(tmp_path, "timestamp,value\n2024-01-01,1\n2024-01-02,oops\n")
    with pytest.raises(SeriesFileError, match=r"cpu\.csv:3: column 'value': 'oops'"):
        read_series_file(path)


def test_resample_with_each_fill(tmp_path: Path) -> None:
    times = [START_S + s for s in (0, 20, 60, 180)]
    path = _write(tmp_path, "ts,v\n" + "\n".join(f"{t},{i}" for i, t in enumerate(times)) + "\n")
    (none,), _ = read_series_file(path, ReadOptions(resample_ms=60_000))
    assert none.values[:, 0].tolist() == [0.5, 2, 3]  # the empty period at 120 s left out
    (filled,), _ = read_series_file(path, ReadOptions(resample_ms=60_000, fill="interpolate"))
    assert np.diff(filled.ts_ms).tolist() == [60_000] * 3
    assert filled.values[:, 0].tolist() == [0.5, 2, 2.5, 3]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=1, max_size=30).filter(
        lambda xs: any(x is not None for x in xs)
    )
)
def test_fills_leave_no_gap_and_keep_known_values(cells: list[float | None]) -> None:
    values = np.array([[np.nan if x is None else x] for x in cells])
    ts = np.arange(len(cells), dtype=np.int64) * 1000
    for fill in ("ffill", "interpolate"):
        out = fill_missing(ts, values, fill)  # type: ignore[arg-type]
        assert not np.isnan(out).any()
        known = ~np.isnan(values)
        assert np.array_equal(out[known], values[known])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=50), st.integers(1, 500))
def test_resample_means_each_period(offsets: list[int], period: int) -> None:
    ts = np.sort(np.array(offsets, dtype=np.int64))
    values = np.arange(len(ts), dtype=np.float64)[:, None]
    grid, means = resample(ts, values, period)
    assert np.all(np.diff(grid) == period)
    for t, mean in zip(grid, means[:, 0], strict=True):
        inside = values[(ts >= t) & (ts < t + period), 0]
        assert (np.isnan(mean) and not len(inside)) or mean == pytest.approx(inside.mean())


def test_long_format_and_the_shared_options(tmp_path: Path) -> None:
    rows = [f"{START_S + 60 * (i // 2)},{'ab'[i % 2]},{i}" for i in range(6)]
    path = _write(tmp_path, "ts,stream,value\n" + "\n".join(rows) + "\n")
    parser = argparse.ArgumentParser()
    add_read_options(parser)
    options = read_options_from(parser.parse_args(["--resample", "1m", "--fill", "ffill"]))
    assert options.resample_ms == 60_000 and options.fill == "ffill"
    found, report = read_series_file(path, options)
    assert {s.name: s.values[:, 0].tolist() for s in found} == {"a": [0, 2, 4], "b": [1, 3, 5]}
    assert report.streams == 2


def test_produce_refuses_an_empty_cell_in_one_line_without_sending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream_ae.cli.app import main

    path = _write(tmp_path, f"time,cpu\n{START_S},1\n{START_S + 60},\n")
    # No broker is reachable at this address: an attempt to send would fail differently.
    assert main(["produce", "--csv", str(path), "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stream-ae produce: error: ")
    assert "missing value in column 'cpu'" in err[-1] and "--fill" in err[-1]
