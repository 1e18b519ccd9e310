"""The model registry's read side: where versions live, which one is the champion, how workers
hear of a change and how they report the model they run.

Layout under a registry root (the worker's ``STREAM_AE_MODEL_PATH``: a folder, or a URL of
object storage such as ``s3://bucket/prefix``, see :mod:`stream_ae.model.registry_store`)::

    <name>/CHAMPION          one line: the champion's version (what workers load)
    <name>/<version>/        an artifact (stream_ae.model.artifacts), immutable once there
    <name>/decisions/, <name>/HISTORY.jsonl, <name>/.staging-*, <name>/.lock
                             the write side's records (``training.registry``); never versions

The champion pointer is trusted only as far as it names a *plain* version (no ``/``, no
``..``, no leading dot) that is published inside the registry: a pointer like ``../../x`` or
``/tmp/x`` is refused, so no artifact from outside the registry can be loaded through it.

Workers learn of a new champion from :data:`MODELS_CHANNEL` (Redis pub/sub, payload
``{"name": ..., "version": ...}``) and report what they run in a :class:`Heartbeat` under
:func:`heartbeat_key`. The Redis client itself lives in the worker and the CLI: this module
only names the channel and the keys, and encodes the heartbeat.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from stream_ae.errors import ArtifactError
from stream_ae.model.artifacts import MANIFEST, parse_manifest
from stream_ae.model.registry_store import is_url, open_store, registry_root

CHAMPION_POINTER = "CHAMPION"
# Where the registry announces champion changes: JSON {"name": ..., "version": ...}.
MODELS_CHANNEL = "stream-ae.models"
# Heartbeat keys are f"{redis_key_prefix}{WORKERS_KEY}{worker_id}".
WORKERS_KEY = ":workers:"
# Entries of a model's folder that belong to the write side, never versions.
DECISIONS_DIR = "decisions"
# A model name or a version: a single plain path component.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def check_plain_name(what: str, value: str) -> str:
    """``value`` if it is a plain name (letters, digits, ``._+-``, not starting with a dot):
    one path component that cannot leave the registry; else :class:`ArtifactError`.

    >>> check_plain_name("version", "20260101T000000Z")
    '20260101T000000Z'
    >>> check_plain_name("version", "../../x")
    Traceback (most recent call last):
    ...
    stream_ae.errors.ArtifactError: bad version '../../x': a plain name is expected ...
    """
    if not _PLAIN_NAME.fullmatch(value) or value == DECISIONS_DIR:
        raise ArtifactError(
            f"bad {what} {value!r}: a plain name is expected (letters, digits and ._+-, "
            "not starting with a dot), one entry inside the registry"
        )
    return value


def model_dir(root: Path, name: str) -> Path:
    """The folder of model ``name`` under the local registry ``root``."""
    return Path(root) / check_plain_name("model name", name)


def version_dir(root: Path, name: str, version: str) -> Path:
    """The artifact folder of ``version`` of model ``name`` in the local registry ``root``
    (the name is checked, not that it exists). On any registry: :func:`local_version_dir`."""
    return model_dir(root, name) / check_plain_name("version", version)


def version_key(name: str, version: str) -> str:
    """The key of a version in its registry's store (both names checked)."""
    return f"{check_plain_name('model name', name)}/{check_plain_name('version', version)}"


def local_version_dir(root: Path | str, name: str, version: str) -> Path:
    """A local folder holding ``version`` of model ``name`` to load it from: the version's own
    folder in a local registry, a verified copy in the local cache for object storage
    (:meth:`~stream_ae.model.registry_store.ObjectStore.local_dir`)."""
    return open_store(root).local_dir(version_key(name, version))


def is_artifact(path: Path | str) -> bool:
    """Whether ``path`` (a folder or a URL) is an artifact (it has a manifest) rather than a
    registry."""
    return open_store(path).is_file(MANIFEST)


def is_published(root: Path | str, name: str, version: str) -> bool:
    """Whether ``version`` of model ``name`` is complete: its manifest, written last, is there
    (a version without one is incomplete: being published, or left by a failed publish)."""
    return open_store(root).is_file(f"{version_key(name, version)}/{MANIFEST}")


def read_version_manifest(root: Path | str, name: str, version: str) -> dict[str, Any]:
    """The manifest of ``version`` (not checked against the files: see :func:`read_manifest`
    on :func:`local_version_dir` for that); :class:`ArtifactError` when it has none."""
    store = open_store(root)
    key = f"{version_key(name, version)}/{MANIFEST}"
    text = store.read_text(key)
    if text is None:
        raise ArtifactError(f"{store.describe(key)}: missing (not a version, or incomplete)")
    return parse_manifest(text, store.describe(key))


def version_names(root: Path | str, name: str) -> list[str]:
    """The version folders of model ``name``, sorted (oldest first: versions sort by time);
    a folder without a manifest is an incomplete version, still listed."""
    folders = open_store(root).list_dirs(check_plain_name("model name", name))
    return sorted(f for f in folders if _PLAIN_NAME.fullmatch(f) and f != DECISIONS_DIR)


