"""Plots of a trained model and the ``report`` that bundles them with a markdown summary.

- ``loss_curves.png``: training and validation loss per epoch (from the artifact's metrics);
- ``reconstructions.png``: a few windows (typical normal ones, the worst-scored and, when
  labels exist, labelled anomalies) with the model's reconstruction and/or prediction;
- ``latent_pca.png``: the 2-D PCA projection of the encoder's latent codes, coloured by label
  when labels exist, else by stream;
- ``error_histogram.png``: the histogram of window distances (the one-sided Mahalanobis
  distance the score is computed from) with the alert threshold, normal and labelled windows
  apart when labels exist;
- ``timeline_<series>.png``: per series (at most :data:`MAX_TIMELINES`), the score timeline
  every command draws (:mod:`stream_ae.score_timeline`): values and the final score over time
  as a worker would have scored them, the alert threshold, the alerts opened and resolved, the
  labelled windows shaded when labels exist and the end of the training part.

Matplotlib (the ``plots`` extra) runs with the Agg backend: no display needed. The drawing
functions take arrays and a path; :func:`build_report` computes the arrays from an artifact.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream_ae.core.alerting import AlertPolicy
from stream_ae.model.artifacts import Artifact
from stream_ae.model.network import ModelSpec, encoder_of, split_window
from stream_ae.score_timeline import Timeline, alert_marks, file_stem, plot_timeline, pyplot
from training.calibrate import describe_thresholds, scores_and_thresholds
from training.data import Series
from training.model_runner import predict_verbosity, run_model
from training.shadow import ScoreTrack, ShadowResult, shadow_run
from training.windows import Windows, all_windows, pad_side, step_mask

log = logging.getLogger(__name__)

LOSS_PNG = "loss_curves.png"
RECONSTRUCTIONS_PNG = "reconstructions.png"
LATENT_PNG = "latent_pca.png"
HISTOGRAM_PNG = "error_histogram.png"
REPORT_MD = "report.md"
TIMELINE_PNG = "timeline_{series}.png"
# Series beyond this many get no timeline (labelled series and those with alerts first).
MAX_TIMELINES = 12
# Latent codes beyond this many are subsampled (evenly) for the scatter plot.
MAX_LATENT_POINTS = 6000


def plot_loss(history: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Training and validation loss per epoch (log scale)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in sorted(history):
        if key.endswith("loss"):
            style = "--" if key.startswith("val_") else "-"
            ax.plot(np.arange(1, len(history[key]) + 1), history[key], style, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MSE, scaled units)")
    ax.set_yscale("log")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def outputs_in_window_order(spec: ModelSpec, outputs: np.ndarray) -> np.ndarray:
    """Concatenated model outputs (N, T, F) placed at the window steps they stand for
    (N, W, F); NaN where the model says nothing (the input part of a ``predict`` model)."""
    n = len(outputs)
    placed = np.full((n, spec.window, spec.features), np.nan)
    pos = 0
    if spec.kind in ("reconstruct", "composite"):
        recon = outputs[:, : spec.input_steps]
        placed[:, : spec.input_steps] = recon[:, ::-1] if spec.reverse else recon
        pos = spec.input_steps
    if spec.kind in ("predict", "composite"):
        placed[:, spec.input_steps :] = outputs[:, pos : pos + spec.horizon]
    return placed


def plot_reconstructions(
    windows: np.ndarray,
    outputs: np.ndarray,
    titles: Sequence[str],
    path: Path,
    *,
    horizon: int = 0,
) -> Path:
    """Windows (K, W, F) and the model's view of them (K, W, F, NaN where none), one panel
    each, first feature."""
    plt = pyplot()
    k = len(windows)
    cols = 2 if k > 1 else 1
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 2.6 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.axis("off")
            continue
        steps = np.arange(windows.shape[1])
        ax.plot(steps, windows[i, :, 0], color="black", lw=1.2, label="window")
        ax.plot(steps, outputs[i, :, 0], color="tab:red", lw=1.2, ls="--", label="model")
        if horizon:
            ax.axvspan(windows.shape[1] - horizon - 0.5, windows.shape[1] - 0.5, alpha=0.1)
        ax.set_title(titles[i], fontsize=9)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pca_2d(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection of codes (N, D) on their first two principal components, and the share of
    variance each explains."""
    centred = codes - codes.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2]
    projected = centred @ components.T
    if projected.shape[1] < 2:  # a 1-D code: the second axis is empty
        projected = np.column_stack([projected, np.zeros(len(projected))])
    variance = singular**2
    share = variance[:2] / max(float(variance.sum()), 1e-12)
    return projected, np.pad(share, (0, 2 - len(share)))


