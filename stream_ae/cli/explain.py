"""``stream-ae explain ALERT``: why did this alert fire?

The alert is found on the alerts topic by its ``alert_id`` (or a unique prefix of it), or read
as JSON from stdin (``-``). Its window is read back from its ``source`` (the stream's events up
to the source offset, on that topic-partition) and re-scored with the model version the alert
names, taken from the registry (``STREAM_AE_MODEL_PATH``). The text shows the window's observed
and expected values, each feature's contribution, the stage that fired, the score and the
threshold; ``--plot FILE.png`` draws the window against the model's reconstruction or
prediction with its expected band, the contributions, and the stream's recent score timeline
(the score timeline every command draws: values and scores over time, the threshold, the
alert's window and the alert).

The recent windows are re-scored from a fresh state over the events read (``--history``): a
post-processing stage that needs a long learning period, or per-stream scaling, can give a
somewhat different score than the worker's, which had the stream's whole history; the alert's
own score, stage and threshold are shown as the worker sent them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from stream_ae.alerts import Alert, parse_alert
from stream_ae.cli.topic_reading import batches, topic_reader
from stream_ae.core.postprocess import STAGES, new_post_state, post_batch
from stream_ae.core.records import decode_event, ms_to_iso
from stream_ae.core.scoring import Deviations
from stream_ae.core.state import new_state
from stream_ae.core.windowing import append
from stream_ae.errors import ArtifactError, ConfigError, SchemaError
from stream_ae.io.kafka import BatchConsumer, KafkaConnection, Partition
from stream_ae.model.artifacts import Artifact, load_artifact
from stream_ae.model.inference import ScoredBatch, Scorer
from stream_ae.model.registry import is_artifact, is_published, local_version_dir
from stream_ae.score_timeline import Timeline, describe, draw_timeline, pyplot, save_figure
from stream_ae.settings import Settings, load_settings

HELP = "explain an alert: values, expected values, contributions, score timeline"
EXAMPLES = (
    "stream-ae explain 3f2a9c41",
    "stream-ae explain 3f2a9c41 --plot alert.png",
    "stream-ae explain 3f2a9c41 --history 1000 --model models/",
)
# The expected band: the model's value plus or minus this many normal RMS errors.
BAND_ERRORS = 2.0


@dataclass(frozen=True)
class StreamEvents:
    """One stream's decoded events on one topic-partition, in offset order."""

    values: np.ndarray  # (n, F)
    ts_ms: np.ndarray
    offsets: np.ndarray


@dataclass(frozen=True)
class Explanation:
    """An alert's window and the recent windows of its stream, re-scored (one row per window,
    ``row`` the alert's), with the band of values the model takes for normal."""

    alert: Alert
    artifact: Artifact
    events: StreamEvents
    windows: np.ndarray  # (N, W, F) raw values
    end_ts_ms: np.ndarray
    end_offsets: np.ndarray
    batch: ScoredBatch
    final_scores: np.ndarray
    stages: np.ndarray
    expected: np.ndarray  # (W, F) the model's values over the alert's window, original units
    deviations: Deviations  # of the alert's window: arrays (1, F)
    band: np.ndarray  # (W, F) half-width of the expected band around them, original units
    row: int

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.artifact.spec.feature_names


# --- finding the alert and its events ----------------------------------------------------


def find_alert(connection: KafkaConnection, topic: str, reference: str) -> Alert:
    """The alert whose ``alert_id`` is ``reference`` or starts with it, read from ``topic``."""
    reference = reference.lower()
    if len(reference) < 6 or any(c not in "0123456789abcdef" for c in reference):
        raise ConfigError(
            f"{reference!r} is not an alert id: give its 32 hex digits, or at least the first 6"
        )
    consumer = topic_reader(connection, topic, from_beginning=True, purpose="explain")
    matches: dict[str, Alert] = {}
    try:
        for records in batches(consumer):
            for record in records:
                if record.value is None or reference.encode() not in record.value:
                    continue  # cheap filter before parsing
                try:
                    alert = parse_alert(record.value)
                except SchemaError:
                    continue
                if alert.alert_id.startswith(reference):
                    matches.setdefault(alert.alert_id, alert)
            if len(reference) == 32 and matches:
                break
    finally:
        consumer.close()
    if not matches:
        raise ConfigError(f"no alert {reference!r} on the alerts topic {topic!r}")
    if len(matches) > 1:
        raise ConfigError(
            f"{reference!r} is the prefix of {len(matches)} alert ids; give more of it"
        )
    return next(iter(matches.values()))