def resolve_version(root: Path | str, name: str, ref: str) -> str:
    """The published version of model ``name`` that ``ref`` names: the version itself,
    ``latest`` (the newest published), or a unique prefix of one (versions are long
    timestamps). :class:`ArtifactError` says why when it names none, or several.
    (``previous`` needs the champion history: ``training.registry.Registry.resolve``.)"""
    published = [v for v in version_names(root, name) if is_published(root, name, v)]
    if ref in published:
        return ref
    if ref == "latest":
        if not published:
            raise ArtifactError(f"{name}: no published version, so no 'latest'")
        return published[-1]
    matches = [v for v in published if v.startswith(ref)] if ref else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise ArtifactError(
            f"{name}: {ref!r} is the prefix of {len(matches)} versions ({shown}); give more of it"
        )
    raise ArtifactError(
        f"{name}: no published version {ref!r} (nor a prefix of one; 'latest' also works)"
    )


def read_champion(root: Path | str, name: str) -> str | None:
    """The champion version of model ``name``, or None when there is no pointer (yet).

    Raises :class:`ArtifactError` when the pointer names anything but a version folder inside
    the registry (a path, ``..``, a version that does not exist). Whether that version is a
    complete, intact artifact is for the loader to check (its manifest).
    """
    store = open_store(root)
    key = f"{check_plain_name('model name', name)}/{CHAMPION_POINTER}"
    try:
        text = store.read_text(key)
    except ArtifactError as exc:
        raise ArtifactError(f"unreadable champion pointer: {exc}") from None
    text = (text or "").strip()
    if not text:
        return None
    pointer = store.describe(key)
    try:
        check_plain_name("version", text)
    except ArtifactError as exc:
        raise ArtifactError(f"{pointer}: {exc}") from None
    if not store.is_dir(f"{name}/{text}"):
        raise ArtifactError(f"{pointer} names {text!r}, which is not a version in the registry")
    return text


def resolve_artifact_dir(model_path: Path | str, model_name: str) -> Path:
    """``model_path`` itself if it is a local artifact, else (a local copy of) the champion of
    ``model_name`` in the registry rooted there."""
    if not is_url(model_path) and is_artifact(model_path):
        return Path(str(registry_root(model_path)))
    version = read_champion(model_path, model_name)
    if version is None:
        raise ArtifactError(
            f"{model_path} is neither an artifact (no {MANIFEST}) nor a registry with a "
            f"champion for model {model_name!r} (no {model_name}/{CHAMPION_POINTER})"
        )
    return local_version_dir(model_path, model_name, version)


# --- what workers report ------------------------------------------------------------------


def heartbeat_key(prefix: str, worker_id: str) -> str:
    """The Redis key of a worker's heartbeat.

    >>> heartbeat_key("sae", "w-1")
    'sae:workers:w-1'
    """
    return f"{prefix}{WORKERS_KEY}{worker_id}"


def heartbeat_pattern(prefix: str) -> str:
    """The SCAN pattern of every heartbeat key under ``prefix``."""
    return f"{prefix}{WORKERS_KEY}*"


@dataclass(frozen=True)
class Refusal:
    """A version a worker refused, and why."""

    version: str
    result: str  # refused_incompatible | refused_invalid
    reason: str


@dataclass(frozen=True)
class Heartbeat:
    """What a worker reports about its model, refreshed with a TTL under
    :func:`heartbeat_key` (written by :mod:`stream_ae.worker.heartbeat`, read by
    ``stream-ae model status``).

    >>> at = "2026-01-01T00:00:00+00:00"
    >>> beat = Heartbeat("w-1", "g", "m", "v2", "v1", "v2", 1, 0, None, at, 30)
    >>> Heartbeat.decode(beat.encode()) == beat
    True
    """

    worker_id: str
    group: str
    model: str
    version: str
    previous_version: str | None
    champion: str | None  # what the pointer named when the worker last read it
    swaps: int
    failures: int
    refused: Refusal | None  # the last refused version, until the worker moves on
    updated_at: str  # ISO 8601 with the time zone
    ttl_s: int

    def encode(self) -> bytes:
        """The key's value: a JSON object."""
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> Heartbeat:
        """The heartbeat in ``raw``; :class:`ValueError` names what is wrong with it."""
        try:
            data: Any = json.loads(raw)
            refused = data.get("refused")
            return cls(
                worker_id=str(data["worker_id"]),
                group=str(data["group"]),
                model=str(data["model"]),
                version=str(data["version"]),
                previous_version=_optional_str(data.get("previous_version")),
                champion=_optional_str(data.get("champion")),
                swaps=int(data["swaps"]),
                failures=int(data["failures"]),
                refused=None if refused is None else Refusal(**refused),
                updated_at=str(data["updated_at"]),
                ttl_s=int(data["ttl_s"]),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a heartbeat: {type(exc).__name__}: {exc}") from None

    def age_s(self, now: datetime) -> float | None:
        """Seconds since the heartbeat was written (None if its time cannot be read)."""
        try:
            return (now - datetime.fromisoformat(self.updated_at)).total_seconds()
        except (ValueError, TypeError):
            return None


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
