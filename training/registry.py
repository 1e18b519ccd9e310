"""The model registry's write side: publish, promote, roll back, and the records behind ``list``.

The layout, the champion pointer and the notification channel are the read side's
(:mod:`stream_ae.model.registry`); this module adds the write side's records::

    <name>/decisions/<version>.json   status of a version: candidate, rejected (with the reason)
    <name>/HISTORY.jsonl         every champion change (promote, rollback), append-only
    <name>/.staging-*            a publish in progress; readers ignore it
    <name>/.lock                 serialises champion changes

Publishing is atomic. In a local folder, the artifact is written into a staging directory
next to its final place, every file and the directory are fsynced, its manifest is verified,
and one ``rename`` puts it in place, so a reader either sees no ``<version>/`` or a complete
one. The champion pointer flips last, by writing a temporary file, fsyncing it and
``os.replace``-ing the pointer; a worker reading ``CHAMPION`` therefore always finds a version
that is complete. Changes of the champion are serialised by an advisory lock
(``<name>/.lock``) so concurrent promotions cannot interleave their history records.

On object storage (a registry root such as ``s3://bucket/prefix``) there is no rename and no
lock: the artifact is staged and verified locally, uploaded file by file with its manifest
last (readers ignore a version without one), and the pointer is one small object written by
a single PUT; see :mod:`stream_ae.model.registry_store`.

After a flip, running workers are told through Redis pub/sub (channel ``stream-ae.models``,
payload ``{"name": ..., "version": ...}``) when a Redis URL is configured; they also re-read
the pointer periodically, so a lost notification only delays the switch.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stream_ae.errors import ArtifactError, IncompatibleModelError
from stream_ae.model.artifacts import StateShape, check_compatible, new_version, read_manifest
from stream_ae.model.registry import (
    CHAMPION_POINTER,
    DECISIONS_DIR,
    MODELS_CHANNEL,
    check_plain_name,
    is_published,
    local_version_dir,
    model_dir,
    read_champion,
    read_version_manifest,
    resolve_version,
    version_key,
    version_names,
)
from stream_ae.model.registry_store import LocalStore, open_store
from stream_ae.model.registry_store import write_atomic as write_atomic  # tests flip pointers

log = logging.getLogger(__name__)

HISTORY_FILE = "HISTORY.jsonl"

Notifier = Callable[[str, str], None]


def redis_notifier(
    redis_url: str,
    channel: str = MODELS_CHANNEL,
    *,
    username: str | None = None,
    password: str | None = None,
) -> Notifier:
    """A notifier that publishes ``{"name", "version"}`` on ``channel`` of the Redis at
    ``redis_url``. A Redis that cannot be reached is logged, not raised: the pointer is already
    flipped and workers poll it anyway."""

    def notify(name: str, version: str) -> None:
        import redis

        client = redis.Redis.from_url(
            redis_url,
            username=username,
            password=password,
            socket_connect_timeout=5,
            socket_timeout=5,
        )
        try:
            receivers = client.publish(channel, json.dumps({"name": name, "version": version}))
            log.info("notified %s workers on %s: %s %s", receivers, channel, name, version)
        except redis.RedisError as exc:
            log.warning("could not notify workers through %s: %s", redis_url, exc)
        finally:
            client.close()

    return notify


# The one loss ``list`` shows: the gate's error, comparable across versions whatever their
# scaling (a training loss is in the units of the model's own scaling, so two versions' losses
# side by side would compare different units).
LOSS_UNIT = "mean squared residual, in units of each window's running std (gate data)"


@dataclass(frozen=True)
class VersionInfo:
    """One version of a model as ``list`` shows it.

    ``loss`` and ``false_alert_rate`` are the gate's figures for this version (None when it
    was never gated: a first champion, a forced promotion, a version published by hand), with
    the champion's on the same data beside them (``champion_loss``,
    ``champion_false_alert_rate``); ``loss`` is in :data:`LOSS_UNIT` for every version.
    """

    version: str
    status: str  # champion, candidate, rejected, retired, incomplete
    created_at: str
    kind: str
    window: int
    reason: str = ""
    loss: float | None = None
    false_alert_rate: float | None = None
    champion_loss: float | None = None
    champion_false_alert_rate: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # training counts and times

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "status": self.status,
            "created_at": self.created_at,
            "kind": self.kind,
            "window": self.window,
            "reason": self.reason,
            "loss": self.loss,
            "loss_unit": LOSS_UNIT,
            "false_alert_rate": self.false_alert_rate,
            "champion_loss": self.champion_loss,
            "champion_false_alert_rate": self.champion_false_alert_rate,
            "metrics": self.metrics,
        }


def format_versions(versions: list[VersionInfo]) -> str:
    """The table ``list`` prints: status, the gate's loss and false-alert rate (the
    champion's at gate time in brackets), and the reason of the last decision."""
    lines = [
        f"{'version':<26} {'status':<10} {'kind':<12} {'window':>6} "
        f"{'loss':>9} {'(champ)':>9} {'false %':>8} {'(champ)':>8}  reason",
    ]
    for v in versions:
        lines.append(
            f"{v.version:<26} {v.status:<10} {v.kind:<12} {v.window:>6} "
            f"{_number(v.loss, '.4g'):>9} {_number(v.champion_loss, '.4g'):>9} "
            f"{_number(v.false_alert_rate, '.3%'):>8} "
            f"{_number(v.champion_false_alert_rate, '.3%'):>8}  {v.reason}"
        )
    lines.append(f"loss: {LOSS_UNIT}; '-': never gated")
    return "\n".join(lines)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _gate_figures(gate: Any) -> dict[str, float | None]:
    """The figures of a gate decision record (``GateDecision.to_dict``), None where absent."""
    gate = gate if isinstance(gate, dict) else {}
    challenger = gate.get("challenger") or {}
    champion = gate.get("champion") or {}
    return {
        "loss": challenger.get("error"),
        "false_alert_rate": challenger.get("false_alert_rate"),
        "champion_loss": champion.get("error"),
        "champion_false_alert_rate": champion.get("false_alert_rate"),
    }