def plot_latent(
    codes: np.ndarray,
    groups: Sequence[str],
    path: Path,
    title: str,
    shown: np.ndarray | None = None,
) -> Path:
    """2-D PCA of latent codes, one colour per group (label or stream); the projection is
    fitted on every code, only the rows ``shown`` (default: all) are drawn."""
    plt = pyplot()
    projected, share = pca_2d(np.asarray(codes, dtype=np.float64))
    if shown is not None:
        projected, groups = projected[shown], [groups[i] for i in shown]
    fig, ax = plt.subplots(figsize=(7, 6))
    names = np.asarray(groups, dtype=object)
    unique = sorted(set(groups), key=lambda g: (g == "anomaly", g))
    cmap = plt.get_cmap("tab20" if len(unique) > 10 else "tab10")
    for i, group in enumerate(unique):
        rows = names == group
        colour = "tab:red" if group == "anomaly" else cmap(i % cmap.N)
        ax.scatter(
            projected[rows, 0],
            projected[rows, 1],
            s=6 if group != "anomaly" else 10,
            alpha=0.5 if group != "anomaly" else 0.8,
            color=colour,
            label=group if len(group) < 45 else group[:42] + "...",
        )
    ax.set_xlabel(f"PC1 ({share[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({share[1]:.0%} of variance)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_error_histogram(
    distances: np.ndarray,
    threshold_distance: float,
    path: Path,
    *,
    anomalous: np.ndarray | None = None,
) -> Path:
    """Histogram of window distances with the alert threshold; labelled windows apart."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    d = np.asarray(distances)
    top = max(float(np.quantile(d, 0.999)) if len(d) else 1.0, threshold_distance * 1.2)
    bins = np.linspace(0.0, top, 80)
    if anomalous is not None and anomalous.any():
        ax.hist(np.clip(d[~anomalous], 0, top), bins=bins, alpha=0.6, density=True, label="normal")
        ax.hist(
            np.clip(d[anomalous], 0, top),
            bins=bins,
            alpha=0.6,
            density=True,
            color="tab:red",
            label="labelled anomaly",
        )
        ax.set_ylabel("density")
    else:
        ax.hist(np.clip(d, 0, top), bins=bins, alpha=0.7, label="windows")
        ax.set_ylabel("windows")
    ax.axvline(threshold_distance, color="black", ls="--", label="alert threshold (global)")
    ax.set_xlabel("window distance (one-sided Mahalanobis of log-MSE)")
    ax.set_yscale("log")
    ax.set_title("Error distribution and threshold")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the report ----------------------------------------------------------------------------


@dataclass
class GroupStats:
    """Error figures of one group of windows."""

    windows: int
    mse_median: float
    mse_mean: float
    distance_median: float
    above_threshold: float

    def row(self, name: str) -> str:
        return (
            f"| {name} | {self.windows} | {self.mse_median:.4g} | {self.mse_mean:.4g} | "
            f"{self.distance_median:.3g} | {self.above_threshold:.2%} |"
        )


@dataclass
class ReportResult:
    """What :func:`build_report` wrote and computed."""

    files: list[Path]
    groups: dict[str, GroupStats]
    summary: str
    extra: dict[str, Any] = field(default_factory=dict)


def _group(
    rows: np.ndarray, mse: np.ndarray, distances: np.ndarray, alert: np.ndarray
) -> GroupStats:
    if not rows.any():
        nan = float("nan")
        return GroupStats(0, nan, nan, nan, nan)
    return GroupStats(
        windows=int(rows.sum()),
        mse_median=float(np.median(mse[rows])),
        mse_mean=float(np.mean(mse[rows])),
        distance_median=float(np.median(distances[rows])),
        above_threshold=float(np.mean(alert[rows])),
    )


def _real_steps_mse(
    targets: np.ndarray, outputs: np.ndarray, weights: np.ndarray | None
) -> np.ndarray:
    residual = (targets.astype(np.float64) - outputs) ** 2
    if weights is None:
        return residual.mean(axis=(1, 2))
    w = weights[:, :, None]
    return (w * residual).sum(axis=(1, 2)) / np.maximum(w.sum(axis=(1, 2)) * residual.shape[2], 1)


def build_report(
    artifact: Artifact,
    series: Sequence[Series],
    out_dir: Path,
    *,
    stride: int = 1,
    train_fraction: float | None = None,
    title: str | None = None,
    data_description: str = "",
    reconstructions: int = 6,
    policy: AlertPolicy | None = None,
) -> ReportResult:
    """Score every window of ``series`` with ``artifact`` and write the plots and
    ``report.md`` into ``out_dir``.

    ``train_fraction``: the share of each series the model was trained on (NAB: 0.15); those
    windows are reported apart, so "normal" means data the model did not see.

    The alerts section replays ``series`` through the worker's processor and alert ``policy``
    (:func:`training.shadow.shadow_run`): the alerts a worker would open, and, where the series
    carry labels, the labelled windows hit and missed, the false alerts and the delays.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = artifact.spec
    side = pad_side(spec)
    windows = all_windows(list(series), spec.window, stride, pad=side if spec.masking else None)
    if not len(windows):
        raise ValueError("no windows to report on: series shorter than the window")
    view = run_model(artifact.model, spec, artifact.scaling, windows)
    scaled, outputs, errors = view.scaled, view.outputs, view.errors
    distances, scores, thresholds = scores_and_thresholds(
        artifact.calibration, errors, windows.streams
    )
    alert = scores >= thresholds
    mse = _real_steps_mse(view.targets, outputs, view.weights)

    labelled = any(s.labels for s in series)
    anomalous = windows.labels(list(series)) if labelled else np.zeros(len(windows), bool)
    trained = _training_rows(windows, series, train_fraction)
    normal = ~anomalous & ~trained
    groups = {"training part": _group(trained & ~anomalous, mse, distances, alert)}
    groups["normal"] = _group(normal, mse, distances, alert)
    if labelled:
        groups["labelled anomaly"] = _group(anomalous, mse, distances, alert)

    files = [plot_loss(artifact.metrics.get("history", {}), out_dir / LOSS_PNG)]
    picks, titles = _pick_windows(windows, distances, anomalous, normal, reconstructions)
    picked = windows.select(picks)
    raw_outputs = _unscale(artifact, picked, outputs_in_window_order(spec, outputs[picks]))
    files.append(
        plot_reconstructions(
            _raw_for_plot(picked, side),
            raw_outputs,
            titles,
            out_dir / RECONSTRUCTIONS_PNG,
            horizon=spec.horizon,
        )
    )
    codes = encode(artifact, scaled)
    if labelled:
        colour = np.where(anomalous, "anomaly", "normal").astype(object)
        latent_title = "Latent codes (PCA), coloured by label"
    else:
        colour = np.asarray([Path(s).name for s in windows.streams], dtype=object)
        latent_title = "Latent codes (PCA), coloured by stream"
    # The PCA is fitted on every code; the scatter shows an even subsample of each group, so
    # neither a big group nor a rare one drowns the other.
    sample = _even_sample_per_group(
        colour, MAX_LATENT_POINTS // 2 if labelled else MAX_LATENT_POINTS
    )
    files.append(plot_latent(codes, list(colour), out_dir / LATENT_PNG, latent_title, shown=sample))
    files.append(
        plot_error_histogram(
            distances,
            artifact.calibration.default.threshold_distance(),
            out_dir / HISTOGRAM_PNG,
            anomalous=anomalous if labelled else None,
        )
    )
    per_series = {
        name: {
            group: _group(rows & (names == name), mse, distances, alert)
            for group, rows in (("normal", normal), ("labelled anomaly", anomalous))
        }
        for name in sorted(set(windows.streams))
        for names in [np.asarray(windows.streams, dtype=object)]
    }
    replay = shadow_run(artifact, series, policy=policy)
    timelines = plot_series_timelines(
        artifact, series, replay, out_dir, train_fraction=train_fraction, policy=policy
    )
    files.extend(timelines)
    summary = _markdown(
        artifact, groups, title, data_description, files, windows, labelled, per_series
    )
    summary += _alerts_markdown(replay)
    (out_dir / REPORT_MD).write_text(summary)
    files.append(out_dir / REPORT_MD)
    extra: dict[str, Any] = {
        "alerts_opened": replay.alerts_opened,
        "alerts_per_stream_day": replay.alerts_per_stream_day,
        "alerts_in_training": replay.opened_in_training,
    }
    if replay.quality is not None:
        extra["alert_quality"] = replay.quality.to_dict()
    return ReportResult(files, groups, summary, extra)


