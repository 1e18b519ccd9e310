"""Hot-swap of the model in a running worker: follow the registry's champion, load off the hot
path, swap between two poll batches.

The pieces, one concept a file:

- :class:`ModelManager` (here): the policy. It reads the champion pointer, decides whether a
  version is new, refused before, a rollback to the kept previous model or a load, stages what
  passes, refuses (logs and counts) what does not, and reports it in metrics and the heartbeat;
- :mod:`stream_ae.worker.model_slots`: the loaded models (current, previous, staged, spare),
  the swap itself and the reuse of traced models (why: no tracing, no full collections on the
  hot path, bounded memory);
- :mod:`stream_ae.worker.candidate`: the checks a new version passes before it is staged;
- :mod:`stream_ae.worker.registry_watch`: the watch and notify threads;
- :mod:`stream_ae.worker.heartbeat`: the heartbeat key ``stream-ae model status`` reads.

The worker thread reads :meth:`ModelManager.current` (once per batch, through the processor)
and calls :meth:`ModelManager.between_batches`, the only place a swap takes effect: two
reference assignments under a lock, so every batch is scored by exactly one model and a swap
costs the hot path nothing more.

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
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stream_ae.errors import ArtifactError, IncompatibleModelError
from stream_ae.logs import fields
from stream_ae.model.artifacts import load_artifact
from stream_ae.model.inference import Scorer
from stream_ae.model.registry import (
    Heartbeat,
    Refusal,
    is_artifact,
    local_version_dir,
    read_champion,
)
from stream_ae.settings import Settings
from stream_ae.worker.candidate import load_candidate, probe
from stream_ae.worker.heartbeat import HeartbeatWriter
from stream_ae.worker.metrics import WorkerMetrics
from stream_ae.worker.model_slots import ModelSlots
from stream_ae.worker.registry_watch import RegistryWatcher

log = logging.getLogger(__name__)


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
        freeze_gc: collect and :func:`gc.freeze` at start-up (see
            :mod:`stream_ae.worker.model_slots`).
        recycle_models: copy a new version's weights into a traced model of the same
            architecture instead of tracing a new one.
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
        model_path = settings.model_path  # a folder, or a URL of object storage
        # A single artifact directory has nothing to follow; a registry root has a pointer.
        self.registry_root: Path | str | None = None if is_artifact(model_path) else model_path
        self.worker_id = settings.resolved_worker_id
        poll_interval_s = settings.model_poll_interval_s
        self._redis_client = redis_client
        self.slots = ModelSlots(scorer, recycle=recycle_models)
        self.prepare_spare = prepare_spare and recycle_models
        self._refresh_lock = threading.Lock()  # one load at a time
        self.swaps = 0
        self.failures = 0
        self.last_refusal: Refusal | None = None
        self.champion: str | None = scorer.version  # what the pointer named when last read
        self._pointer_error: str | None = None
        self._stop = threading.Event()
        self.beats = HeartbeatWriter(
            self._redis,
            settings.redis_key_prefix,
            self.worker_id,
            heartbeat_interval_s or min(10.0, poll_interval_s),
        )
        self.watcher = RegistryWatcher(
            self,
            model_name=self.model_name,
            redis=self._redis,
            stop=self._stop,
            follow_registry=self.registry_root is not None,
            poll_interval_s=poll_interval_s,
            heartbeat_interval_s=self.beats.interval_s,
            reload_jitter_s=(
                min(2.0, poll_interval_s / 4) if reload_jitter_s is None else reload_jitter_s
            ),
            retry_backoff_max_s=settings.retry_backoff_max_s,
            prepare_spare=self.prepare_spare,
            seed=seed,
        )

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
        return self.slots.current

    def between_batches(self) -> None:
        """Swap in the staged model, if any: the only point where the model changes."""
        swapped = self.slots.swap_in_staged()
        if swapped is None:
            return
        old, new = swapped
        self.swaps += 1
        self.metrics.set_model(new.artifact.name, new.version)
        self.metrics.model_swaps.labels(result="swapped").inc()
        log.info(
            "model swapped",
            extra=fields(
                model=new.artifact.name,
                version=new.version,
                was=old.version,
                detector_policy=new.artifact.policy.as_dict(),  # settings still win over it
            ),
        )
        self.watcher.request_beat()

    def close(self) -> None:
        """Stop the threads and remove this worker's heartbeat."""
        self.watcher.stop()
        self.beats.remove()
        self.release_retired()

    # --- state for tests, the heartbeat and status ---------------------------------------

    @property
    def version(self) -> str:
        return self.slots.current.version

    @property
    def previous_version(self) -> str | None:
        previous = self.slots.previous
        return previous.version if previous is not None else None

    @property
    def spare_ready(self) -> bool:
        """Whether a traced spare model waits to be recycled."""
        return self.slots.spare is not None

    @property
    def staged_version(self) -> str | None:
        staged = self.slots.staged
        return staged.version if staged is not None else None

    # --- threads -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the watch thread and, with a registry to follow, the notify thread."""
        self.watcher.start()

    def request_check(self) -> None:
        """Re-read the champion pointer now (what a notification does)."""
        self.watcher.request_check()

    def make_spare(self) -> None:
        """A second, warm copy of the running model, for the first swap to recycle."""
        started = time.perf_counter()
        try:
            running = self.slots.current
            scorer = Scorer(load_artifact(running.artifact.path), running.buckets, jit=running.jit)
            scorer.warm_up()
        except Exception as exc:  # only an optimisation: the first swap will trace instead
            log.warning("no spare model prepared", extra=fields(error=str(exc)))
            return
        self.slots.offer_spare(scorer)
        log.info("spare model ready", extra=fields(seconds=round(time.perf_counter() - started, 3)))

    def release_retired(self) -> int:
        """Free retired models (in the watch thread); see :class:`ModelSlots`."""
        return self.slots.release_retired()

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
                return "current" if self.slots.staged is None else "staged"
            if self.last_refusal is not None and self.last_refusal.version == target:
                return "refused"  # already said why; a fix is a new version
            if jitter_s > 0:
                if self._stop.wait(jitter_s):
                    return "current"  # stopping: the worker is going away anyway
                target = self._read_pointer()
                if target is None:
                    return "no_pointer"
                if self._settled(target):
                    return "current" if self.slots.staged is None else "staged"
            previous = self.slots.previous
            if previous is not None and previous.version == target:
                scorer = previous  # back to the previous model: kept loaded and warm
                log.info("previous model staged again, no reload", extra=fields(version=target))
            else:
                loaded = self._load_checked(target)
                if loaded is None:
                    return "refused"
                scorer = loaded
            if self._read_pointer() != target:
                self.slots.retire(scorer)
                self.request_check()
                return "superseded"
            self.slots.stage(scorer)
            self.last_refusal = None
            return "staged"

    def _settled(self, target: str) -> bool:
        """True when ``target`` runs or is staged; drops a staged model the pointer left."""
        if self.slots.current.version == target:
            self.slots.unstage()  # the pointer moved back before the swap
            self.last_refusal = None
            return True
        staged = self.slots.staged
        return staged is not None and staged.version == target

    def _read_pointer(self) -> str | None:
        assert self.registry_root is not None
        version: str | None = None
        error: str | None = None
        try:
            version = read_champion(self.registry_root, self.model_name)
        except ArtifactError as exc:
            error = f"cannot follow the champion pointer: {exc}"
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
        """Load, check (:func:`~stream_ae.worker.candidate.load_candidate`) and warm up
        ``version`` of the registry; raises :class:`IncompatibleModelError` or
        :class:`ArtifactError` naming the problem."""
        assert self.registry_root is not None
        # A local folder: the version's own, or its verified copy from object storage.
        directory = local_version_dir(self.registry_root, self.model_name, version)
        artifact, weights = load_candidate(directory, version, self.slots.current.artifact)
        # Onto a traced model of the same architecture if there is one (then nothing needs a
        # warm-up: its graphs are traced at every bucket size already), else a warm-up call at
        # every bucket size, so that the first real batch does not trace them.
        artifact, recycled = self.slots.recycle_into(artifact, weights)
        current = self.slots.current
        scorer = Scorer(artifact, current.buckets, jit=current.jit)
        if not recycled:
            scorer.warm_up()
        probe(scorer)
        return scorer

    def _refuse(self, version: str, result: str, reason: str) -> None:
        self.failures += 1
        self.last_refusal = Refusal(version, result, reason)
        self.metrics.model_swaps.labels(result=result).inc()
        log.error(
            "model refused, still scoring with the running one",
            extra=fields(
                version=version, result=result, reason=reason, running=self.slots.current.version
            ),
        )
        self.watcher.request_beat()

    # --- heartbeat -----------------------------------------------------------------------

    def heartbeat(self) -> Heartbeat:
        """What this worker reports about its model (the heartbeat key's value)."""
        return Heartbeat(
            worker_id=self.worker_id,
            group=self.settings.group_id,
            model=self.slots.current.artifact.name,
            version=self.slots.current.version,
            previous_version=self.previous_version,
            champion=self.champion,
            swaps=self.swaps,
            failures=self.failures,
            refused=self.last_refusal,
            updated_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            ttl_s=self.beats.ttl_s,
        )

    def write_heartbeat(self) -> bool:
        """Write the heartbeat key with its TTL; False (logged once) when Redis is away."""
        return self.beats.write(self.heartbeat())
