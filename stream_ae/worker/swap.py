"""Hot-swap of the model in a running worker: watch the registry, load off the hot path, swap
between two poll batches.

Three threads share a :class:`ModelManager`:

- the **worker thread** reads :meth:`ModelManager.current` (once per batch, through the
  processor) and calls :meth:`ModelManager.between_batches`, the only place a swap takes
  effect: two reference assignments under a lock, so every batch is scored by exactly one
  model and a swap costs the hot path nothing more;
- the **watch thread** re-reads the registry's champion pointer every
  ``model_poll_interval_s``, or at once when notified. When it names another version it waits
  a small random delay (jitter: a group notified together does not read the registry all at
  once), then loads and validates the artifact (manifest sha256, ``.keras`` loaded with
  ``safe_mode``, window, feature names and the model's input/output shapes against the running
  model, a warm-up call at every bucket size, a finite probe) and *stages* it. It also writes
  this worker's heartbeat key (``<redis_key_prefix>:workers:<worker_id>``, with a TTL; read by
  ``stream-ae model status``) and frees retired models;
- the **notify thread** listens on the Redis channel :data:`MODELS_CHANNEL`, where the
  registry announces champion changes, and wakes the watch thread. Polling stays on as the
  fallback, so a missed message (Redis away, a worker restarting) only delays a swap.

A rollback is the champion pointer moving back: the workers swap back the same way. The
previous model is kept loaded (and warm), so swapping back to it needs no reload.

A model that cannot be used is refused: a corrupt, truncated, unreadable or unloadable artifact
(``result="refused_invalid"``), or one whose window size, features or shapes differ from the
running model (``result="refused_incompatible"``). The refusal is logged with the reason, counted
in ``stream_ae_model_swaps`` and the heartbeat's ``failures``; the worker keeps scoring with the
model it has, and does not retry that version until the pointer names it again after another
one (published versions are immutable: a fix is a new version).

Changing the window size or the features cannot be a hot-swap: the window states in Redis hold
``W x F`` values per stream, so a different shape needs new states. Roll such a model out as a
new deployment instead: publish it under a new model name (or registry), start a second worker
group on the same input topics with its own ``group_id`` and ``redis_key_prefix``, wait until its
windows have filled (``W`` events per stream) and its alerts look right, then stop the old group.

Keeping the hot path quiet while a model loads (the watch thread shares the interpreter, and
with it the GIL, with the worker thread):

- *No tracing.* A freshly loaded Keras model traces its predict graph on its first calls
  (about 1.5 s of Python per call shape here), which would slow the worker's batches for
  seconds. A retrain keeps the architecture, so the new version's weights are copied into a
  model of the same architecture that is traced already (tens of milliseconds; the graphs
  capture the variables, not their values): a *spare* (one is prepared at start-up, so even
  the first swap needs no tracing), else the *previous* model. The previous one is then the
  model running now, so a rollback to the version before stays instant; only a second rollback
  in a row reloads from disk. A recycled model needs no warm-up; a new architecture is loaded
  and warmed up the slow way.
- *No full garbage collections.* Keras models hold reference cycles (layers and their model
  track each other), so a dropped model is freed only by the cycle collector, and a full
  collection of a process with TensorFlow loaded walks some 300k objects (~150 ms with the GIL
  held). At start-up the manager collects once and freezes every object alive then
  (:func:`gc.freeze`): later collections walk only what was created since. The start-up
  model's own cycles are frozen too, so it is never freed, only recycled.

Memory: two models stay loaded (the current and the previous), a third only while a spare
waits for its first use; a model loaded only for its weights, or one of an architecture no
longer in use, is dropped and collected in the watch thread. ``keras.backend.clear_session()``
is not an option: it resets Keras' global state while the running (and the staged) model still
use it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream_ae.errors import ArtifactError
from stream_ae.logs import fields
from stream_ae.model.artifacts import (
    MANIFEST,
    Artifact,
    load_artifact,
    read_champion,
    read_manifest,
)
from stream_ae.model.inference import Scorer
from stream_ae.settings import Settings
from stream_ae.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

# Where the registry announces champion changes: JSON {"name": ..., "version": ...}.
# training.registry publishes on the same channel (a test checks that they agree).
MODELS_CHANNEL = "stream-ae.models"
# Heartbeat keys are f"{redis_key_prefix}{WORKERS_KEY}{worker_id}".
WORKERS_KEY = ":workers:"


class IncompatibleModelError(ArtifactError):
    """A valid artifact that cannot replace the running model: its window, features or the
    model's input/output shapes differ (it would need new window states)."""