def read_stream_events(
    connection: KafkaConnection,
    alert: Alert,
    feature_names: tuple[str, ...],
    count: int,
    max_message_bytes: int,
) -> StreamEvents:
    """The last ``count`` events of the alert's stream up to its source offset (fewer when the
    partition holds fewer), decoded as the worker decodes them (bad ones skipped: the worker
    dead-lettered them)."""
    source = Partition(alert.source.topic, alert.source.partition)
    consumer = connection.consumer(group_id=None, client_id_suffix="explain")
    try:
        first = consumer.beginning_offsets([source]).get(source, 0)
        span = count * 4  # other streams share the partition: read back further, then more
        while True:
            start = max(first, alert.source.offset - span + 1)
            events = _read_range(
                consumer,
                source,
                start,
                alert.source.offset,
                alert.stream,
                feature_names,
                max_message_bytes,
            )
            if len(events.offsets) >= count or start <= first:
                break
            span *= 4
    finally:
        consumer.close()
    if not len(events.offsets) or events.offsets[-1] != alert.source.offset:
        raise ConfigError(
            f"the alert's source event {source}@{alert.source.offset} of stream "
            f"{alert.stream!r} is no longer on the topic (retention?), so its window cannot be "
            "read back"
        )
    keep = slice(max(len(events.offsets) - count, 0), None)
    return StreamEvents(events.values[keep], events.ts_ms[keep], events.offsets[keep])


def _read_range(
    consumer: BatchConsumer,
    source: Partition,
    start: int,
    stop: int,
    stream: str,
    feature_names: tuple[str, ...],
    max_message_bytes: int,
) -> StreamEvents:
    consumer.assign([source])
    consumer.seek(source, start)
    values, ts_ms, offsets = [], [], []
    for records in batches(consumer):
        for record in records:
            if record.offset > stop:
                break
            try:
                event = decode_event(
                    record.key,
                    record.value,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    feature_names=feature_names,
                    max_bytes=max_message_bytes,
                )
            except SchemaError:
                continue
            if event.stream == stream:
                values.append(event.values)
                ts_ms.append(event.ts_ms)
                offsets.append(event.offset)
        if records and records[-1].offset >= stop:
            break
    width = len(feature_names)
    return StreamEvents(
        np.array(values, dtype=np.float32).reshape(-1, width),
        np.array(ts_ms, dtype=np.int64),
        np.array(offsets, dtype=np.int64),
    )


def load_alert_model(model_path: Path | str, alert: Alert) -> Artifact:
    """The version of the model the alert names, from the registry at ``model_path`` (a folder
    or an object-storage URL), or the artifact at ``model_path`` itself when it is that
    version."""
    if isinstance(model_path, Path) and is_artifact(model_path):
        artifact = load_artifact(model_path)
        if artifact.version != alert.model_version:
            raise ArtifactError(
                f"{model_path} holds version {artifact.version!r}; the alert was scored by "
                f"{alert.model_version!r}: point --model at the registry that holds it"
            )
        return artifact
    if not is_published(model_path, alert.model_name, alert.model_version):
        raise ArtifactError(
            f"version {alert.model_version!r} of model {alert.model_name!r} is not in the "
            f"registry {model_path} (STREAM_AE_MODEL_PATH or --model)"
        )
    return load_artifact(local_version_dir(model_path, alert.model_name, alert.model_version))


# --- re-scoring --------------------------------------------------------------------------


def explain(alert: Alert, events: StreamEvents, artifact: Artifact) -> Explanation:
    """Re-score every window of ``events`` (stride 1) in one model call, with the detector's
    post-processing from a fresh state, and locate the alert's window among them."""
    spec = artifact.spec
    result = append(
        new_state(spec.window, spec.features),
        events.values,
        events.ts_ms,
        events.offsets,
        topic=alert.source.topic,
        partition=alert.source.partition,
        stride=1,
    )
    rows = np.flatnonzero(result.end_offsets == alert.source.offset)
    if not len(rows):
        raise ConfigError(
            f"only {len(events.offsets)} events of stream {alert.stream!r} up to the alert's "
            f"offset were found; its window needs {spec.window}"
        )
    n = len(result.windows)
    batch = Scorer(artifact).score(
        result.windows, [alert.stream] * n, result.stat_mean, result.stat_std
    )
    if artifact.post is not None:
        post = post_batch(
            artifact.post,
            new_post_state(artifact.post, spec.features)[None, :],
            batch.scores.distances,
            result.end_ts_ms,
            np.array([n]),
            result.windows if artifact.post.range is not None else None,
        )
        final, stages = post.scores, post.stages
    else:
        final, stages = batch.scores.scores, np.zeros(n, dtype=np.int8)
    # The normal size of the model's error per feature: the calibration's mean log MSE, in
    # scaled units, brought back to original units by the window's scale.
    calibration = artifact.calibration.for_stream(alert.stream)
    rms_scaled = np.sqrt(np.exp(calibration.error_mean))  # (F,)
    scale = (
        result.stat_std
        if artifact.scaling.mode == "stream"
        else np.broadcast_to(np.asarray(artifact.scaling.std), (n, spec.features))
    )
    row = int(rows[-1])
    band = np.broadcast_to(BAND_ERRORS * rms_scaled * scale[row], result.windows.shape[1:])
    return Explanation(
        alert=alert,
        artifact=artifact,
        events=events,
        windows=result.windows,
        end_ts_ms=result.end_ts_ms,
        end_offsets=result.end_offsets,
        batch=batch,
        final_scores=np.asarray(final),
        stages=np.asarray(stages),
        expected=batch.expected(np.array([row]))[0],
        deviations=batch.deviations(np.array([row])),
        band=band,
        row=row,
    )