def plot_series_timelines(
    artifact: Artifact,
    series: Sequence[Series],
    replay: ShadowResult,
    out_dir: Path,
    *,
    train_fraction: float | None = None,
    policy: AlertPolicy | None = None,
) -> list[Path]:
    """One score timeline PNG per series (the first :data:`MAX_TIMELINES`, labelled series and
    those with alerts first) from the replay through the worker's processor."""
    opened = {s.name: alert_marks(replay.alerts, s.name) for s in series}
    ranked = sorted(
        (s for s in series if s.name in replay.tracks),
        key=lambda s: (not s.labels, -len(opened[s.name][0])),
    )[:MAX_TIMELINES]
    if len(ranked) < len(series):
        log.info("timelines of %d of %d series", len(ranked), len(series))
    paths = []
    for s in ranked:
        timeline = series_timeline(
            artifact,
            s,
            replay.tracks[s.name],
            replay.alerts,
            policy=policy,
            train_fraction=train_fraction,
        )
        path = out_dir / TIMELINE_PNG.format(series=file_stem(s.name))
        paths.append(plot_timeline(timeline, path))
    return paths


def series_timeline(
    artifact: Artifact,
    series: Series,
    track: ScoreTrack,
    alerts: Sequence[Mapping[str, Any]],
    *,
    policy: AlertPolicy | None = None,
    train_fraction: float | None = None,
) -> Timeline:
    """The score timeline of ``series`` streamed through the worker's processor (a shadow run:
    its ``track`` of scores and the run's ``alerts``), as ``report`` and ``evaluate csv``
    draw it: the values, the final and the model score, the threshold a worker would alert at,
    the alerts opened and resolved, the series' labelled windows and, given
    ``train_fraction``, the end of the training part."""
    opened, resolved = alert_marks(alerts, series.name)
    marks = {}
    cut = int(len(series) * train_fraction) if train_fraction else 0
    if cut >= 1:
        marks["end of the training part"] = int(series.ts_ms[cut - 1])
    return Timeline(
        ts_ms=series.ts_ms,
        values=series.values,
        value_names=artifact.spec.feature_names,
        scores={"final score": track.final_scores, "model score": track.model_scores},
        score_ts_ms=track.end_ts_ms,
        threshold=alert_threshold(artifact, series.name, policy),
        opened_ms=opened,
        resolved_ms=resolved,
        labelled_ms=series.labels,
        marks_ms=marks,
        title=series.name,
    )