@dataclass(frozen=True)
class Refusal:
    """The last version this worker refused, and why."""

    version: str
    result: str  # refused_incompatible | refused_invalid
    reason: str


def heartbeat_key(prefix: str, worker_id: str) -> str:
    """The Redis key of a worker's heartbeat."""
    return f"{prefix}{WORKERS_KEY}{worker_id}"


class ModelManager:
    """A :class:`stream_ae.worker.loop.ModelSource` that follows the registry's champion.

    Arguments:
        settings: the worker's settings: ``model_path`` (the registry root), ``model_name``,
            ``model_poll_interval_s``, ``redis_key_prefix``, ``group_id``, ``worker_id``.
        scorer: the model the worker starts with (loaded and warm).
        metrics: where the model version and swap counts are exposed.
        redis_client: client for the heartbeat and the notifications; None connects with the
            settings. Redis being away is logged and retried, never raised.
        reload_jitter_s: the largest random delay before loading a new version; None:
            ``min(2, model_poll_interval_s / 4)``.
        heartbeat_interval_s: how often the heartbeat key is refreshed; None:
            ``min(10, model_poll_interval_s)``. Its TTL is three intervals.
        start: start the watch and notify threads now (tests drive :meth:`refresh` by hand).
        freeze_gc: collect and :func:`gc.freeze` at start-up (see the module docstring).
        recycle_models: copy a new version's weights into a traced model of the same
            architecture instead of tracing a new one (see the module docstring).
        prepare_spare: at start, load a second copy of the running model in the watch thread
            and warm it up, so that even the first swap needs no tracing.
        seed: seed of the jitter's random generator.
    """

    def __init__(
        self,
        settings: Settings,
        scorer: Scorer,
        metrics: WorkerMetrics | None = None,
        *,
        redis_client: Any | None = None,
        reload_jitter_s: float | None = None,
        heartbeat_interval_s: float | None = None,
        start: bool = True,
        freeze_gc: bool = True,
        recycle_models: bool = True,
        prepare_spare: bool = True,
        seed: int | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.model_name = settings.model_name
        model_path = Path(settings.model_path)
        # A single artifact directory has nothing to follow; a registry root has a pointer.
        self.registry_root: Path | None = None if (model_path / MANIFEST).is_file() else model_path
        self.worker_id = settings.resolved_worker_id
        self.poll_interval_s = settings.model_poll_interval_s
        self.reload_jitter_s = (
            min(2.0, self.poll_interval_s / 4) if reload_jitter_s is None else reload_jitter_s
        )
        self.heartbeat_interval_s = heartbeat_interval_s or min(10.0, self.poll_interval_s)
        # Three intervals: one late heartbeat (a slow load) does not make a worker vanish.
        self.heartbeat_ttl_s = max(1, round(self.heartbeat_interval_s * 3))
        self._redis_client = redis_client
        self._rng = random.Random(seed)
        self.recycle_models = recycle_models
        self.prepare_spare = prepare_spare and recycle_models

        self._current = scorer
        self._previous: Scorer | None = None
        self._staged: Scorer | None = None
        self._retired: list[Scorer] = []
        self._spare: Scorer | None = None  # retired, traced, its weights free to overwrite
        self._garbage: list[Any] = []  # models loaded only for their weights
        self._swap_lock = threading.Lock()  # guards the six references above
        self._refresh_lock = threading.Lock()  # one load at a time
        self.swaps = 0
        self.failures = 0
        self.last_refusal: Refusal | None = None
        self.champion: str | None = scorer.version  # what the pointer named when last read
        self._pointer_error: str | None = None

        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._check_requested = threading.Event()
        self._beat_requested = threading.Event()
        self._redis_ok = True
        self._threads: list[threading.Thread] = []

        self.metrics.set_model(scorer.artifact.name, scorer.version)
        if freeze_gc:
            gc.collect()  # garbage of the start-up must not become immortal
            gc.freeze()
        if self.registry_root is None:
            log.info(
                "model path is a single artifact: hot-swap off (point STREAM_AE_MODEL_PATH "
                "at a registry root to follow its champion)",
                extra=fields(model_path=str(model_path)),
            )
        if start:
            self.start()

    # --- ModelSource ---------------------------------------------------------------------

    def current(self) -> Scorer:
        """The model scoring the current batch (changes only in :meth:`between_batches`)."""
        return self._current

    def between_batches(self) -> None:
        """Swap in the staged model, if any: the only point where the model changes."""
        if self._staged is None:  # the common case: one attribute read, no lock
            return
        with self._swap_lock:
            staged, self._staged = self._staged, None
            if staged is None:
                return
            old = self._current
            if self._previous is not None and self._previous is not staged:
                # Freed by the watch thread: a collection here would stall this batch.
                self._retired.append(self._previous)
            self._previous, self._current = old, staged
            self.swaps += 1
        self.metrics.set_model(staged.artifact.name, staged.version)
        self.metrics.model_swaps.labels(result="swapped").inc()
        log.info(
            "model swapped",
            extra=fields(model=staged.artifact.name, version=staged.version, was=old.version),
        )
        self._beat_requested.set()
        self._wakeup.set()

    def close(self) -> None:
        """Stop the threads and remove this worker's heartbeat."""
        self._stop.set()
        self._wakeup.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        try:
            self._redis().delete(heartbeat_key(self.settings.redis_key_prefix, self.worker_id))
        except Exception as exc:  # the key expires on its own
            log.debug("heartbeat not removed: %s", exc)
        self.release_retired()

    # --- state for tests, the heartbeat and status ---------------------------------------

    @property
    def version(self) -> str:
        return self._current.version

    @property
    def previous_version(self) -> str | None:
        previous = self._previous
        return previous.version if previous is not None else None

    @property
    def spare_ready(self) -> bool:
        """Whether a traced spare model waits to be recycled (see the module docstring)."""
        return self._spare is not None

    @property
    def staged_version(self) -> str | None:
        staged = self._staged
        return staged.version if staged is not None else None

    # --- threads -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the watch thread and, with a registry to follow, the notify thread."""
        if self._threads:
            return
        targets = [("model-watch", self._watch_loop)]
        if self.registry_root is not None:
            targets.append(("model-notify", self._notify_loop))
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def request_check(self) -> None:
        """Re-read the champion pointer now (what a notification does)."""
        self._check_requested.set()
        self._wakeup.set()

    def _watch_loop(self) -> None:
        spare_pending = self.prepare_spare and self.registry_root is not None
        next_poll = time.monotonic() + self.poll_interval_s
        next_beat = 0.0
        while not self._stop.is_set():
            try:
                if self._beat_requested.is_set() or time.monotonic() >= next_beat:
                    self._beat_requested.clear()
                    self.write_heartbeat()
                    next_beat = time.monotonic() + self.heartbeat_interval_s
                if spare_pending:  # after the first heartbeat: status lists the worker at once
                    spare_pending = False
                    self._prepare_spare()
                self.release_retired()
                if self._check_requested.is_set() or time.monotonic() >= next_poll:
                    self._check_requested.clear()
                    next_poll = time.monotonic() + self.poll_interval_s
                    if self.registry_root is not None:
                        self.refresh(jitter_s=self._rng.uniform(0.0, self.reload_jitter_s))
            except Exception:  # never let the watcher die: the worker would stop following
                log.exception("model watcher error")
                next_poll = time.monotonic() + self.poll_interval_s
            timeout = min(next_poll, next_beat) - time.monotonic()
            self._wakeup.wait(max(0.0, timeout))
            self._wakeup.clear()

    def _prepare_spare(self) -> None:
        """A second, warm copy of the running model, for the first swap to recycle."""
        started = time.perf_counter()
        try:
            running = self._current
            scorer = Scorer(load_artifact(running.artifact.path), running.buckets)
            scorer.warm_up()
        except Exception as exc:  # only an optimisation: the first swap will trace instead
            log.warning("no spare model prepared", extra=fields(error=str(exc)))
            return
        with self._swap_lock:
            if self._spare is None:
                self._spare = scorer
        log.info("spare model ready", extra=fields(seconds=round(time.perf_counter() - started, 3)))

    def _notify_loop(self) -> None:
        backoff_s = 0.5
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._redis().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(MODELS_CHANNEL)
                backoff_s = 0.5
                # A message may have been missed while unsubscribed: look now.
                self.request_check()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_notification(message.get("data"))
            except Exception as exc:  # Redis away: polling covers it meanwhile
                log.warning(
                    "model notifications unavailable, polling only",
                    extra=fields(error=str(exc), retry_in_s=backoff_s),
                )
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, self.settings.retry_backoff_max_s)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def _on_notification(self, data: Any) -> None:
        try:
            body = orjson.loads(data)
            name = body.get("name") if isinstance(body, dict) else None
        except (orjson.JSONDecodeError, TypeError):
            log.warning("ignored a malformed model notification", extra=fields(data=str(data)))
            return
        if name == self.model_name:
            log.info("model notification", extra=fields(**body))
            self.request_check()

    def _redis(self) -> Any:
        if self._redis_client is None:
            from stream_ae.io.redis import connect_redis

            self._redis_client = connect_redis(self.settings)
        return self._redis_client

    # --- loading -------------------------------------------------------------------------

    def refresh(self, jitter_s: float = 0.0) -> str:
        """Read the champion pointer and stage its version if it is new and usable.

        Returns what happened: ``current`` (nothing to do), ``staged`` (ready, swapped in at
        the next :meth:`between_batches`), ``refused``, ``no_pointer`` or ``superseded`` (the
        pointer moved again during the load). Never raises for a bad artifact or pointer.
        """
        with self._refresh_lock:
            target = self._read_pointer()
            if target is None:
                return "no_pointer"
            if self._settled(target):
                return "current" if self._staged is None else "staged"
            if self.last_refusal is not None and self.last_refusal.version == target:
                return "refused"  # already said why; a fix is a new version
            if jitter_s > 0:
                if self._stop.wait(jitter_s):
                    return "current"  # stopping: the worker is going away anyway
                target = self._read_pointer()
                if target is None:
                    return "no_pointer"
                if self._settled(target):
                    return "current" if self._staged is None else "staged"
            previous = self._previous
            if previous is not None and previous.version == target:
                scorer = previous  # rollback: kept loaded and warm, nothing to read
                log.info("model rollback staged", extra=fields(version=target))
            else:
                loaded = self._load_checked(target)
                if loaded is None:
                    return "refused"
                scorer = loaded
            if self._read_pointer() != target:
                self._retire(scorer)
                self.request_check()
                return "superseded"
            with self._swap_lock:
                if self._staged is not None and self._staged is not scorer:
                    self._retire_locked(self._staged)
                self._staged = scorer
            self.last_refusal = None
            return "staged"

    def _settled(self, target: str) -> bool:
        """True when ``target`` runs or is staged; drops a staged model the pointer left."""
        if self._current.version == target:
            with self._swap_lock:
                if self._staged is not None:  # the pointer moved back before the swap
                    self._retire_locked(self._staged)
                    self._staged = None
            self.last_refusal = None
            return True
        staged = self._staged
        return staged is not None and staged.version == target

    def _read_pointer(self) -> str | None:
        assert self.registry_root is not None
        version: str | None = None
        error: str | None = None
        try:
            version = read_champion(self.registry_root, self.model_name)
        except OSError as exc:
            error = f"cannot read the champion pointer: {exc}"
        else:
            error = None if version else "no champion pointer"
        if error != self._pointer_error:  # log changes only, not every poll
            if error:
                log.error(error, extra=fields(registry=str(self.registry_root)))
            self._pointer_error = error
        if version is not None:
            self.champion = version
        return version

    def _load_checked(self, version: str) -> Scorer | None:
        """:meth:`load` with every failure turned into a refusal (logged and counted)."""
        started = time.perf_counter()
        try:
            scorer = self.load(version)
        except IncompatibleModelError as exc:
            self._refuse(version, "refused_incompatible", str(exc))
            return None
        except Exception as exc:  # corrupt, truncated, unreadable, unloadable, non-finite
            self._refuse(version, "refused_invalid", str(exc))
            return None
        log.info(
            "model loaded and warm, swapping at the next batch boundary",
            extra=fields(version=version, load_s=round(time.perf_counter() - started, 3)),
        )
        return scorer

    def load(self, version: str) -> Scorer:
        """Load, validate and warm up ``version`` of the registry; raises
        :class:`IncompatibleModelError` or :class:`ArtifactError` naming the problem."""
        assert self.registry_root is not None
        directory = self.registry_root / self.model_name / version
        running = self._current.artifact
        # 1. Every file against the manifest's sha256: corrupt, truncated or missing files.
        manifest = read_manifest(directory, verify=True)
        if str(manifest.get("version")) != version or manifest.get("name") != running.name:
            raise ArtifactError(
                f"{directory}: the artifact says {manifest.get('name')}/"
                f"{manifest.get('version')}, the registry path {running.name}/{version}"
            )
        # 2. Window and features from the manifest, before paying for a Keras load.
        features = tuple(manifest.get("features") or ())
        if manifest.get("window") != running.spec.window or features != running.spec.feature_names:
            raise IncompatibleModelError(
                f"{directory}: window {manifest.get('window')} x {list(features)} differs from "
                f"the running model's {running.spec.window} x {list(running.spec.feature_names)}"
                " (roll out as a new worker group, see stream_ae.worker.swap)"
            )
        # 3. The model itself, with safe_mode (no arbitrary code); spec checked against ours.
        artifact = load_artifact(directory, expect=running.spec)
        for what, new, old in (
            ("input", artifact.model.input_shape, running.model.input_shape),
            ("output", artifact.model.output_shape, running.model.output_shape),
        ):
            if _shape(new) != _shape(old):
                raise IncompatibleModelError(
                    f"{directory}: model {what} shape {_shape(new)} differs from the running "
                    f"model's {_shape(old)}"
                )
        # Checked before any copy: NaN weights must never reach a model kept for recycling.
        weights = artifact.model.get_weights()
        if not all(np.isfinite(w).all() for w in weights):
            raise ArtifactError(f"{directory}: the model has non-finite weights")
        # 4. Onto a traced model of the same architecture if there is one (then nothing needs
        # a warm-up: its graphs are traced at every bucket size already), else a warm-up call
        # at every bucket size, so that the first real batch does not trace them.
        artifact, recycled = self._recycle(artifact, weights)
        scorer = Scorer(artifact, self._current.buckets)
        if not recycled:
            scorer.warm_up()
        # 5. A probe: a model that outputs NaN would turn every score into garbage.
        spec = artifact.spec
        probe = np.zeros((scorer.buckets[0], spec.input_steps, spec.features), dtype=np.float32)
        if not all(np.isfinite(out).all() for out in scorer.predict(probe)):
            raise ArtifactError(f"{directory}: the model outputs non-finite values")
        return scorer

    def _recycle(self, artifact: Artifact, weights: list[Any]) -> tuple[Artifact, bool]:
        """``artifact`` on a traced model of the same architecture, and whether it is: the
        spare, else the previous model (a rollback to it then reloads from disk; a rollback
        to the model running now, the likely one, stays instant). The loaded model's weights
        (``weights``) are copied into it and the loaded model becomes garbage."""
        if not self.recycle_models:
            return artifact, False
        with self._swap_lock:
            slots = {"spare": self._spare, "previous": self._previous}
        # Compared outside the lock: the worker thread takes it at every batch boundary.
        matching = {
            slot: scorer
            for slot, scorer in slots.items()
            if scorer is not None and same_architecture(scorer.artifact, artifact)
        }
        target: Scorer | None = None
        with self._swap_lock:
            stale = slots["spare"] is not None and "spare" not in matching
            if stale and self._spare is slots["spare"]:
                self._garbage.append(self._spare)  # an older architecture: of no use now
                self._spare = None
            for slot, scorer in matching.items():
                if scorer is self._staged:  # may go live at any moment: never overwrite it
                    continue
                if slot == "spare" and self._spare is scorer:
                    self._spare, target = None, scorer
                    break
                if slot == "previous" and self._previous is scorer:
                    self._previous, target = None, scorer
                    break
            if target is None:
                return artifact, False
            self._garbage.append(artifact.model)
        model = target.artifact.model
        model.set_weights(weights)
        return replace(artifact, model=model), True

    def _refuse(self, version: str, result: str, reason: str) -> None:
        self.failures += 1
        self.last_refusal = Refusal(version, result, reason)
        self.metrics.model_swaps.labels(result=result).inc()
        log.error(
            "model refused, still scoring with the running one",
            extra=fields(
                version=version, result=result, reason=reason, running=self._current.version
            ),
        )
        self._beat_requested.set()
        self._wakeup.set()

    def _retire(self, scorer: Scorer) -> None:
        with self._swap_lock:
            self._retire_locked(scorer)

    def _retire_locked(self, scorer: Scorer) -> None:
        if scorer is not self._current and scorer is not self._previous:
            self._retired.append(scorer)

    def release_retired(self) -> int:
        """Keep one retired model as the spare, drop the others (and models loaded only for
        their weights) and collect their cycles; returns how many objects were dropped."""
        with self._swap_lock:
            retired, self._retired = self._retired, []
            garbage, self._garbage = self._garbage, []
            for scorer in retired:
                if self.recycle_models and self._spare is None:
                    self._spare = scorer
                else:
                    garbage.append(scorer)
        if not garbage:
            return 0
        count = len(garbage)
        del retired, garbage
        gc.collect()
        return count

    # --- heartbeat -----------------------------------------------------------------------

    def heartbeat(self) -> dict[str, Any]:
        """What this worker reports about its model (the heartbeat key's JSON)."""
        refusal = self.last_refusal
        return {
            "worker_id": self.worker_id,
            "group": self.settings.group_id,
            "model": self._current.artifact.name,
            "version": self._current.version,
            "previous_version": self.previous_version,
            "champion": self.champion,
            "swaps": self.swaps,
            "failures": self.failures,
            "refused": None
            if refusal is None
            else {"version": refusal.version, "result": refusal.result, "reason": refusal.reason},
            "updated_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "ttl_s": self.heartbeat_ttl_s,
        }

    def write_heartbeat(self) -> bool:
        """Write the heartbeat key with its TTL; False (logged once) when Redis is away."""
        key = heartbeat_key(self.settings.redis_key_prefix, self.worker_id)
        try:
            self._redis().set(key, orjson.dumps(self.heartbeat()), ex=self.heartbeat_ttl_s)
        except Exception as exc:
            if self._redis_ok:
                log.warning("heartbeat not written", extra=fields(key=key, error=str(exc)))
            self._redis_ok = False
            return False
        self._redis_ok = True
        return True


