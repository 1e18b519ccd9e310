"""``stream-ae model``: which model every worker runs, and what is inside an artifact.

``stream-ae model status`` reads the workers' heartbeats in Redis (a
:class:`~stream_ae.model.registry.Heartbeat` under ``<redis_key_prefix>:workers:<worker_id>``,
written by the worker and expiring when it stops beating) and lists each live worker's model
version, its swap and refusal counts, next to the champion the registry names.

``stream-ae model show PATH`` prints an artifact's manifest (with an integrity check of every
file), its model spec, its scaling and, for the global calibration and every per-stream one, the
alert threshold and how it was derived. It reads JSON only: no TensorFlow start-up.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stream_ae.cli.boundary import REDIS_FIX
from stream_ae.errors import ArtifactError
from stream_ae.logs import mask_urls
from stream_ae.model.registry import (
    Heartbeat,
    heartbeat_pattern,
    is_artifact,
    local_version_dir,
    read_champion,
    resolve_version,
)
from stream_ae.model.registry_store import is_url, registry_root

# The fixed-width columns of ``model status``.
_STATUS_COLUMNS = (
    ("worker", 28),
    ("group", 16),
    ("model", 12),
    ("version", 24),
    ("swaps", 6),
    ("failures", 8),
    ("age_s", 6),
)


EXAMPLES = (
    "stream-ae model status",
    "stream-ae model show registry/default/20261123T162415937574Z",
    "stream-ae model status --key-prefix blue --key-prefix green --json",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Inspect models: 'status' lists the model version of every live worker (from their "
        "Redis heartbeats), 'show' prints what an artifact contains and how its thresholds "
        "were derived. Unset options come from the STREAM_AE_* settings."
    )
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    status = sub.add_parser(
        "status",
        help="the model version every live worker runs",
        description="List every live worker's model, version, swaps and refusals, from the "
        "heartbeat keys the workers refresh in Redis (a stopped worker's key expires). With a "
        "registry, workers not on its champion are marked.",
    )
    status.add_argument(
        "--redis-url",
        help="Redis holding the heartbeats (default: STREAM_AE_REDIS_URL); credentials come "
        "from STREAM_AE_REDIS_USERNAME/PASSWORD",
    )
    status.add_argument(
        "--key-prefix",
        action="append",
        metavar="PREFIX",
        help="key prefix the workers use; repeat it for several deployments at once, e.g. "
        "blue and green (default: STREAM_AE_REDIS_KEY_PREFIX)",
    )
    status.add_argument(
        "--group",
        action="append",
        help="only workers of this consumer group; repeatable (default: every group)",
    )
    status.add_argument(
        "--registry",
        type=registry_root,
        help="registry root (a folder, or a URL such as s3://bucket/prefix) whose champion "
        "is compared with each worker's version (default: STREAM_AE_MODEL_PATH when it is a "
        "registry)",
    )
    status.add_argument("--name", help="model name in the registry (default: STREAM_AE_MODEL_NAME)")
    status.add_argument(
        "--json", action="store_true", help="print the heartbeats as a JSON list instead"
    )

    show = sub.add_parser(
        "show",
        help="an artifact's manifest, spec and threshold derivation",
        description="Print an artifact's manifest (every file checked against its sha256), "
        "model spec, scaling and calibrations: for each, the alert threshold and how it was "
        "derived (method, level, distance, alert rate on normal data). Exit 1 if the artifact "
        "is corrupt or incomplete.",
    )
    show.add_argument(
        "path",
        type=registry_root,
        help="an artifact directory, or a registry root: a folder or a URL such as "
        "s3://bucket/prefix (then --version, or its champion)",
    )
    show.add_argument(
        "--name",
        help="model name when PATH is a registry root (default: STREAM_AE_MODEL_NAME)",
    )
    show.add_argument(
        "--version",
        help="version when PATH is a registry root: a version, a unique prefix of one, or "
        "'latest' (default: the champion)",
    )
    show.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the sha256 check of the files (faster on large models)",
    )
    show.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args: argparse.Namespace) -> int:
    # An error (a bad setting, an unreadable artifact) is the command line's one error line.
    if args.model_command == "status":
        return _status(args)
    return _show(args)


# --- status --------------------------------------------------------------------------------


def read_heartbeats(
    client: Any, prefix: str | Sequence[str], group: str | Sequence[str] | None = None
) -> tuple[list[Heartbeat], list[str]]:
    """Every live worker's heartbeat under one or several key prefixes (sorted by group, then
    worker), optionally of some groups only, and the keys whose value is not a heartbeat."""
    prefixes = [prefix] if isinstance(prefix, str) else list(prefix)
    groups = None if group is None else {group} if isinstance(group, str) else set(group)
    keys = sorted(
        {k for p in prefixes for k in client.scan_iter(match=heartbeat_pattern(p), count=500)}
    )
    if not keys:
        return [], []
    beats: list[Heartbeat] = []
    unreadable: list[str] = []
    for key, raw in zip(keys, client.mget(keys), strict=True):
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            beat = Heartbeat.decode(raw)
        except ValueError:
            unreadable.append(_text(key))
            continue
        if groups is None or beat.group in groups:
            beats.append(beat)
    return sorted(beats, key=lambda b: (b.group, b.worker_id)), unreadable


def _status(args: argparse.Namespace) -> int:
    from stream_ae.io.redis import connect_redis
    from stream_ae.settings import load_settings

    overrides = {"redis_url": args.redis_url} if args.redis_url else {}
    settings = load_settings(overrides)
    prefixes = args.key_prefix or [settings.redis_key_prefix]
    name = args.name or settings.model_name
    registry = args.registry or settings.model_path
    champion = (
        read_champion(registry, name)
        if registry is not None and not is_artifact(registry)
        else None
    )
    client = None
    try:
        client = connect_redis(settings)  # checks the connection and the login
        beats, unreadable = read_heartbeats(client, prefixes, args.group)
    except Exception as exc:
        print(
            f"stream-ae model status: error: cannot read {mask_urls(settings.redis_url)}: "
            f"{mask_urls(str(exc)).rstrip('.')}; {REDIS_FIX}",
            file=sys.stderr,
        )
        return 1
    finally:
        if client is not None:
            client.close()
    if args.json:
        rows: list[dict[str, Any]] = [asdict(beat) for beat in beats]
        rows += [{"key": key, "error": "unreadable heartbeat"} for key in unreadable]
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if champion is not None:
        print(f"registry {registry}: champion of {name} is {champion}")
    for key in unreadable:
        print(f"{key}: unreadable heartbeat")
    if not beats:
        scope = f" in group(s) {', '.join(args.group)}" if args.group else ""
        patterns = ", ".join(heartbeat_pattern(p) for p in prefixes)
        print(f"no live workers{scope} (no {patterns} heartbeat keys)")
        return 0
    print("  ".join(title.ljust(width) for title, width in _STATUS_COLUMNS) + "  note")
    now = datetime.now(UTC)
    for beat in beats:
        age_s = beat.age_s(now)
        row = [
            beat.worker_id,
            beat.group,
            beat.model,
            beat.version,
            beat.swaps,
            beat.failures,
            "?" if age_s is None else f"{age_s:.0f}",
        ]
        line = "  ".join(str(v).ljust(w) for v, (_, w) in zip(row, _STATUS_COLUMNS, strict=True))
        print(f"{line}  {_note(beat, champion)}".rstrip())
    versions = {b.version for b in beats}
    summary = f"{len(beats)} worker(s), {len(versions)} version(s)"
    if champion is not None:
        behind = sum(1 for b in beats if b.version != champion)
        summary += f", {behind} not on the champion"
    print(summary)
    return 0


def _note(beat: Heartbeat, champion: str | None) -> str:
    notes = []
    if beat.refused is not None:
        notes.append(f"refused {beat.refused.version} ({beat.refused.result})")
    if champion is not None and beat.version != champion:
        notes.append("not on the champion")
    return "; ".join(notes)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- show ----------------------------------------------------------------------------------


def describe_artifact(directory: Path, verify: bool = True) -> dict[str, Any]:
    """What ``model show`` prints, as a dict: manifest, integrity, spec, scaling,
    calibrations (threshold and derivation of each), the detector (its post-processing and the
    alert policy it sets, from ``detector.json``) and metrics. Raises :class:`ArtifactError`
    when the artifact is incomplete or (``verify``) corrupt."""
    from stream_ae.model.artifacts import read_detector, read_metadata

    manifest, spec, scaling, calibration, metrics = read_metadata(directory, verify=verify)
    post, policy = read_detector(directory, manifest)
    calibrations = {"default": calibration.default, **calibration.per_stream}
    return {
        "path": str(directory),
        "integrity": "verified" if verify else "not checked",
        "manifest": manifest,
        "spec": spec.to_dict(),
        "scaling": scaling.to_dict(),
        "calibration": {
            key: {
                "method": cal.method,
                "threshold": cal.threshold,
                "threshold_distance": cal.details.get("threshold_distance"),
                "level": cal.details.get("level"),
                "normal_alert_rate": cal.details.get("normal_alert_rate"),
                "windows": cal.details.get("windows"),
                "how": cal.details.get("how", "no derivation recorded"),
                "tail": {
                    "start": cal.tail_start,
                    "prob": cal.tail_prob,
                    "shape": cal.tail_shape,
                    "scale": cal.tail_scale,
                },
            }
            for key, cal in calibrations.items()
        },
        "detector": {
            "post": None if post is None else post.to_dict(),
            "policy": policy.as_dict(),
        },
        "metrics": metrics,
    }


def _show(args: argparse.Namespace) -> int:
    location = args.path  # a folder, or a URL of object storage (always a registry)
    if args.version or is_url(location) or not is_artifact(location):
        # A registry root: the named version, or the one its champion pointer names.
        name = args.name
        if name is None:
            from stream_ae.settings import load_settings

            name = load_settings().model_name
        version = (
            resolve_version(location, name, args.version)
            if args.version
            else read_champion(location, name)
        )
        if version is None:
            print(
                f"stream-ae model show: {location} is neither an artifact nor a registry with "
                f"a champion for model {name!r}",
                file=sys.stderr,
            )
            return 1
        directory = local_version_dir(location, name, version)  # a copy, from a URL
    else:
        directory = Path(location)
    try:
        info = describe_artifact(directory, verify=not args.no_verify)
    except ArtifactError as exc:
        print(f"stream-ae model show: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True, default=str))
    else:
        print(format_description(info))
    return 0


def format_description(info: dict[str, Any]) -> str:
    """The human-readable text of :func:`describe_artifact`'s dict."""
    manifest, spec, scaling = info["manifest"], info["spec"], info["scaling"]
    lines = [
        f"artifact   {info['path']}",
        f"model      {manifest.get('name')} version {manifest.get('version')}",
        f"created    {manifest.get('created_at')} (keras {manifest.get('keras_version')}, "
        f"format {manifest.get('format')})",
        f"integrity  {info['integrity']}: {len(manifest.get('files', {}))} files, sha256 each",
    ]
    for fname, digest in sorted(manifest.get("files", {}).items()):
        lines.append(f"             {fname:<20} {digest[:16]}...")
    lines.append("spec")
    for key, value in spec.items():
        lines.append(f"  {key:<14} {value}")
    lines.append(
        f"scaling    {scaling['mode']}: mean {_floats(scaling['mean'])}, "
        f"std {_floats(scaling['std'])}"
    )
    lines.append("calibration (a window's score: the CDF of its error distance on normal data)")
    for key, cal in info["calibration"].items():
        lines.append(
            f"  [{key}] threshold {cal['threshold']:.6g} on the score, method {cal['method']}"
        )
        lines.append(f"      how: {cal['how']}")
        if cal["threshold_distance"] is not None:
            lines.append(
                f"      = distance {cal['threshold_distance']:.6g}; level {cal['level']}; "
                f"{cal['windows']} normal windows, of which "
                f"{100 * (cal['normal_alert_rate'] or 0):.3f}% exceed it"
            )
        tail = cal["tail"]
        lines.append(
            f"      tail: GPD above distance {tail['start']:.4g} (P={tail['prob']:.3g}), "
            f"xi={tail['shape']:.3f}, sigma={tail['scale']:.4g}"
        )
    detector = info["detector"]
    if detector["post"] is None:
        lines.append("detector   no post-processing: the calibrated score is final")
    else:
        lines.append("detector   post-processing (detector.json)")
        for key, value in detector["post"].items():
            lines.append(f"  {key:<14} {json.dumps(value, default=str)}")
    policy = detector["policy"]
    lines.append(
        "alert policy "
        + (", ".join(f"{k}={v}" for k, v in policy.items()) if policy else "none of its own")
        + " (settings the operator sets win; the built-in rules fill the rest)"
    )
    if info["metrics"]:
        lines.append("metrics")
        for key, value in sorted(info["metrics"].items()):
            text = json.dumps(value, default=str)
            lines.append(f"  {key:<14} {text if len(text) <= 80 else text[:77] + '...'}")
    return "\n".join(lines)


def _floats(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"
