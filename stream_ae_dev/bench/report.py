"""Benchmark figures, each against its target, as a printed table and a JSON file.

A :class:`Figure` is one measured number with its unit and, where the issue sets one, its
target; :class:`BenchResult` is what one benchmark function returns (its figures plus the raw
measurements behind them, for the JSON file).

>>> f = Figure.check("model", "batched / naive (F=1)", 612.0, "x", ">=", 500)
>>> f.met, f.target
(True, '>= 500')
>>> print(format_table([f]).splitlines()[2])
model    batched / naive (F=1)    612  x     >= 500  yes
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

Comparison = Literal[">=", "<="]
NOISY_SPREAD = 0.25  # a ratio whose spread (max - min) / median exceeds this is noise (issue 13)


@dataclass(frozen=True)
class Figure:
    """One measured figure. ``met`` is None where no target applies (an informative figure)."""

    section: str
    name: str
    value: float
    unit: str
    target: str | None = None
    met: bool | None = None
    note: str = ""

    @classmethod
    def check(
        cls,
        section: str,
        name: str,
        value: float,
        unit: str,
        op: Comparison,
        bound: float,
        note: str = "",
    ) -> Figure:
        """A figure checked against ``value op bound``."""
        met = value >= bound if op == ">=" else value <= bound
        bound_text = f"{bound:,.0f}" if bound >= 1000 and bound == int(bound) else f"{bound:g}"
        return cls(section, name, float(value), unit, f"{op} {bound_text}", met, note)

    @classmethod
    def info(cls, section: str, name: str, value: float, unit: str, note: str = "") -> Figure:
        """A figure without a target."""
        return cls(section, name, float(value), unit, None, None, note)


@dataclass
class BenchResult:
    """The figures of one benchmark and the measurements behind them."""

    section: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: str | None = None  # why the benchmark did not run, if it did not

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "seconds": round(self.seconds, 2),
            "skipped": self.skipped,
            "figures": [asdict(f) for f in self.figures],
            "details": self.details,
        }


def _number(value: float) -> str:
    """A figure as a reader wants it: no false precision."""
    if value != value:  # NaN
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_table(figures: Iterable[Figure]) -> str:
    """The figures as an aligned plain-text table (section, figure, value, unit, target, ok)."""
    rows = [("section", "figure", "value", "unit", "target", "ok")]
    for f in figures:
        ok = "" if f.met is None else ("yes" if f.met else "NO")
        rows.append((f.section, f.name, _number(f.value), f.unit, f.target or "", ok))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i == 2 and k else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(figures: Iterable[Figure]) -> str:
    """The figures as a Markdown table, for docs/performance.md."""
    lines = ["| section | figure | value | unit | target | met |", "|---|---|--:|---|---|---|"]
    for f in figures:
        ok = "" if f.met is None else ("yes" if f.met else "**no**")
        note = f" ({f.note})" if f.note else ""
        lines.append(
            f"| {f.section} | {f.name}{note} | {_number(f.value)} | {f.unit} "
            f"| {f.target or ''} | {ok} |"
        )
    return "\n".join(lines)


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how far apart repeated measurements of one figure are.

    >>> round(spread([0.9, 1.0, 1.2]), 2)
    0.3
    """
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else float("nan")


def describe(values: Sequence[float], unit: str = "") -> str:
    """``median of 3, range 0.90-1.20, spread 30%``: a repeated figure's note.

    >>> describe([0.9, 1.0, 1.2])
    'median of 3, range 0.90-1.20, spread 30%'
    """
    spaced = f" {unit}" if unit else ""
    return (
        f"median of {len(values)}, range {_number(min(values))}-{_number(max(values))}{spaced}, "
        f"spread {spread(values):.0%}"
    )


def noise_flag(ratios: Sequence[float]) -> str:
    """The mark a ratio's note carries when its spread makes it noise, else nothing."""
    return f" - noise: spread over {NOISY_SPREAD:.0%}" if spread(ratios) > NOISY_SPREAD else ""


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, memory, load, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    versions: dict[str, str] = {}
    for module in ("numpy", "keras", "tensorflow", "kafka", "redis"):
        try:
            from importlib.metadata import version

            dist = {"kafka": "kafka-python"}.get(module, module)
            versions[module] = version(dist)
        except Exception:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory_gib,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def write_json(
    results: Sequence[BenchResult], path: Path, *, argv: Sequence[str], machine: dict[str, Any]
) -> Path:
    """Write every result, the machine and the command line to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": "stream-ae.bench/v1",
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": list(argv),
        "machine": machine,
        "sections": [r.to_dict() for r in results],
    }
    path.write_text(json.dumps(document, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, paths: whatever the details hold, as plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds`` (perf_counter based)."""

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