def same_architecture(a: Artifact, b: Artifact) -> bool:
    """True when ``b``'s weights can be loaded into ``a``'s model and compute ``b``'s function:
    the same spec (up to what only changes the targets) and, layer by layer, the same class,
    configuration (names aside) and weight shapes."""
    if replace(a.spec, reverse=False, feature_names=b.spec.feature_names) != replace(
        b.spec, reverse=False
    ):
        return False
    layers_a, layers_b = a.model.layers, b.model.layers
    if len(layers_a) != len(layers_b):
        return False
    for la, lb in zip(layers_a, layers_b, strict=True):
        if type(la) is not type(lb) or _unnamed(la.get_config()) != _unnamed(lb.get_config()):
            return False
        if [tuple(w.shape) for w in la.weights] != [tuple(w.shape) for w in lb.weights]:
            return False
    return True


def _unnamed(config: Any) -> Any:
    """A layer config without its (auto-generated) names, at any depth."""
    if isinstance(config, dict):
        return {k: _unnamed(v) for k, v in config.items() if k != "name"}
    if isinstance(config, list | tuple):
        return [_unnamed(v) for v in config]
    return config


def _shape(shape: Any) -> Any:
    """A Keras input/output shape as nested tuples (lists for multi-output models)."""
    if isinstance(shape, list):
        return [_shape(s) for s in shape]
    if isinstance(shape, tuple) and shape and isinstance(shape[0], tuple | list):
        return tuple(_shape(s) for s in shape)
    return tuple(shape)
