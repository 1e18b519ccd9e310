"""Labels of your own data (``--labels FILE``, a CSV ``stream,start,end``) and the alert-level
scorer they feed (:mod:`training.evaluation.alert_quality`): the reader's one-line errors, its
time parsing (the data reader's), and the scorer against a direct reference."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.data import (
    DataSourceError,
    Series,
    attach_labels,
    labelled_windows,
    load_labels,
    read_csv,
    read_labels_file,
    split_at_gaps,
)
from training.evaluation.alert_quality import alert_quality, match_alerts, quality_per_stream

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MINUTE = 60_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- the reader's errors: one line, naming the line and the fix ------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,from,to\ncpu,1,2\n", "need the columns stream,start,end (missing stream,start,end"),
        ("stream,start\ncpu,1704067200\n", "(missing end; found stream,start)"),
        ("", "found no header"),
        ("stream,start,end\ncpu,1704067200\n", ":2: 2 cell(s); a label row needs stream"),
        ("stream,start,end\n,1704067200,1704067300\n", ":2: the stream is empty"),
        (
            "stream,start,end\ncpu,2024-01-01T00:10Z,2024-01-01T00:20Z\ncpu,2024-01-01,tea\n",
            ":3: end 'tea' is neither ISO 8601 nor an epoch number",
        ),
        ("stream,start,end\ncpu,nan,1704067200\n", ":2: start 'nan' is neither ISO 8601"),
        ("stream,start,end\ncpu,,1704067200\n", ":2: start '' is neither ISO 8601"),
        (
            "stream,start,end\ncpu,1704069000,1704068400\n",
            ":2: the range ends (2024-01-01T00:20:00.000Z) before it starts "
            "(2024-01-01T00:30:00.000Z)",
        ),
        (
            "stream,start,end\ncpu,1704067200,1704067800\nmem,1704067200,1704067800\n"
            "cpu,1704067500,1704068400\n",
            ":4: cpu's range overlaps the one of line 2; merge them into one row",
        ),
        (
            "stream,start,end\ncpu,1704067200,1704067800\ncpu,1704067200,1704067800\n",
            ":3: cpu's range overlaps the one of line 2",
        ),
        (  # both ends are included: ranges that touch share an instant
            "stream,start,end\ncpu,1704067800,1704068400\ncpu,1704067200,1704067800\n",
            ":3: cpu's range overlaps the one of line 2",
        ),
    ],
)
def test_a_bad_labels_file_is_one_line_naming_where(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path / "labels.csv", text)
    with pytest.raises(DataSourceError) as error:
        load_labels(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(str(path))


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"cannot read labels .*nope\.csv: No such file"):
        load_labels(tmp_path / "nope.csv")
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"stream,start,end\n\xe9t\xe9,1,2\n")
    with pytest.raises(DataSourceError, match="not UTF-8"):
        load_labels(path)


def test_columns_in_any_order_extra_columns_a_byte_order_mark_and_blank_lines(
    tmp_path: Path,
) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(
        "\ufeffEnd,note,Stream,Start\n\n"
        "2024-01-01T00:20:00Z,disk full,cpu,2024-01-01T00:10:00Z\n"
        "2024-01-01T00:50:00Z,,cpu,2024-01-01T00:40:00Z\n".encode()
    )
    assert load_labels(path) == {
        "cpu": [(T0 + 10 * MINUTE, T0 + 20 * MINUTE), (T0 + 40 * MINUTE, T0 + 50 * MINUTE)]
    }
    # A header and no rows: no incidents (every alert will be a false one), not an error.
    assert load_labels(write(path, "stream,start,end\n")) == {}


def test_times_read_as_the_data_reader_reads_them(tmp_path: Path) -> None:
    """ISO 8601 (naive = UTC, any offset), epoch s/ms/us/ns by magnitude, and the data's forced
    --time-unit: the labels and the data land on the same epoch milliseconds."""
    data = write(tmp_path / "cpu.csv", "ts,value\n1704067800,1\n1704068400,2\n")
    (series,) = read_csv(data)  # epoch seconds, detected
    start, end = (int(t) for t in series.ts_ms)
    forms = {
        "iso": "2024-01-01T00:10:00Z,2024-01-01 00:20:00",
        "offset": "2024-01-01T01:10:00+01:00,2024-01-01T00:20:00.000+00:00",
        "s": "1704067800,1704068400",
        "ms": "1704067800000,1704068400000",
        "us": "1704067800000000,1704068400000000",
        "ns": "1704067800000000000,1704068400000000000",
    }
    for form, cells in forms.items():
        path = write(tmp_path / f"{form}.csv", f"stream,start,end\ncpu,{cells}\n")
        assert load_labels(path) == {"cpu": [(start, end)]}, form
    # Small numbers (milliseconds since a test started) would be taken for seconds: the data's
    # forced unit applies to the labels too, and ISO labels stay ISO whatever it says.
    path = write(tmp_path / "rel.csv", "stream,start,end\ncpu,600000,1200000\n")
    assert load_labels(path) == {"cpu": [(600_000_000, 1_200_000_000)]}
    assert load_labels(path, "ms") == {"cpu": [(600_000, 1_200_000)]}
    iso_path = write(tmp_path / "iso2.csv", f"stream,start,end\ncpu,{forms['iso']}\n")
    assert load_labels(iso_path, "ms") == {"cpu": [(start, end)]}


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["cpu", "mem", "host-1.disk", "a b"]),
        st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 10**6)), min_size=1, max_size=5),
        min_size=1,
    ),
    st.sampled_from(["iso", "s", "ms"]),
    st.randoms(use_true_random=False),
)
def test_any_ranges_written_in_any_form_read_back(
    tmp_path_factory: pytest.TempPathFactory,
    gaps: dict[str, list[tuple[int, int]]],
    form: str,
    rng: object,
) -> None:
    """Non-overlapping ranges per stream (whole seconds after 2024-01-01), written in one form
    and in any row order, read back exactly."""
    expected: dict[str, list[tuple[int, int]]] = {}
    for stream, steps in gaps.items():
        at, ranges = T0, []
        for gap_s, length_s in steps:
            start = at + 1000 * (gap_s + 1)
            ranges.append((start, start + 1000 * length_s))
            at = start + 1000 * length_s
        expected[stream] = ranges

    def cell(ms: int) -> str:
        return {"iso": iso(ms), "s": str(ms // 1000), "ms": str(ms)}[form]

    rows = [f"{s},{cell(a)},{cell(b)}" for s, ranges in expected.items() for a, b in ranges]
    rng.shuffle(rows)  # type: ignore[attr-defined]
    path = tmp_path_factory.mktemp("labels") / "labels.csv"
    path.write_text("stream,start,end\n" + "\n".join(rows) + "\n")
    assert load_labels(path) == expected


# --- attaching labels to the data ---------------------------------------------------------


def minutes(name: str, n: int = 60) -> Series:
    return Series(name, np.zeros(n), T0 + MINUTE * np.arange(n, dtype=np.int64))


def test_attach_refuses_unknown_streams_and_labels_that_miss_all_the_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    series = [minutes("cpu"), minutes("mem")]
    with pytest.raises(DataSourceError, match=r"not in the data: dsk \(streams: cpu, mem\)"):
        attach_labels(series, {"dsk": [(T0, T0 + MINUTE)]}, "labels.csv")
    # Seconds read as milliseconds would land in 1970: nothing overlaps, which is an error.
    with pytest.raises(DataSourceError, match=r"none of the 1 labelled range.*--time-unit"):
        attach_labels(series, {"cpu": [(T0 // 1000, T0 // 1000 + 60)]}, "labels.csv")
    # One range outside the data among others: left out with a warning, the rest kept.
    inside, outside = (T0 + 5 * MINUTE, T0 + 9 * MINUTE), (T0 - 9 * MINUTE, T0 - MINUTE)
    with caplog.at_level(logging.WARNING):
        cpu, mem = attach_labels(series, {"cpu": [inside, outside]}, "labels.csv")
    assert cpu.labels == (inside,) and "outside the stream's data" in caplog.text
    # A stream the file names nowhere is labelled too: normal throughout.
    assert cpu.labelled and mem.labelled and mem.labels == ()
    assert labelled_windows([cpu, mem]) == {"cpu": [inside], "mem": []}
    assert labelled_windows(series) == {}
    path = write(tmp_path / "l.csv", f"stream,start,end\ncpu,{iso(inside[0])},{iso(inside[1])}\n")
    assert read_labels_file(series, path)[0].labels == (inside,)


def test_a_range_is_scored_in_one_segment_when_series_are_cut_at_gaps() -> None:
    ts = T0 + MINUTE * np.r_[np.arange(10), np.arange(100, 110)]
    labelled = Series(
        "cpu", np.zeros(20), ts, labels=((T0, T0 + MINUTE), (T0 + 50 * MINUTE, T0 + 105 * MINUTE))
    )
    first, second = split_at_gaps([labelled], 5 * MINUTE)
    assert first.labels == ((T0, T0 + MINUTE),)
    assert second.name == "cpu#1" and second.labels == ((T0 + 50 * MINUTE, T0 + 105 * MINUTE),)


# --- the scorer ------------------------------------------------------------------------------


def test_a_hand_computed_match() -> None:
    windows = {"cpu": [(100, 200), (300, 400), (500, 600)], "mem": []}
    opened = {"cpu": [150, 120, 180, 250, 600, 999], "mem": [5], "dsk": [7]}
    match = match_alerts(opened, windows)
    assert [(w.stream, w.first_alert_ms, w.delay_ms) for w in match.windows] == [
        ("cpu", 120, 20),
        ("cpu", None, None),
        ("cpu", 600, 100),  # both ends included
    ]
    assert dict(match.false_alerts) == {"cpu": (250, 999), "dsk": (7,), "mem": (5,)}
    q = match.quality({"cpu": 1000, "mem": 1000, "dsk": 0})
    assert (q.windows, q.hits, q.misses, q.false_alerts, q.alerts_opened) == (3, 2, 1, 4, 8)
    assert q.median_delay_ms == 60.0 and q.false_per_10k_rows == 20.0
    per = quality_per_stream(opened, windows, rows={"cpu": 1000, "mem": 1000})
    assert (per["cpu"].hits, per["cpu"].false_alerts, per["mem"].false_alerts) == (2, 2, 1)
    assert per["dsk"].rows == 0


def reference(
    opened: dict[str, list[int]], windows: dict[str, list[tuple[int, int]]]
) -> tuple[int, int, int, list[int]]:
    """Hits, misses, false alerts and delays by the definitions, one alert at a time."""
    hits = misses = false = 0
    delays = []
    for stream in set(opened) | set(windows):
        times = opened.get(stream, [])
        for start, end in windows.get(stream, []):
            inside = [t for t in times if start <= t <= end]
            if inside:
                hits += 1
                delays.append(min(inside) - start)
            else:
                misses += 1
        false += sum(not any(a <= t <= b for a, b in windows.get(stream, [])) for t in times)
    return hits, misses, false, sorted(delays)


streams = st.sampled_from(["a", "b", "c"])
opened_st = st.dictionaries(streams, st.lists(st.integers(0, 1000), max_size=12))
windows_st = st.dictionaries(
    streams,
    st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 200)), max_size=4).map(
        lambda pairs: [(a, a + n) for a, n in pairs]
    ),
)


@settings(max_examples=300, deadline=None)
@given(opened_st, windows_st, st.integers(-(10**12), 10**12))
def test_the_scorer_agrees_with_the_definitions_and_ignores_order_and_origin(
    opened: dict[str, list[int]], windows: dict[str, list[tuple[int, int]]], shift: int
) -> None:
    rows = {s: 100 for s in set(opened) | set(windows)}
    match = match_alerts(opened, windows)
    q = match.quality(rows)
    hits, misses, false, delays = reference(opened, windows)
    assert (q.hits, q.misses, q.false_alerts) == (hits, misses, false)
    assert sorted(w.delay_ms for w in match.windows if w.delay_ms is not None) == delays
    assert q.windows == sum(len(w) for w in windows.values())
    assert q.alerts_opened == sum(len(t) for t in opened.values())
    assert q.median_delay_ms == (float(np.median(delays)) if delays else None)
    # The order alerts arrive in and the clock's origin change nothing.
    backwards = {s: list(reversed(t)) for s, t in opened.items()}
    moved_opened = {s: [t + shift for t in ts] for s, ts in backwards.items()}
    moved_windows = {s: [(a + shift, b + shift) for a, b in w] for s, w in windows.items()}
    assert alert_quality(moved_opened, moved_windows, rows=rows) == q
    # Pooled figures are the sums of the per-stream ones.
    per = quality_per_stream(opened, windows, rows=rows)
    assert sum(p.hits for p in per.values()) == q.hits
    assert sum(p.false_alerts for p in per.values()) == q.false_alerts