# --- showing it ----------------------------------------------------------------------------


def render_text(ex: Explanation) -> str:
    """The explanation as text: the alert, the re-scored window, per-feature table, values."""
    a, row = ex.alert, ex.row
    n_windows = len(ex.final_scores)
    lines = [
        f"alert {a.alert_id}  {a.status}  stream {a.stream}  ({a.schema})",
        f"window {_iso(a.window_start)} .. {_iso(a.window_end)} ({a.window_size} events), "
        f"source {a.source.topic}:{a.source.partition}@{a.source.offset}",
        f"model {a.model_name} {a.model_version}",
        f"fired by stage {a.stage or 'calibration'}: score {a.score:.6f} "
        f"{'>=' if a.score >= a.threshold else '<'} threshold {a.threshold:.6f} "
        f"(model score {'-' if a.raw_score is None else f'{a.raw_score:.6f}'}, "
        f"distance {a.distance:.3f})",
        f"re-scored now: score {ex.final_scores[row]:.6f} by stage {STAGES[ex.stages[row]]}, "
        f"model score {ex.batch.scores.scores[row]:.6f}, distance "
        f"{ex.batch.scores.distances[row]:.3f} ({n_windows} windows re-scored"
        + (", post-processing from a fresh state)" if ex.artifact.post is not None else ")"),
        "",
        f"{'feature':<20}{'contribution':>13}  {'direction':<10}{'step':>5}"
        f"{'observed':>14}{'expected':>14}",
    ]
    deviations = ex.deviations
    for f, name in enumerate(ex.feature_names):
        direction = "above" if ex.batch.scores.directions[row, f] > 0 else "below"
        lines.append(
            f"{name[:19]:<20}{ex.batch.scores.contributions[row, f]:>12.1%}  {direction:<10}"
            f"{deviations.steps[0, f]:>5}{deviations.observed[0, f]:>14.6g}"
            f"{deviations.expected[0, f]:>14.6g}"
        )
    lines += ["", "values (observed / expected; * = the feature's largest deviation):"]
    shown = _top_features(ex)
    lines.append(
        f"{'step':>4}  {'offset':>10}  " + "".join(f"{ex.feature_names[f][:25]:>27}" for f in shown)
    )
    offsets = _window_offsets(ex)
    for step in range(ex.windows.shape[1]):
        cells = ""
        for f in shown:
            mark = "*" if deviations.steps[0, f] == step else " "
            expected = ex.expected[step, f]
            text = "-" if np.isnan(expected) else f"{expected:.5g}"
            cells += f"{f'{ex.windows[row, step, f]:.5g} / {text}':>26}{mark}"
        lines.append(f"{step:>4}  {offsets[step]:>10}  {cells}")
    return "\n".join(lines)