class Registry:
    """The registry rooted at ``root``: a folder, or a URL of object storage (see the module
    docstring).

    ``notifier`` is called with ``(name, version)`` after every champion change, e.g.
    :func:`redis_notifier`; None notifies nobody. ``cache_dir``: where versions on object
    storage are downloaded to be verified and loaded (default: the user's cache).
    """

    def __init__(
        self,
        root: Path | str,
        notifier: Notifier | None = None,
        *,
        cache_dir: Path | None = None,
    ) -> None:
        self.store = open_store(root, cache_dir)
        self.root = self.store.root
        self.notifier = notifier

    # --- reading ----------------------------------------------------------------------------

    def model_dir(self, name: str) -> Path:
        """The folder of model ``name`` in a local registry."""
        if not isinstance(self.store, LocalStore):
            raise ArtifactError(f"{self.root} is object storage, not a folder")
        return model_dir(Path(self.root), name)

    def path(self, name: str, version: str) -> Path:
        """A local folder holding ``version``: its own folder in a local registry, its verified
        copy in the local cache on object storage."""
        return local_version_dir(self.root, name, version)

    def location(self, name: str, version: str) -> str:
        """Where ``version`` is published (a path or a URL), for messages."""
        return self.store.describe(version_key(name, version))

    def champion(self, name: str) -> str | None:
        """The version the pointer names, or None."""
        return read_champion(self.root, name)

    def versions(self, name: str) -> list[str]:
        """Published version folders (an incomplete one included), oldest first."""
        return version_names(self.root, name)

    def decision(self, name: str, version: str) -> dict[str, Any]:
        """The status record of a version (``{}`` when it has none)."""
        text = self.store.read_text(self._key(name, DECISIONS_DIR, f"{version}.json"))
        if text is None:
            return {}
        record: dict[str, Any] = json.loads(text)
        return record

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every champion change, oldest first."""
        text = self.store.read_text(self._key(name, HISTORY_FILE))
        if text is None:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version with its status, oldest first."""
        champion = self.champion(name)
        former = {e["version"] for e in self.history(name)}
        out = []
        for version in self.versions(name):
            try:
                manifest = read_version_manifest(self.root, name, version)
            except ArtifactError:
                out.append(VersionInfo(version, "incomplete", "", "", 0))
                continue
            record = self.decision(name, version)
            if version == champion:
                status = "champion"
            elif record.get("status") == "rejected":
                status = "rejected"
            elif version in former:
                status = "retired"
            else:
                status = "candidate"
            try:
                metrics_text = self.store.read_text(f"{version_key(name, version)}/metrics.json")
                metrics = json.loads(metrics_text or "{}")
            except (ArtifactError, ValueError):
                metrics = {}
            out.append(
                VersionInfo(
                    version=version,
                    status=status,
                    created_at=str(manifest.get("created_at", "")),
                    kind=str(manifest.get("kind", "")),
                    window=int(manifest.get("window", 0)),
                    reason=str(record.get("reason", "")),
                    **_gate_figures(record.get("gate")),
                    metrics={
                        k: metrics[k]
                        for k in ("train_windows", "epochs_run", "train_seconds")
                        if k in metrics
                    },
                )
            )
        return out

    # --- writing ----------------------------------------------------------------------------

    def publish(
        self,
        name: str,
        write: Callable[[Path, str], Any],
        version: str | None = None,
    ) -> str:
        """Publish a new version: ``write(directory, version)`` writes the artifact into an
        empty local staging directory; it is verified, then put in place atomically for
        readers (renamed on a local folder; uploaded with its manifest last on object
        storage). Returns the version. The champion is not changed (see :meth:`promote`).
        A version that exists already is refused: versions are immutable."""
        version = version or new_version()
        key = version_key(name, version)
        if self.store.is_dir(key):
            where = self.store.describe(key)
            raise ArtifactError(f"{where} already exists: versions are immutable")
        with self.store.staging(name, version) as staging:
            write(staging, version)
            manifest = read_manifest(staging, verify=True)
            if manifest.get("name") != name or manifest.get("version") != version:
                raise ArtifactError(
                    f"artifact says {manifest.get('name')}/{manifest.get('version')}, "
                    f"published as {name}/{version}"
                )
            self.store.put_version(staging, key)
        self._record(name, version, {"status": "candidate", "reason": "published"})
        log.info("published %s/%s", name, version)
        return version

    def publish_dir(self, name: str, source: Path) -> str:
        """Publish a copy of an existing artifact directory under its own version."""
        manifest = read_manifest(source, verify=True)
        if manifest.get("name") != name:
            raise ArtifactError(
                f"{source} is an artifact of model {manifest.get('name')!r}, not {name!r}"
            )

        def copy(directory: Path, version: str) -> None:
            del version
            shutil.copytree(source, directory)

        return self.publish(name, copy, version=str(manifest["version"]))

    def reject(self, name: str, version: str, reason: str, gate: dict[str, Any]) -> None:
        """Keep ``version`` as a rejected candidate, with the reason."""
        self._record(name, version, {"status": "rejected", "reason": reason, "gate": gate})
        log.warning("rejected %s/%s: %s", name, version, reason)

    def resolve(self, name: str, ref: str) -> str:
        """The version ``ref`` names: what :func:`resolve_version` accepts (a version,
        ``latest``, a unique prefix), or ``previous`` (the champion a rollback would return
        to)."""
        if ref == "previous" and not is_published(self.root, name, ref):
            stack = self.champion_stack(name)
            if len(stack) < 2:
                raise ArtifactError(f"{name}: no earlier champion, so no 'previous'")
            return stack[-2]
        return resolve_version(self.root, name, ref)

    def promote(
        self,
        name: str,
        version: str,
        *,
        reason: str = "promoted",
        gate: dict[str, Any] | None = None,
        force: bool = False,
        allow_rejected: bool = False,
        event: str = "promote",
    ) -> str:
        """Make ``version`` (anything :meth:`resolve` accepts) the champion: verify it, check
        that running workers can take it, flip the pointer, log it, notify. Returns the version.

        A version whose window or features differ from the champion's would be refused by every
        running worker (it needs new window states): :class:`IncompatibleModelError`, unless
        ``force`` (for a registry that new workers start from, after the old group is gone).
        A candidate the gate rejected is refused unless ``allow_rejected``.
        """
        version = self.resolve(name, version)
        # Every file against the manifest (on object storage: its downloaded copy).
        manifest = read_manifest(self.path(name, version), verify=True)
        record = self.decision(name, version)
        if record.get("status") == "rejected" and not allow_rejected:
            raise ArtifactError(
                f"{name}/{version} was rejected ({record.get('reason')}); allow rejected "
                "versions (--allow-rejected) to promote it anyway"
            )
        with self.store.lock(check_plain_name("model name", name)):
            try:
                previous = self.champion(name)
            except ArtifactError as exc:  # a bad pointer is what a promotion puts right
                log.warning("replacing an invalid champion pointer: %s", exc)
                previous = None
            self._check_workers_can_take(name, version, manifest, previous, force)
            # Last, and one write: a reader finds the old champion or the new, both complete.
            self.store.write_atomic(self._key(name, CHAMPION_POINTER), version + "\n")
            self._append_history(
                name,
                {"event": event, "version": version, "previous": previous, "reason": reason},
            )
            # A promotion by hand keeps the gate's figures of an earlier decision.
            gate = gate or record.get("gate")
            self._record(
                name,
                version,
                {"status": "champion", "reason": reason} | ({"gate": gate} if gate else {}),
            )
        if event == "rollback":
            log.info("rolled back %s to %s (was %s): %s", name, version, previous, reason)
        else:
            log.info("promoted %s/%s to champion (was %s): %s", name, version, previous, reason)
        if self.notifier is not None:
            self.notifier(name, version)
        return version

    def rollback(
        self, name: str, to: str | None = None, reason: str = "rollback", force: bool = False
    ) -> str:
        """Make the previous champion (or ``to``, anything :meth:`resolve` accepts) the
        champion again; returns its version. ``force``: as in :meth:`promote`.

        History is a stack: a promotion pushes, a rollback pops, so rolling back twice goes two
        champions back rather than flipping between the last two.
        """
        if to is None:
            stack = self.champion_stack(name)
            if len(stack) < 2:
                raise ArtifactError(f"{name}: no earlier champion to roll back to")
            to = stack[-2]
        return self.promote(name, to, reason=reason, event="rollback", force=force)

    def _check_workers_can_take(
        self,
        name: str,
        version: str,
        manifest: dict[str, Any],
        champion: str | None,
        force: bool,
    ) -> None:
        """The workers' own compatibility check (:func:`check_compatible`) of ``version``
        against the champion they run; refused unless ``force``."""
        if champion is None or champion == version:
            return
        running = StateShape.of_manifest(read_version_manifest(self.root, name, champion))
        try:
            check_compatible(StateShape.of_manifest(manifest), running, f"{name}/{version}")
        except IncompatibleModelError as exc:
            if not force:
                raise IncompatibleModelError(
                    f"{exc}; running workers on champion {champion} would refuse it "
                    "(force the promotion only for a group that starts afresh)"
                ) from None
            log.warning("promoting although running workers will refuse it (forced): %s", exc)

    def champion_stack(self, name: str) -> list[str]:
        """The champions a rollback would return to, oldest first, the current one last."""
        stack: list[str] = []
        for entry in self.history(name):
            if entry["event"] == "rollback" and len(stack) >= 2 and stack[-2] == entry["version"]:
                stack.pop()
            else:
                stack.append(entry["version"])
        return stack

    # --- internals --------------------------------------------------------------------------

    @staticmethod
    def _key(name: str, *parts: str) -> str:
        return "/".join([check_plain_name("model name", name), *parts])

    def _record(self, name: str, version: str, record: dict[str, Any]) -> None:
        body = {"version": version, "at": datetime.now(UTC).isoformat()} | record
        self.store.write_atomic(
            self._key(name, DECISIONS_DIR, f"{version}.json"),
            json.dumps(body, indent=2, sort_keys=True),
        )

    def _append_history(self, name: str, entry: dict[str, Any]) -> None:
        line = json.dumps({"at": datetime.now(UTC).isoformat()} | entry, sort_keys=True)
        self.store.append_line(self._key(name, HISTORY_FILE), line)