def alert_threshold(artifact: Artifact, stream: str, policy: AlertPolicy | None) -> float:
    """The final score at which a worker opens an alert on ``stream``: the policy's threshold,
    else the detector's (its post-processing's, else the stream's calibration)."""
    if policy is not None and policy.threshold is not None:
        return policy.threshold
    if artifact.post is not None:
        return artifact.post.threshold
    return artifact.calibration.for_stream(stream).threshold


def _alerts_markdown(replay: ShadowResult) -> str:
    """The alerts section of report.md: what a worker would have opened on this data."""
    lines = [
        "",
        "## Alerts a worker would open",
        "",
        "The data replayed through the worker's processor and alert policy (hysteresis, "
        "cooldown), one window per event.",
        "",
        f"- alerts opened: {replay.alerts_opened} "
        f"({replay.alerts_per_stream_day:.2f} per stream-day)",
        f"- of them inside the model's own training period: {replay.opened_in_training}",
    ]
    q = replay.quality
    if q is not None:
        delay = "-" if q.median_delay_ms is None else f"{q.median_delay_ms / 60_000:.1f} min"
        lines += [
            f"- labelled windows hit: **{q.hits} of {q.windows}** (missed {q.misses}); "
            f"false alerts: **{q.false_alerts}** ({q.false_per_10k_rows:.2f} per 10k windows); "
            f"median delay from a window's start to its first alert: {delay}",
        ]
    return "\n".join(lines) + "\n"


