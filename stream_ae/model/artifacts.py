"""Model artifacts: what the trainer publishes and the worker loads.

An artifact is a directory::

    model.keras          the Keras model (loaded with safe_mode=True: no arbitrary code)
    spec.json            the ModelSpec
    preprocessing.json   the Scaling
    calibration.json     the CalibrationSet (global error model and per-stream overrides)
    metrics.json         training metrics (free-form)
    detector.json        optional: what comes after the model, {"post": ..., "policy": ...}:
                         the post-processing of the detector's window scores
                         (stream_ae.core.postprocess.PostParams; without it the calibrated
                         window score is the final score, as in artifacts before it existed)
                         and the detector's alert policy (stream_ae.core.alerting.AlertPolicy,
                         the fields it sets; without it the built-in policy, unless the
                         operator's settings say otherwise)
    manifest.json        name, version, sha256 of every file above; written last

Where artifacts live in a registry, and which one is the champion: :mod:`stream_ae.model.registry`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stream_ae.core.alerting import BUILT_IN, AlertPolicy
from stream_ae.core.postprocess import PostParams
from stream_ae.core.scoring import Calibration
from stream_ae.errors import ArtifactError, IncompatibleModelError
from stream_ae.model.network import ModelSpec

ARTIFACT_FORMAT = "stream-ae.artifact/v1"
MANIFEST = "manifest.json"
MODEL_FILE = "model.keras"
_JSON_FILES = ("spec.json", "preprocessing.json", "calibration.json", "metrics.json")
DETECTOR_FILE = "detector.json"
# Every file the loader always reads: the manifest must hash each of them, or a changed file
# that it leaves out would load unchecked (detector.json, optional, is checked by read_detector).
LOADED_FILES = (MODEL_FILE, *_JSON_FILES)


@dataclass(frozen=True)
class Scaling:
    """How raw values are scaled before the model sees them.

    ``global``: ``(x - mean) / std`` with constants fitted on the training data.
    ``stream``: each stream by its own running mean/std at the window's last event (kept in
    the window state), so streams of different levels share one model.
    """

    mode: Literal["global", "stream"] = "global"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def apply(
        self,
        windows: np.ndarray,
        stat_mean: np.ndarray | None = None,
        stat_std: np.ndarray | None = None,
    ) -> np.ndarray:
        """Scale raw windows (N, W, F); ``stat_*`` (N, F) are the running stats per window."""
        if self.mode == "stream":
            if stat_mean is None or stat_std is None:
                raise ValueError("stream scaling needs the running statistics of each window")
            mean, std = stat_mean[:, None, :], stat_std[:, None, :]
        else:
            mean, std = np.asarray(self.mean), np.asarray(self.std)
        return ((windows - mean) / std).astype(np.float32)

    def invert(
        self,
        scaled: np.ndarray,
        stat_mean: np.ndarray | None = None,
        stat_std: np.ndarray | None = None,
    ) -> np.ndarray:
        """Scaled windows (N, W, F) back in original units: the inverse of :meth:`apply`.

        >>> s = Scaling("global", (10.0,), (2.0,))
        >>> s.invert(s.apply(np.array([[[14.0]]]))).tolist()
        [[[14.0]]]
        """
        if self.mode == "stream":
            if stat_mean is None or stat_std is None:
                raise ValueError("stream scaling needs the running statistics of each window")
            mean, std = stat_mean[:, None, :], stat_std[:, None, :]
        else:
            mean, std = np.asarray(self.mean), np.asarray(self.std)
        return np.asarray(scaled, dtype=np.float64) * std + mean

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scaling:
        return cls(data["mode"], tuple(data["mean"]), tuple(data["std"]))

    @classmethod
    def fit(cls, values: np.ndarray, mode: Literal["global", "stream"] = "global") -> Scaling:
        """Fit global constants on training values (T, F); ``stream`` keeps them as fallback."""
        values = np.asarray(values, dtype=np.float64).reshape(-1, np.shape(values)[-1])
        std = np.maximum(values.std(axis=0), 1e-6)
        return cls(mode, tuple(values.mean(axis=0).tolist()), tuple(std.tolist()))


@dataclass(frozen=True)
class CalibrationSet:
    """The global calibration and optional per-stream ones (streams differ in baseline)."""

    default: Calibration
    per_stream: dict[str, Calibration] = field(default_factory=dict)

    def for_stream(self, stream: str) -> Calibration:
        return self.per_stream.get(stream, self.default)

    def route(self, streams: Sequence[str]) -> list[tuple[Calibration, np.ndarray]]:
        """Each calibration that scores some of the windows of ``streams`` (one stream name per
        window), with the indices of those windows: a stream's own calibration, else the
        global one. The worker and the offline tools score by this one routing.

        >>> from stream_ae.core.scoring import fit_calibration
        >>> errors = np.random.default_rng(0).normal(size=(100, 1))
        >>> cal = CalibrationSet(fit_calibration(errors), {"b": fit_calibration(errors)})
        >>> [(c is cal.default, rows.tolist()) for c, rows in cal.route(["a", "b", "c"])]
        [(True, [0, 2]), (False, [1])]
        """
        names = np.asarray(streams, dtype=object)
        own = (
            np.isin(names, list(self.per_stream)) if self.per_stream else np.zeros(len(names), bool)
        )
        groups: list[tuple[Calibration, np.ndarray]] = []
        if not own.all():
            groups.append((self.default, np.flatnonzero(~own)))
        for stream in sorted(set(names[own].tolist())):
            groups.append((self.per_stream[stream], np.flatnonzero(names == stream)))
        return groups

    def to_dict(self) -> dict[str, Any]:
        return {
            "default": self.default.to_dict(),
            "per_stream": {name: cal.to_dict() for name, cal in self.per_stream.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationSet:
        return cls(
            Calibration.from_dict(data["default"]),
            {name: Calibration.from_dict(c) for name, c in data.get("per_stream", {}).items()},
        )


@dataclass(frozen=True)
class Artifact:
    """A loaded, verified artifact."""

    name: str
    version: str
    path: Path
    spec: ModelSpec
    scaling: Scaling
    calibration: CalibrationSet
    metrics: dict[str, Any]
    model: Any  # keras.Model
    manifest: dict[str, Any]
    post: PostParams | None = None  # the detector's post-processing (detector.json), if any
    # The detector's alert policy (detector.json): the fields it sets; the operator's settings
    # win over it, field by field, and the built-in policy fills what neither sets.
    policy: AlertPolicy = field(default_factory=AlertPolicy)


@dataclass(frozen=True)
class StateShape:
    """What a model needs of the window states: their length and the features they hold, in
    order. Two models can share the window states (swap one for the other) only when their
    shapes are equal.

    >>> StateShape(16, ("value",)).describe()
    "window 16 x ['value']"
    """

    window: int
    feature_names: tuple[str, ...]

    @classmethod
    def of(cls, spec: ModelSpec) -> StateShape:
        return cls(spec.window, tuple(spec.feature_names))

    @classmethod
    def of_manifest(cls, manifest: dict[str, Any]) -> StateShape:
        """The shape a manifest declares (read before paying for a Keras load)."""
        try:
            return cls(int(manifest["window"]), tuple(str(f) for f in manifest["features"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"manifest without a valid window and features: {exc}") from None

    def describe(self) -> str:
        return f"window {self.window} x {list(self.feature_names)}"


def check_compatible(candidate: StateShape, running: StateShape, where: str) -> None:
    """The one compatibility check of a model against the window states in use (the running
    model's, or the stored states' at start-up): :class:`IncompatibleModelError` unless the
    window length and the features are the same.

    >>> check_compatible(StateShape(16, ("v",)), StateShape(16, ("v",)), "m/2")
    >>> check_compatible(StateShape(24, ("v",)), StateShape(16, ("v",)), "m/2")
    Traceback (most recent call last):
    ...
    stream_ae.errors.IncompatibleModelError: m/2: window 24 x ['v'] differs from ...
    """
    if candidate != running:
        raise IncompatibleModelError(
            f"{where}: {candidate.describe()} differs from {running.describe()} in use (a "
            "new window shape needs new window states: roll it out as a new worker group, "
            "see docs/operations.md)"
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    with path.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


def new_version() -> str:
    """A sortable version string: UTC time to the microsecond."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def save_artifact(
    directory: Path,
    *,
    model: Any,
    spec: ModelSpec,
    scaling: Scaling,
    calibration: CalibrationSet,
    name: str,
    version: str | None = None,
    metrics: dict[str, Any] | None = None,
    post: PostParams | None = None,
    policy: AlertPolicy | None = None,
) -> Path:
    """Write an artifact into ``directory`` (created; must be empty). The manifest, with the
    sha256 of every file, is written last, so a directory without one is incomplete.

    ``post`` and ``policy`` (the fields it sets) go into ``detector.json``, written only when
    there is either."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise ArtifactError(f"artifact directory {directory} is not empty")
    version = version or new_version()
    model.save(directory / MODEL_FILE)
    _write_json(directory / "spec.json", spec.to_dict())
    _write_json(directory / "preprocessing.json", scaling.to_dict())
    _write_json(directory / "calibration.json", calibration.to_dict())
    _write_json(directory / "metrics.json", metrics or {})
    written = [MODEL_FILE, *_JSON_FILES]
    detector = detector_dict(post, policy)
    if detector:
        _write_json(directory / DETECTOR_FILE, detector)
        written.append(DETECTOR_FILE)
    import keras

    files = {fname: sha256_file(directory / fname) for fname in written}
    _write_json(
        directory / MANIFEST,
        {
            "format": ARTIFACT_FORMAT,
            "name": name,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(),
            "keras_version": keras.__version__,
            "window": spec.window,
            "features": list(spec.feature_names),
            "kind": spec.kind,
            "files": files,
        },
    )
    return directory


def write_artifact(artifact: Artifact, directory: Path, *, version: str | None = None) -> Path:
    """Save an artifact held in memory (a fresh fit, a recalibration, a benchmark model) into
    ``directory``, under ``version`` if given, else its own."""
    return save_artifact(
        directory,
        model=artifact.model,
        spec=artifact.spec,
        scaling=artifact.scaling,
        calibration=artifact.calibration,
        name=artifact.name,
        version=version or artifact.version or None,
        metrics=artifact.metrics,
        post=artifact.post,
        policy=artifact.policy,
    )


def detector_dict(post: PostParams | None, policy: AlertPolicy | None) -> dict[str, Any]:
    """What ``detector.json`` holds for ``post`` and ``policy``: each only when there is one
    (a policy that sets no field is none), so an artifact without a policy is written as
    before policies existed.

    >>> detector_dict(None, AlertPolicy(resolve_after=10))
    {'policy': {'resolve_after': 10}}
    """
    detector: dict[str, Any] = {}
    if post is not None:
        detector["post"] = post.to_dict()
    if policy is not None and policy.as_dict():
        detector["policy"] = policy.as_dict()
    return detector


def parse_policy(data: Any) -> AlertPolicy:
    """The alert policy of a detector definition (``detector.json``'s ``"policy"``): an object
    with any of ``threshold``, ``resolve_ratio``, ``open_after``, ``resolve_after`` and
    ``cooldown``. ``ValueError`` with one line naming the offending key or value.

    >>> parse_policy({"resolve_after": 10}).resolve_after
    10
    >>> parse_policy({"resolve_afterr": 10})
    Traceback (most recent call last):
    ...
    ValueError: policy: unknown key 'resolve_afterr' (known: threshold, resolve_ratio, open_after, resolve_after, cooldown)
    """  # noqa: E501
    known = ("threshold", *BUILT_IN)
    if not isinstance(data, dict):
        raise ValueError(f"policy: expected an object of {', '.join(known)}, got {data!r}")
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"policy: unknown key {key!r} (known: {', '.join(known)})")
        integral = key in ("open_after", "resolve_after", "cooldown")
        if isinstance(value, bool) or not isinstance(value, int if integral else int | float):
            kind = "an integer" if integral else "a number"
            raise ValueError(f"policy: {key} must be {kind}, got {value!r}")
    try:
        return AlertPolicy(**data)
    except ValueError as exc:
        raise ValueError(f"policy: {exc}") from None


def parse_detector(data: Any) -> tuple[PostParams | None, AlertPolicy]:
    """The post-processing (None without one) and the alert policy of a ``detector.json``'s
    content: ``{"post": {...}, "policy": {...}}``, each optional. ``ValueError`` (one line) for
    anything else."""
    if not isinstance(data, dict):
        raise ValueError(f"expected an object with 'post' and/or 'policy', got {data!r}")
    unknown = sorted(set(data) - {"post", "policy"})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} (known: post, policy)")
    try:
        post = PostParams.from_dict(data["post"]) if data.get("post") is not None else None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"post: {exc}") from None
    return post, parse_policy(data.get("policy", {}))


def parse_manifest(text: str, where: str) -> dict[str, Any]:
    """The manifest in ``text`` (read from ``where``, named in errors), checked for its format
    and its table of files.

    A manifest that does not list every file the loader reads (:data:`LOADED_FILES`) is
    refused: what it leaves out could be changed unnoticed. Its files must be plain names
    inside the artifact (a manifest read from object storage names what gets downloaded)."""
    try:
        manifest: dict[str, Any] = json.loads(text)
    except ValueError as exc:
        raise ArtifactError(f"{where}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{where}: format {found!r}, expected {ARTIFACT_FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{where}: no 'files' table of sha256 digests")
    outside = [
        f for f in files if not isinstance(f, str) or "/" in f or f.startswith(".") or f == MANIFEST
    ]
    if outside:
        raise ArtifactError(f"{where}: lists {outside}: an artifact's files are plain names in it")
    unlisted = [fname for fname in LOADED_FILES if fname not in files]
    if unlisted:
        raise ArtifactError(
            f"{where}: does not list {', '.join(unlisted)}; every file the loader reads must "
            "be listed with its sha256"
        )
    return manifest


def read_manifest(directory: Path, verify: bool = True) -> dict[str, Any]:
    """The manifest of an artifact (:func:`parse_manifest`), after checking every file's
    sha256 (``verify``)."""
    path = Path(directory) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ArtifactError(
            f"{directory}: no {MANIFEST} (not an artifact, or incomplete)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest: {exc}") from None
    manifest = parse_manifest(text, str(path))
    if verify:
        for fname, expected in manifest["files"].items():
            file_path = Path(directory) / fname
            if not file_path.is_file():
                raise ArtifactError(f"{directory}: {fname} is missing")
            actual = sha256_file(file_path)
            if actual != expected:
                raise ArtifactError(
                    f"{directory}: {fname} is corrupt (sha256 {actual[:12]}..., "
                    f"manifest says {expected[:12]}...)"
                )
    return manifest


def read_metadata(
    directory: Path, verify: bool = True
) -> tuple[dict[str, Any], ModelSpec, Scaling, CalibrationSet, dict[str, Any]]:
    """Everything of an artifact but the model: manifest (files checked when ``verify``), spec,
    scaling, calibration and metrics. Cheap: TensorFlow is not needed."""
    directory = Path(directory)
    manifest = read_manifest(directory, verify=verify)
    try:
        spec = ModelSpec.from_dict(json.loads((directory / "spec.json").read_text()))
        scaling = Scaling.from_dict(json.loads((directory / "preprocessing.json").read_text()))
        calibration = CalibrationSet.from_dict(
            json.loads((directory / "calibration.json").read_text())
        )
        metrics = json.loads((directory / "metrics.json").read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{directory}: invalid artifact metadata: {exc}") from None
    return manifest, spec, scaling, calibration, metrics


def read_detector(
    directory: Path, manifest: dict[str, Any]
) -> tuple[PostParams | None, AlertPolicy]:
    """The detector's post-processing (None without one) and alert policy (the fields it sets)
    from ``detector.json``; without the file, neither. Read only when the manifest lists (and
    so hashes) it: an unlisted file is refused, not trusted."""
    path = Path(directory) / DETECTOR_FILE
    if DETECTOR_FILE not in manifest.get("files", {}):
        if path.exists():
            raise ArtifactError(f"{directory}: {DETECTOR_FILE} is not in the manifest")
        return None, AlertPolicy()
    try:
        return parse_detector(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the parser said
        raise ArtifactError(f"{directory}: invalid {DETECTOR_FILE}: {message}") from None


def load_artifact(directory: Path, expect: StateShape | ModelSpec | None = None) -> Artifact:
    """Load and verify an artifact; :class:`ArtifactError` says precisely what is wrong.

    ``expect``: the shape of the window states in use (or the spec of the model using them);
    the new model must have the same (:func:`check_compatible`, else
    :class:`IncompatibleModelError`).
    """
    directory = Path(directory)
    manifest, spec, scaling, calibration, metrics = read_metadata(directory, verify=True)
    post, policy = read_detector(directory, manifest)
    if expect is not None:
        running = expect if isinstance(expect, StateShape) else StateShape.of(expect)
        check_compatible(StateShape.of(spec), running, str(directory))
    if len(scaling.mean) != spec.features or calibration.default.error_mean.shape != (
        spec.features,
    ):
        raise ArtifactError(
            f"{directory}: scaling/calibration do not match {spec.features} features"
        )
    import keras

    try:
        model = keras.saving.load_model(directory / MODEL_FILE, compile=False, safe_mode=True)
    except Exception as exc:  # keras raises many types for a bad file
        raise ArtifactError(f"{directory}: cannot load {MODEL_FILE}: {exc}") from None
    expected_input = (None, spec.input_steps, spec.features)
    if tuple(model.input_shape) != expected_input:
        raise ArtifactError(
            f"{directory}: model input {tuple(model.input_shape)} does not match the spec's "
            f"{expected_input}"
        )
    return Artifact(
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        path=directory,
        spec=spec,
        scaling=scaling,
        calibration=calibration,
        metrics=metrics,
        model=model,
        manifest=manifest,
        post=post,
        policy=policy,
    )