def plot(ex: Explanation, path: Path) -> Path:
    """Draw the explanation to a PNG: per top feature the window against the model's values
    with the expected band, the contributions, and the stream's recent score timeline
    (:mod:`stream_ae.score_timeline`, the drawing every command shares)."""
    plt = pyplot()
    a, row = ex.alert, ex.row
    shown = _top_features(ex)
    fig = plt.figure(figsize=(11, 3.0 * len(shown) + 5.4), layout="constrained")
    grid = fig.add_gridspec(len(shown) + 2, 3)
    steps = np.arange(ex.windows.shape[1])
    for k, f in enumerate(shown):
        ax = fig.add_subplot(grid[k, :])
        expected = ex.expected[:, f]
        band = ex.band[:, f]
        ax.fill_between(
            steps,
            expected - band,
            expected + band,
            color="tab:blue",
            alpha=0.18,
            label=f"expected \u00b1 {BAND_ERRORS:g} normal RMS errors",
        )
        ax.plot(steps, expected, color="tab:blue", lw=1.6, label="expected (model)")
        ax.plot(steps, ex.windows[row, :, f], color="black", lw=1.2, marker=".", label="observed")
        worst = ex.deviations.steps[0, f]
        ax.scatter(
            [worst],
            [ex.windows[row, worst, f]],
            s=90,
            facecolors="none",
            edgecolors="tab:red",
            lw=2,
            zorder=5,
            label="largest deviation",
        )
        share = ex.batch.scores.contributions[row, f]
        ax.set_title(f"{ex.feature_names[f]}: {share:.0%} of the window's error", loc="left")
        ax.set_xlabel("step in the window (0 = oldest event)")
        ax.legend(loc="upper left", fontsize=8)
    bars = fig.add_subplot(grid[-2:, 0])
    order = np.argsort(ex.batch.scores.contributions[row])[::-1][:10][::-1]
    shares = ex.batch.scores.contributions[row, order]
    bars.barh([ex.feature_names[f] for f in order], shares, height=0.5, color="tab:orange")
    for y, share in enumerate(shares):
        bars.text(min(share, 0.8) + 0.02, y, f"{share:.0%}", va="center", fontsize=9)
    bars.set_xlim(0, 1)
    bars.set_ylim(-0.75, max(len(order), 3) - 0.25)  # thin bars, even for one feature
    bars.set_title("contribution per feature", loc="left")
    timeline = recent_timeline(ex)
    draw_timeline(fig, grid[-2:, 1:], timeline)
    fig.suptitle(
        f"alert {a.alert_id[:12]} {a.status} | {a.stream} | {_iso(a.window_end)} | score "
        f"{a.score:.4f} (stage {a.stage or 'calibration'}) vs threshold {a.threshold:.4f} | "
        f"model {a.model_version}",
        fontsize=10,
    )
    return save_figure(fig, Path(path), describe(timeline), dpi=110)


def recent_timeline(ex: Explanation) -> Timeline:
    """The stream's recent windows, re-scored, as a score timeline: the top features' values
    at each window's end, the final and the model score, the alert's threshold, its window
    highlighted and the alert marked where it was sent."""
    a, row = ex.alert, ex.row
    shown = _top_features(ex)
    end_ms = int(ex.end_ts_ms[row])
    marks = [end_ms]
    return Timeline(
        ts_ms=ex.end_ts_ms,
        values=ex.windows[:, -1, shown],
        value_names=[ex.feature_names[f] for f in shown],
        scores={"final score": ex.final_scores, "model score": ex.batch.scores.scores},
        threshold=a.threshold,
        opened_ms=marks if a.status == "open" else [],
        resolved_ms=marks if a.status != "open" else [],
        focus_ms=(round(a.window_start.timestamp() * 1000), end_ms),
        focus_label="the alert's window",
        title=f"{a.stream}: recent windows (re-scored)",
    )


def _top_features(ex: Explanation, most: int = 4) -> list[int]:
    """The features to draw and list: the largest contributions first."""
    return [int(f) for f in np.argsort(ex.batch.scores.contributions[ex.row])[::-1][:most]]


def _window_offsets(ex: Explanation) -> np.ndarray:
    """The source offset of each step of the alert's window."""
    last = int(np.searchsorted(ex.events.offsets, ex.alert.source.offset))
    return ex.events.offsets[last - ex.windows.shape[1] + 1 : last + 1]


def _iso(moment: datetime) -> str:
    return ms_to_iso(round(moment.timestamp() * 1000))


# --- the command -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[1] if __doc__ else None
    parser.add_argument(
        "alert",
        metavar="ALERT",
        help="an alert_id (or its first 6+ hex digits), or - to read the alert JSON on stdin",
    )
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw it to a PNG")
    parser.add_argument(
        "--history",
        type=int,
        default=300,
        help="events of the stream read back for the score timeline (default 300)",
    )
    parser.add_argument(
        "--model", type=Path, help="the registry (or artifact); default STREAM_AE_MODEL_PATH"
    )
    parser.add_argument("--bootstrap-servers", help="override STREAM_AE_BOOTSTRAP_SERVERS")


def run(args: argparse.Namespace) -> int:
    overrides = {"bootstrap_servers": args.bootstrap_servers} if args.bootstrap_servers else {}
    settings = load_settings(overrides)
    connection = KafkaConnection.from_settings(settings)
    if args.alert == "-":
        alert = parse_alert(sys.stdin.read().strip())
    else:
        alert = find_alert(connection, settings.alerts_topic, args.alert)
    ex = explain_alert(settings, connection, alert, history=args.history, model_path=args.model)
    print(render_text(ex))
    if args.plot is not None:
        print(f"\nplot: {plot(ex, args.plot)}")
    return 0


def explain_alert(
    settings: Settings,
    connection: KafkaConnection,
    alert: Alert,
    *,
    history: int = 300,
    model_path: Path | None = None,
) -> Explanation:
    """Load the alert's model, read its stream back and re-score it."""
    artifact = load_alert_model(model_path or settings.model_path, alert)
    count = max(history, 0) + artifact.spec.window
    events = read_stream_events(
        connection, alert, artifact.spec.feature_names, count, settings.max_message_bytes
    )
    return explain(alert, events, artifact)