def _even_sample_per_group(groups: np.ndarray, per_group: int) -> np.ndarray:
    """Row indices: up to ``per_group`` of each group, evenly spread over its rows."""
    rows: list[np.ndarray] = []
    for group in sorted(set(groups.tolist())):
        members = np.flatnonzero(groups == group)
        picks = np.linspace(0, len(members) - 1, min(len(members), per_group)).astype(int)
        rows.append(members[np.unique(picks)])
    return np.sort(np.concatenate(rows))


def encode(artifact: Artifact, scaled: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Latent codes (N, D) of scaled windows, by the artifact's encoder."""
    inputs, _ = split_window(artifact.spec, scaled)
    encoder = encoder_of(artifact.model)
    return np.asarray(
        encoder.predict(inputs, batch_size=batch_size, verbose=predict_verbosity(len(inputs)))
    )


def _training_rows(
    windows: Windows, series: Sequence[Series], fraction: float | None
) -> np.ndarray:
    rows = np.zeros(len(windows), dtype=bool)
    if not fraction:
        return rows
    names = np.asarray(windows.streams, dtype=object)
    for s in series:
        cut = int(len(s) * fraction)
        if cut >= 1:
            rows |= (names == s.name) & (windows.end_ts_ms <= s.ts_ms[cut - 1])
    return rows


def _pick_windows(
    windows: Windows, distances: np.ndarray, anomalous: np.ndarray, normal: np.ndarray, count: int
) -> tuple[np.ndarray, list[str]]:
    """Typical normal windows, the highest-scored labelled ones (or overall), by distance."""
    chosen: list[int] = []
    titles: list[str] = []
    half = max(count // 2, 1)
    normal_rows = np.flatnonzero(normal) if normal.any() else np.arange(len(windows))
    order = normal_rows[np.argsort(distances[normal_rows])]
    for q in np.linspace(0.2, 0.8, half):
        chosen.append(int(order[int(q * (len(order) - 1))]))
        titles.append("normal")
    pool = np.flatnonzero(anomalous) if anomalous.any() else np.arange(len(windows))
    worst = pool[np.argsort(distances[pool])[::-1]]
    for row in worst:
        if len(chosen) >= count:
            break
        if all(
            windows.streams[row] != windows.streams[c] or abs(int(row) - c) > windows.raw.shape[1]
            for c in chosen
        ):
            chosen.append(int(row))
            titles.append("labelled anomaly" if anomalous.any() else "highest distance")
    full_titles = [
        f"{t}: {Path(windows.streams[i]).name[:40]} d={distances[i]:.2f}"
        for t, i in zip(titles, chosen, strict=True)
    ]
    return np.asarray(chosen, dtype=int), full_titles


def _unscale(artifact: Artifact, windows: Windows, placed: np.ndarray) -> np.ndarray:
    scaling = artifact.scaling
    if scaling.mode == "stream":
        return placed * windows.stat_std[:, None, :] + windows.stat_mean[:, None, :]
    return placed * np.asarray(scaling.std) + np.asarray(scaling.mean)


def _raw_for_plot(windows: Windows, side: str) -> np.ndarray:
    raw = windows.raw.astype(np.float64).copy()
    if windows.padded:
        mask = step_mask(windows.lengths, raw.shape[1], "post" if side == "post" else "pre")
        raw[mask == 0] = np.nan
    return raw


def _markdown(
    artifact: Artifact,
    groups: Mapping[str, GroupStats],
    title: str | None,
    data_description: str,
    files: Sequence[Path],
    windows: Windows,
    labelled: bool,
    per_series: Mapping[str, Mapping[str, GroupStats]],
) -> str:
    spec, metrics = artifact.spec, artifact.metrics
    lines = [
        f"# {title or f'Model report: {artifact.name} {artifact.version}'}",
        "",
        f"- model: `{artifact.name}` version `{artifact.version}`, kind `{spec.kind}`, window "
        f"{spec.window}, hidden {spec.hidden} x {spec.layers} layer(s), code size "
        f"{spec.code_size}, reverse={spec.reverse}, horizon {spec.horizon}, masking={spec.masking}",
        f"- scaling: `{artifact.scaling.mode}`; calibration: "
        f"`{artifact.calibration.default.method}` "
        f"({len(artifact.calibration.per_stream)} per-stream override(s))",
        f"- training: {metrics.get('train_windows', '?')} training / "
        f"{metrics.get('val_windows', '?')} validation windows, {metrics.get('epochs_run', '?')} "
        f"epochs, {metrics.get('train_seconds', '?')} s on "
        f"{', '.join(metrics.get('devices', ['?']))}"
        f", best validation loss {metrics.get('val_loss', float('nan')):.4g}",
        f"- evaluated on {len(windows)} windows of {len(set(windows.streams))} series"
        + (f" ({data_description})" if data_description else ""),
        "",
        "## Reconstruction error by group",
        "",
        "MSE per window in the model's scaled units (real steps only); distance: the one-sided "
        "Mahalanobis distance of the log-MSE the score comes from; above threshold: share of "
        "windows whose score reaches the alert threshold.",
        "",
        "| group | windows | median MSE | mean MSE | median distance | above threshold |",
        "|---|---|---|---|---|---|",
        *[g.row(name) for name, g in groups.items() if g.windows],
        "",
    ]
    if labelled and groups["normal"].windows and groups["labelled anomaly"].windows:
        ratio = groups["labelled anomaly"].mse_median / max(groups["normal"].mse_median, 1e-12)
        lines += [f"Median MSE of labelled-anomaly windows / normal windows: **{ratio:.2f}x**.", ""]
    lines += [
        "## By series (windows after the training part)",
        "",
        "| series | normal windows | normal median MSE | normal above thr. |"
        + (" anomaly windows | anomaly median MSE | anomaly above thr. |" if labelled else ""),
        "|---|---|---|---|" + ("---|---|---|" if labelled else ""),
    ]
    for name, stats in per_series.items():
        n, a = stats["normal"], stats["labelled anomaly"]
        cells = f"| {name} | {n.windows} | {n.mse_median:.4g} | {n.above_threshold:.2%} |"
        if labelled:
            cells += f" {a.windows} | {a.mse_median:.4g} | {a.above_threshold:.2%} |"
        lines.append(cells)
    lines += ["", "## Thresholds", ""]
    for row in describe_thresholds(artifact.calibration):
        lines.append(
            f"- {row.scope}: score >= {row.threshold_score:.6f} "
            f"(distance {row.threshold_distance:.4g}); {row.how}"
        )
    lines += ["", "## Plots", ""]
    lines += [f"- `{p.name}`" for p in files] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in files] + [""]
    return "\n".join(lines)
