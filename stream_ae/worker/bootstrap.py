"""Assembling a worker from settings: the only place that wires Kafka, Redis and the model.

Start-up waits (with backoff and a clear log line) for Redis and the broker instead of
crashing, so a worker started alongside its dependencies simply comes up when they do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from stream_ae.errors import ArtifactError, ConfigError, StreamAEError
from stream_ae.io.kafka import KafkaConnection, worker_consumer, worker_producer
from stream_ae.io.redis import connect_redis
from stream_ae.io.state_guard import StateGuard, check_server
from stream_ae.io.window_store import RedisWindowStore
from stream_ae.logs import fields
from stream_ae.model.artifacts import StateShape, load_artifact, read_manifest
from stream_ae.model.inference import Scorer
from stream_ae.model.registry import resolve_artifact_dir
from stream_ae.model.registry_store import is_url
from stream_ae.settings import Settings
from stream_ae.worker.loop import ModelSource, Worker
from stream_ae.worker.metrics import WorkerMetrics
from stream_ae.worker.state_shape import check_stored_states

log = logging.getLogger(__name__)
T = TypeVar("T")


def retry_until_up(
    what: str, connect: Callable[[], T], settings: Settings, stop: threading.Event | None = None
) -> T:
    """Call ``connect`` until it succeeds, backing off up to ``retry_backoff_max_s``, while its
    errors are retriable; a non-retriable one (a bad option, a refused login) is raised."""
    backoff = 0.5
    while True:
        try:
            return connect()
        except StreamAEError as exc:
            if not exc.retriable:
                raise
            log.error(
                f"{what} unavailable, retrying", extra=fields(error=str(exc), backoff_s=backoff)
            )
        if stop is not None and stop.wait(backoff):
            raise KeyboardInterrupt
        if stop is None:
            time.sleep(backoff)
        backoff = min(backoff * 2, settings.retry_backoff_max_s)


def load_scorer(settings: Settings, directory: Path | None = None) -> Scorer:
    """The artifact in ``directory``, by default the one the settings name (an artifact dir,
    or a registry's champion), loaded and warm."""
    directory = directory or resolve_artifact_dir(settings.model_path, settings.model_name)
    artifact = load_artifact(directory)
    if settings.window_size is not None and settings.window_size != artifact.spec.window:
        from stream_ae.errors import ConfigError

        raise ConfigError(
            f"window_size {settings.window_size} differs from the model's window "
            f"{artifact.spec.window} ({directory})"
        )
    scorer = Scorer(artifact, settings.batch_buckets, jit=settings.model_jit)
    scorer.warm_up()
    return scorer


def build_model_source(settings: Settings, scorer: Scorer, metrics: WorkerMetrics) -> ModelSource:
    """The hot-swapping model source: it follows the registry's champion between batches."""
    from stream_ae.worker.swap import ModelManager

    return ModelManager(settings, scorer, metrics)


def check_model_fits_states(settings: Settings, directory: Path) -> None:
    """The model in ``directory`` must fit the window states stored under the key prefix, as
    a hot-swapped one must (:func:`~stream_ae.worker.state_shape.check_stored_states`): else
    :class:`~stream_ae.errors.IncompatibleModelError`. Reads the manifest and checks the
    files' sha256 only: the first start records the shape, so it must not come from a
    corrupt artifact."""
    manifest = read_manifest(directory, verify=True)
    shape = StateShape.of_manifest(manifest)
    model = f"model {manifest.get('name')}/{manifest.get('version')}"
    client = retry_until_up("Redis", lambda: connect_redis(settings), settings)
    try:
        retry_until_up(
            "Redis",
            lambda: check_stored_states(client, settings.redis_key_prefix, shape, model),
            settings,
        )
    finally:
        client.close()


def check_model_location(settings: Settings) -> None:
    """Refuse, with :class:`ConfigError`, a ``model_path`` that is a local path with nothing
    there: no retry can make it appear, and waiting on it would look like a registry with no
    champion yet. (Object storage is not checked here: a bucket that cannot be reached now may
    be later, so it is waited for, with the reason in ``/readyz``.)"""
    if is_url(settings.model_path):
        return
    path = Path(settings.model_path)
    if path.is_dir():
        return
    what = "is not a folder" if path.exists() else "does not exist"
    raise ConfigError(
        f"STREAM_AE_MODEL_PATH {str(path)!r} {what} (no model registry or artifact there)",
        fix=f"create the registry with a first model: stream-ae-train train --csv FILE "
        f"--registry {path} (or stream-ae-train publish ARTIFACT_DIR --registry {path}); or "
        "point STREAM_AE_MODEL_PATH (--model-path) at an existing registry or artifact",
    )


def wait_for_model(settings: Settings, metrics: WorkerMetrics) -> Scorer:
    """Load the model, waiting (alive, not ready) while the registry has none yet or the
    artifact is unreadable: a worker deployed before the first training run comes up when it
    is published instead of crash-looping. After ``model_wait_s`` (0: never) the last reason
    is raised as an :class:`ArtifactError`; a local registry folder that does not exist is a
    :class:`ConfigError` at once (:func:`check_model_location`)."""
    check_model_location(settings)
    started = time.monotonic()
    backoff = 1.0
    while True:
        metrics.heartbeat()
        try:
            directory = resolve_artifact_dir(settings.model_path, settings.model_name)
            check_model_fits_states(settings, directory)  # before paying for the Keras load
            scorer = load_scorer(settings, directory)
        except ArtifactError as exc:  # IncompatibleModelError included: /readyz says why
            reason = str(exc)
        else:
            metrics.not_ready_reason = ""
            return scorer
        waited_s = time.monotonic() - started
        if settings.model_wait_s and waited_s >= settings.model_wait_s:
            raise ArtifactError(
                f"no usable model after {settings.model_wait_s:g} s (STREAM_AE_MODEL_WAIT_S; "
                f"0 waits forever): {reason}"
            )
        metrics.not_ready_reason = f"waiting for a usable model ({waited_s:.0f} s): {reason}"
        log.error("no usable model yet, waiting", extra=fields(error=reason, retry_s=backoff))
        pause = backoff
        if settings.model_wait_s:
            pause = max(0.0, min(pause, settings.model_wait_s - waited_s))
        time.sleep(pause)
        backoff = min(backoff * 2, settings.model_poll_interval_s)


def build_worker(settings: Settings, metrics: WorkerMetrics | None = None) -> Worker:
    metrics = metrics or WorkerMetrics()
    scorer = wait_for_model(settings, metrics)
    metrics.set_model(scorer.artifact.name, scorer.version)
    spec = scorer.artifact.spec
    store = retry_until_up(
        "Redis",
        lambda: RedisWindowStore.from_settings(settings, spec.window, spec.features),
        settings,
    )
    state_guard = guard_store(store, settings)
    kafka = KafkaConnection.from_settings(settings)
    producer = retry_until_up("Kafka producer", lambda: worker_producer(settings, kafka), settings)
    consumer = retry_until_up("Kafka consumer", lambda: worker_consumer(settings, kafka), settings)
    worker = Worker(
        settings,
        consumer=consumer,
        producer=producer,
        store=store,
        model=build_model_source(settings, scorer, metrics),
        metrics=metrics,
        state_guard=state_guard,
    )
    worker.subscribe()
    return worker


def guard_store(store: RedisWindowStore, settings: Settings) -> StateGuard:
    """The store's loss guard (:mod:`stream_ae.io.state_guard`), after checking that the Redis
    server neither evicts our keys nor runs without persistence: each problem is logged, and
    with ``redis_config_check=refuse`` the worker does not start."""
    if settings.redis_config_check != "off":
        problems = retry_until_up("Redis", lambda: check_server(store.client), settings)
        for problem in problems:
            log.warning(f"Redis can lose window states: {problem}")
        if problems and settings.redis_config_check == "refuse":
            raise ConfigError(
                f"Redis can lose window states: {'; '.join(problems)} (redis_config_check=refuse)"
            )
    return StateGuard.of_store(store, settings.resolved_worker_id)
