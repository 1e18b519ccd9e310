"""The Grafana dashboard and the Prometheus rules refer only to what the worker exports.

Every PromQL expression of ``deploy/grafana/dashboards/stream-ae.json`` and of
``deploy/prometheus-rules.yml`` is parsed for the series it selects and the labels it groups or
matches by; each must be a sample name and a label of a real :class:`WorkerMetrics` registry
(with its process collectors, as the worker runs it), or one that Prometheus adds itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_ae.worker.metrics import KNOWN_LABELS, WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "stream-ae.json"
RULES = ROOT / "deploy" / "prometheus-rules.yml"

# Series and labels that Prometheus itself adds to every scrape.
SCRAPE_SERIES = {"up"}
SCRAPE_LABELS = {"instance", "job"}

PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "deriv", "absent",
    "histogram_quantile", "by", "without", "and", "or", "unless", "on", "ignoring", "vector",
    "bool", "group_left", "group_right", "offset", "humanizePercentage", "topk", "bottomk",
    "clamp_min", "clamp_max", "delta", "label_replace", "time", "changes", "resets",
}  # fmt: skip


def exported() -> dict[str, set[str]]:
    """Sample name -> label names, from a worker registry with every labelled metric set."""
    metrics = WorkerMetrics(process=True)
    metrics.set_model("default", "v1")
    metrics.consumer_lag.labels(topic="t", partition="0").set(1)
    found: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def expressions() -> list[tuple[str, str]]:
    """(where, expr) for every dashboard target and alert rule."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    out = [
        (f"dashboard panel {panel['title']!r}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    rules = yaml.safe_load(RULES.read_text())
    out += [
        (f"rule {rule['alert']}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]
    return out


def references(expr: str) -> tuple[set[str], set[str]]:
    """(series names, label names) that a PromQL expression refers to."""
    text = re.sub(r'"[^"]*"', '""', expr)  # label values and strings are not names
    labels: set[str] = set()
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        labels.update(name.strip() for name in grouping.split(",") if name.strip())
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    names = {
        word
        for word in re.findall(r"(?<![\w.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", bare)
        if word not in PROMQL_WORDS
    }
    return names, labels


def test_every_expression_uses_exported_series_and_labels() -> None:
    metrics = exported()
    problems = []
    for where, expr in expressions():
        names, labels = references(expr)
        assert names, f"{where}: no series found in {expr!r}"
        for name in names - SCRAPE_SERIES:
            if name not in metrics:
                problems.append(f"{where}: {name} is not exported")
        known = set().union(*(metrics.get(n, set()) for n in names)) | SCRAPE_LABELS
        for label in labels - known:
            problems.append(f"{where}: label {label!r} is not on {sorted(names)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "expr, names, labels",
    [
        ("sum by (reason) (rate(stream_ae_dlq_total[5m]))", {"stream_ae_dlq_total"}, {"reason"}),
        ('up{job=~".*x"} == 0', {"up"}, {"job"}),
        (
            "histogram_quantile(0.99, sum by (le) (rate(stream_ae_batch_seconds_bucket[5m])))",
            {"stream_ae_batch_seconds_bucket"},
            {"le"},
        ),
    ],
)
def test_the_reference_parser(expr: str, names: set[str], labels: set[str]) -> None:
    assert references(expr) == (names, labels)


def test_a_wrong_name_or_label_is_caught() -> None:
    metrics = exported()
    names, _ = references("sum by (reasons) (rate(stream_ae_dlqs_total[5m]))")
    assert names - set(metrics) == {"stream_ae_dlqs_total"}
    assert "reasons" not in metrics["stream_ae_dlq_total"]


def test_the_dashboard_shows_what_operators_ask_for() -> None:
    text = DASHBOARD.read_text()
    for series in (
        "stream_ae_events_total",  # throughput
        "stream_ae_consumer_lag",  # lag
        "stream_ae_batch_seconds_bucket",  # batch latency
        "stream_ae_model_seconds_bucket",  # model latency
        "stream_ae_alerts_total",  # alerts by status
        "stream_ae_dlq_total",  # DLQ by reason
        "stream_ae_model_swaps_total",  # swaps and refusals
        "stream_ae_model_info",  # the model version per worker
    ):
        assert series in text, series


def test_labelled_counters_start_at_zero() -> None:
    """A counter first seen at 1 would hide its first increase from ``increase() > 0`` rules."""
    metrics = WorkerMetrics()
    for attribute, labels in KNOWN_LABELS.items():
        ((label, values),) = labels.items()
        name = getattr(metrics, attribute)._name  # e.g. stream_ae_dlq (samples end in _total)
        for value in values:
            sample = metrics.registry.get_sample_value(f"{name}_total", {label: value})
            assert sample == 0.0, (name, value)
    assert len(KNOWN_LABELS["dlq"]["reason"]) >= 9  # every dead-letter reason code


def test_build_info_and_process_metrics_are_exported() -> None:
    metrics = exported()
    assert {"version", "python"} <= metrics["stream_ae_build_info"]
    assert "process_resident_memory_bytes" in metrics
    assert "process_cpu_seconds_total" in metrics
