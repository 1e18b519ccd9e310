"""Hot-swap of the model (stream_ae.worker.swap and its parts, ``stream-ae model``), driven by
hand: a :class:`ModelManager` with ``start=False`` (:meth:`refresh` is what the watch thread
calls), on a real registry and the test Redis. The shipped worker swapping under load is in
``test_hotswap_worker.py``. Models: :mod:`tests.support.hotswap_models`.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from stream_ae.cli import model as model_cmd
from stream_ae.model.artifacts import (
    MODEL_FILE,
    load_artifact,
    save_artifact,
)
from stream_ae.model.inference import Scorer
from stream_ae.model.network import ModelSpec
from stream_ae.model.registry import CHAMPION_POINTER, MODELS_CHANNEL, Heartbeat, heartbeat_key
from stream_ae.settings import Settings
from stream_ae.worker.metrics import WorkerMetrics
from stream_ae.worker.swap import ModelManager
from tests.support.hotswap_models import (
    NAME,
    SPEC,
    corrupt_version,
    flip,
    model_parts,
    new_version,
    publish,
    write_artifact,
)
from training.registry import Registry, redis_notifier

# One bucket: every freshly loaded model traces its graph once per bucket size (seconds on
# this machine); test_hotswap_worker.py runs the worker's real multi-bucket setup.
BUCKETS = [16]


def make_settings(root: Path, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_path": root,
        "model_name": NAME,
        "redis_url": redis_url,
        "redis_key_prefix": f"t{uuid.uuid4().hex[:8]}",
        "group_id": f"g-{uuid.uuid4().hex[:8]}",
        "worker_id": f"w-{uuid.uuid4().hex[:6]}",
        "batch_buckets": BUCKETS,
        "model_poll_interval_s": 3600.0,
    }
    values.update(overrides)
    return Settings(**values)


def champion_scorer(root: Path, buckets: list[int] = BUCKETS, warm: bool = False) -> Scorer:
    """The champion's scorer, as the worker starts with it (warm-up only where latency
    matters: the first predict traces the graph anyway)."""
    version = (root / NAME / CHAMPION_POINTER).read_text().strip()
    scorer = Scorer(load_artifact(root / NAME / version), buckets)
    if warm:
        scorer.warm_up()
    return scorer


def wait_until(predicate: Callable[[], bool], timeout_s: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def swap_count(metrics: WorkerMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value("stream_ae_model_swaps_total", {"result": result})
    return value or 0.0


def live_version(metrics: WorkerMetrics) -> list[str]:
    return [
        s.labels["version"]
        for family in metrics.registry.collect()
        if family.name == "stream_ae_model_info"
        for s in family.samples
        if s.value == 1
    ]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "registry")
    publish(reg)
    return reg


@pytest.fixture
def manager_factory(
    registry: Registry, redis_server: Any, redis_client: redis.Redis
) -> Iterator[Callable[..., ModelManager]]:
    """``make(**settings_overrides, start=False, manager_kw=...)``: a manager on the registry's
    champion (no spare prepared unless asked: it costs a trace); closed after the test."""
    made: list[ModelManager] = []

    def make(start: bool = False, manager_kw: dict[str, Any] | None = None, **kw: Any) -> Any:
        settings = make_settings(registry.root, redis_server.url, **kw)
        manager = ModelManager(
            settings,
            champion_scorer(registry.root),
            WorkerMetrics(),
            redis_client=redis.Redis.from_url(redis_server.url),
            start=start,
            **{"freeze_gc": False, "seed": 0, "prepare_spare": False, **(manager_kw or {})},
        )
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()


# --- unit: swapping, refusing, rolling back ---------------------------------------------


def test_a_new_version_takes_effect_only_between_batches(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory()
    v1 = manager.version
    v2 = publish(registry)
    assert manager.refresh() == "staged"
    assert manager.staged_version == v2
    # Staged, not live: the batch in progress (and any other) still gets v1.
    assert manager.current().version == v1
    assert live_version(manager.metrics) == [v1]
    manager.between_batches()
    assert manager.current().version == v2
    assert manager.previous_version == v1
    assert manager.staged_version is None
    assert live_version(manager.metrics) == [v2]
    assert swap_count(manager.metrics, "swapped") == 1
    # Nothing new: a second refresh and boundary change nothing.
    assert manager.refresh() == "current"
    manager.between_batches()
    assert manager.current().version == v2 and manager.swaps == 1


def test_the_swapped_in_model_scores(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory()
    v2 = publish(registry)
    manager.refresh()
    manager.between_batches()
    windows = np.sin(np.arange(3 * 16, dtype=np.float32) / 5.0).reshape(3, 16, 1)
    batch = manager.current().score(windows, ["a", "b", "c"])
    assert batch.model_version == v2
    assert np.isfinite(batch.scores.scores).all()


@pytest.mark.parametrize(
    "how", ["truncated", "bit_flip", "no_manifest", "unloadable", "unreadable"]
)
def test_a_broken_artifact_is_refused_and_the_old_model_kept(
    how: str,
    registry: Registry,
    manager_factory: Callable[..., ModelManager],
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = manager_factory()
    v1 = manager.version
    bad = corrupt_version(registry, how)
    with caplog.at_level(logging.ERROR, logger="stream_ae.worker.swap"):
        assert manager.refresh() == "refused"
    manager.between_batches()
    assert manager.current().version == v1 and manager.staged_version is None
    assert manager.failures == 1
    assert swap_count(manager.metrics, "refused_invalid") == 1
    assert manager.last_refusal is not None and manager.last_refusal.version == bad
    refusals = [r for r in caplog.records if r.getMessage().startswith("model refused")]
    assert len(refusals) == 1
    logged = refusals[0].fields  # type: ignore[attr-defined]
    assert logged["version"] == bad and logged["running"] == v1 and logged["reason"]
    # Not retried while the pointer stays there: one log line, one count.
    assert manager.refresh() == "refused"
    assert manager.failures == 1
    # Still scoring with the old model.
    windows = np.zeros((2, 16, 1), dtype=np.float32)
    assert manager.current().score(windows, ["a", "b"]).model_version == v1


def test_non_finite_weights_are_refused_before_touching_a_kept_model(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory()
    v0, first = manager.version, manager.current()
    v1 = publish(registry, seed=1)
    manager.refresh()
    manager.between_batches()  # the first model is now the previous one, to be recycled
    model, scaling, calibration = model_parts(SPEC, 2)
    weights = model.get_weights()
    poisoned = [w.copy() for w in weights]
    poisoned[0].flat[0] = np.nan

    def write(directory: Path, version: str) -> None:
        model.set_weights(poisoned)
        try:
            save_artifact(
                directory,
                model=model,
                spec=SPEC,
                scaling=scaling,
                calibration=calibration,
                name=NAME,
                version=version,
            )
        finally:
            model.set_weights(weights)

    bad = registry.publish(NAME, write, new_version())
    registry.promote(NAME, bad)
    assert manager.refresh() == "refused"
    assert manager.last_refusal is not None and "non-finite" in manager.last_refusal.reason
    assert manager.version == v1 and manager.previous_version == v0
    windows = np.sin(np.arange(2 * 16, dtype=np.float32) / 3.0).reshape(2, 16, 1)
    assert np.isfinite(first.predict(windows)[0]).all()


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(window=24, hidden=8),
        ModelSpec(window=16, features=2, feature_names=("cpu", "mem"), hidden=8),
        ModelSpec(window=16, feature_names=("latency",), hidden=8),
        ModelSpec(kind="predict", window=16, horizon=4, hidden=8),
    ],
    ids=["window", "features", "feature_names", "shapes"],
)
def test_an_incompatible_model_is_refused(
    spec: ModelSpec, registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory()
    v1 = manager.version
    bad = publish(registry, spec, force=True)
    assert manager.refresh() == "refused"
    manager.between_batches()
    assert manager.current().version == v1
    assert swap_count(manager.metrics, "refused_incompatible") == 1
    assert manager.last_refusal is not None
    assert manager.last_refusal.version == bad
    assert manager.last_refusal.result == "refused_incompatible"


def test_a_compatible_architecture_change_is_accepted(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    # Same window, features and shapes, other internals: a normal retrain.
    manager = manager_factory()
    v2 = publish(registry, ModelSpec(window=16, hidden=4, reverse=True))
    assert manager.refresh() == "staged"
    manager.between_batches()
    assert manager.version == v2


def test_a_refused_version_is_retried_only_when_the_pointer_comes_back(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory()
    v1 = manager.version
    bad = corrupt_version(registry, "truncated")
    assert manager.refresh() == "refused"
    flip(registry.root, v1)
    assert manager.refresh() == "current"
    flip(registry.root, bad)
    assert manager.refresh() == "refused"
    assert manager.failures == 2
    # After a refusal a good version goes through.
    v3 = publish(registry)
    assert manager.refresh() == "staged"
    manager.between_batches()
    assert manager.version == v3 and manager.last_refusal is None


def test_a_pointer_leaving_the_registry_is_not_followed(
    tmp_path: Path,
    registry: Registry,
    manager_factory: Callable[..., ModelManager],
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = manager_factory()
    v1 = manager.version
    # A valid, newer artifact outside the registry, where ../../ would lead.
    write_artifact(tmp_path / "elsewhere", "evil", seed=1)
    flip(registry.root, "../../elsewhere")
    with caplog.at_level(logging.ERROR, logger="stream_ae.worker.swap"):
        assert manager.refresh() == "no_pointer"
    assert any("plain name" in r.getMessage() for r in caplog.records)
    manager.between_batches()
    assert manager.version == v1 and manager.staged_version is None
    # Once the pointer is put right, the worker follows it again.
    v2 = publish(registry)
    assert manager.refresh() == "staged" and manager.staged_version == v2


def test_rollback_swaps_back_to_the_kept_previous_model(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory()
    v1, first = manager.version, manager.current()
    v2 = publish(registry)
    manager.refresh()
    manager.between_batches()
    assert registry.rollback(NAME) == v1
    assert manager.refresh() == "staged"
    assert manager.current().version == v2  # until the boundary
    manager.between_batches()
    # The very same (warm) scorer, not a reload.
    assert manager.current() is first
    assert manager.previous_version == v2
    assert swap_count(manager.metrics, "swapped") == 2
    assert live_version(manager.metrics) == [v1]


def test_a_staged_model_is_dropped_when_the_pointer_moves_back(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory()
    v1 = manager.version
    publish(registry)
    assert manager.refresh() == "staged"
    flip(registry.root, v1)
    assert manager.refresh() == "current"
    assert manager.staged_version is None
    manager.between_batches()
    assert manager.version == v1 and manager.swaps == 0


def _live_keras_models() -> int:
    import keras

    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, keras.Model))


def test_memory_stays_bounded_over_many_swaps(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory()
    model_parts(SPEC, 1)  # the publishers' own (cached) models, built before counting
    counts = []
    for i in range(4):
        publish(registry, seed=i % 2)
        assert manager.refresh() == "staged"
        manager.between_batches()
        manager.release_retired()
        counts.append(_live_keras_models())
    # Current and previous from the first swap on; nothing accumulates (a leak of one model
    # per swap would add one each time).
    assert counts == [counts[0]] * 4, counts
    assert manager.swaps == 4


def test_without_recycling_retired_models_are_freed(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory(manager_kw={"recycle_models": False})
    models = [weakref.ref(manager.current().artifact.model)]
    for _ in range(3):
        publish(registry)
        manager.refresh()
        models.append(weakref.ref(manager.slots.staged.artifact.model))  # type: ignore[union-attr]
        manager.between_batches()
    manager.release_retired()
    gc.collect()
    # current and previous stay loaded (rollback); the two before them are gone.
    alive = [ref() is not None for ref in models]
    assert alive == [False, False, True, True]


def _tracing_count(scorer: Scorer) -> int | None:
    """How many graphs the model's predict function traced (TensorFlow backend only)."""
    function = getattr(scorer.artifact.model, "predict_function", None)
    count = getattr(function, "experimental_get_tracing_count", None)
    return int(count()) if count is not None else None


def test_a_recycled_model_computes_the_new_versions_function_without_tracing(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory()
    first = manager.current()
    first.warm_up()
    traced = _tracing_count(first)
    v1 = publish(registry, seed=1)
    manager.refresh()  # nothing to recycle yet: a fresh load
    manager.between_batches()
    v2 = publish(registry, seed=2)
    assert manager.refresh() == "staged"
    manager.between_batches()
    # v2 runs on the first model's graphs (the previous one, v0), with v2's weights; v1 is
    # the previous one now, so a rollback stays instant.
    recycled = manager.current()
    assert recycled.version == v2 and manager.previous_version == v1
    assert recycled.artifact.model is first.artifact.model
    windows = np.sin(np.arange(5 * 16, dtype=np.float32) / 3.0).reshape(5, 16, 1)
    expected = Scorer(load_artifact(registry.path(NAME, v2)), BUCKETS).predict(windows)[0]
    np.testing.assert_allclose(recycled.predict(windows)[0], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(first_version_output(registry, windows), expected)
    assert _tracing_count(recycled) == traced  # the graphs were reused, not traced again


def first_version_output(registry: Registry, windows: np.ndarray) -> np.ndarray:
    first = registry.versions(NAME)[0]
    return Scorer(load_artifact(registry.path(NAME, first)), BUCKETS).predict(windows)[0]


def test_a_prepared_spare_serves_the_first_swap(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory(start=True, manager_kw={"prepare_spare": True})
    wait_until(lambda: manager.slots.spare is not None, what="the spare")
    spare = manager.slots.spare.artifact.model  # type: ignore[union-attr]
    v1 = publish(registry, seed=1)
    manager.request_check()
    wait_until(lambda: manager.staged_version == v1, what="the staged model")
    manager.between_batches()
    assert manager.current().artifact.model is spare and manager.slots.spare is None


def test_a_staged_model_is_never_overwritten(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory()
    v0, first = manager.version, manager.current()
    publish(registry, seed=1)
    manager.refresh()
    manager.between_batches()
    registry.rollback(NAME)  # stages the previous model (v0) ...
    assert manager.refresh() == "staged" and manager.slots.staged is first
    # Not zeros: an untrained LSTM's output for a zero input does not depend on its weights.
    windows = np.sin(np.arange(2 * 16, dtype=np.float32) / 3.0).reshape(2, 16, 1)
    before = first.predict(windows)[0]
    v2 = publish(registry, seed=2)  # ... which must not be recycled for v2 before its swap
    assert manager.refresh() == "staged"
    assert manager.slots.staged is not first
    assert manager.slots.staged.artifact.model is not first.artifact.model
    np.testing.assert_array_equal(first.predict(windows)[0], before)
    manager.between_batches()
    assert manager.version == v2 and v0 != v2


def test_rollback_stays_instant_after_recycling(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory()
    for seed in (1, 2):  # the second swap recycles the first model
        publish(registry, seed=seed)
        manager.refresh()
        manager.between_batches()
        manager.release_retired()
    previous = manager.slots.previous
    rolled_back_to = registry.rollback(NAME)
    assert manager.refresh() == "staged"
    manager.between_batches()
    assert manager.version == rolled_back_to and manager.current() is previous


def test_a_new_architecture_is_loaded_fresh(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory()
    publish(registry, seed=1)
    manager.refresh()
    manager.between_batches()
    previous = manager.slots.previous
    assert previous is not None
    old_models = {manager.current().artifact.model, previous.artifact.model}
    v3 = publish(registry, ModelSpec(window=16, hidden=4))
    assert manager.refresh() == "staged"
    manager.between_batches()
    assert manager.version == v3
    assert manager.current().artifact.model not in old_models
    assert manager.current().artifact.model.get_layer("code").units == 4


def test_a_single_artifact_path_is_never_swapped(
    tmp_path: Path, redis_server: Any, redis_client: redis.Redis
) -> None:
    artifact = write_artifact(tmp_path / "one", new_version())
    scorer = Scorer(load_artifact(artifact), BUCKETS)
    settings = make_settings(artifact, redis_server.url)
    manager = ModelManager(settings, scorer, redis_client=redis_client, freeze_gc=False, start=True)
    try:
        assert manager.registry_root is None
        assert [t.name for t in manager.watcher._threads] == ["model-watch"]  # heartbeat only
        wait_until(
            lambda: (
                redis_client.exists(heartbeat_key(settings.redis_key_prefix, manager.worker_id))
                == 1
            ),
            what="heartbeat",
        )
        manager.between_batches()
        assert manager.current() is scorer
    finally:
        manager.close()


# --- unit: threads (notification, polling fallback, jitter, heartbeat) ------------------


def test_a_notification_triggers_the_swap_without_polling(
    registry: Registry, redis_server: Any, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory(start=True, manager_kw={"reload_jitter_s": 0.0})
    # Wait for the subscription, so the notification cannot race it (the poll is an hour).
    wait_until(lambda: _subscribers(redis_server.url) >= 1, what="the subscriber")
    notifying = Registry(registry.root, notifier=redis_notifier(redis_server.url))
    v2 = publish(notifying)
    wait_until(lambda: manager.staged_version == v2, what="the staged model")
    manager.between_batches()
    assert manager.version == v2


def test_polling_catches_up_without_a_notification(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory(
        start=True, model_poll_interval_s=0.2, manager_kw={"reload_jitter_s": 0.0}
    )
    v2 = publish(registry)  # no notifier: only the poll can see it
    wait_until(lambda: manager.staged_version == v2, what="the polled model")


def test_jitter_delays_the_load_within_its_bound(
    registry: Registry, manager_factory: Callable[..., ModelManager]
) -> None:
    manager = manager_factory(start=False, manager_kw={"reload_jitter_s": 0.5})
    publish(registry)
    delays: list[float] = []
    real_wait = manager._stop.wait

    def recording_wait(timeout: float | None = None) -> bool:
        delays.append(timeout or 0.0)
        return real_wait(0)

    manager._stop.wait = recording_wait  # type: ignore[method-assign]
    manager.start()
    manager.request_check()
    wait_until(lambda: manager.staged_version is not None, what="the staged model")
    assert len(delays) == 1 and 0.0 < delays[0] <= 0.5


def test_heartbeat_reports_the_model_and_expires(
    registry: Registry,
    redis_client: redis.Redis,
    manager_factory: Callable[..., ModelManager],
) -> None:
    manager = manager_factory(manager_kw={"heartbeat_interval_s": 2.0})
    v1 = manager.version
    v2 = publish(registry)
    manager.refresh()
    manager.between_batches()
    bad = corrupt_version(registry, "bit_flip")
    manager.refresh()
    assert manager.write_heartbeat()
    key = heartbeat_key(manager.settings.redis_key_prefix, manager.worker_id)
    beat = Heartbeat.decode(redis_client.get(key) or b"")
    assert (beat.worker_id, beat.group, beat.model, beat.version, beat.swaps, beat.failures) == (
        manager.worker_id,
        manager.settings.group_id,
        NAME,
        v2,
        1,
        1,
    )
    assert beat.previous_version == v1 and beat.refused is not None
    assert beat.refused.version == bad and beat.refused.result == "refused_invalid"
    datetime.fromisoformat(beat.updated_at)
    assert 0 < redis_client.ttl(key) <= 6
    manager.close()
    assert redis_client.exists(key) == 0


def _subscribers(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(dict(client.pubsub_numsub(MODELS_CHANNEL)).get(MODELS_CHANNEL.encode(), 0))
    finally:
        client.close()


# --- the model command -------------------------------------------------------------------


def _run_model_cmd(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    model_cmd.add_arguments(parser)
    code = model_cmd.run(parser.parse_args(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_model_status_lists_every_live_worker(
    registry: Registry,
    redis_server: Any,
    manager_factory: Callable[..., ModelManager],
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = manager_factory()
    prefix, group = first.settings.redis_key_prefix, first.settings.group_id
    second = manager_factory(redis_key_prefix=prefix, group_id=group)
    other_group = manager_factory(redis_key_prefix=prefix)
    v2 = publish(registry)
    second.refresh()
    second.between_batches()
    for manager in (first, second, other_group):
        assert manager.write_heartbeat()
    common = ["--redis-url", redis_server.url, "--key-prefix", prefix]
    code, out, _ = _run_model_cmd(["status", *common, "--group", group, "--json"], capsys)
    assert code == 0
    beats = {b["worker_id"]: b["version"] for b in json.loads(out)}
    assert beats == {first.worker_id: first.version, second.worker_id: v2}
    code, out, _ = _run_model_cmd(
        ["status", *common, "--registry", str(registry.root), "--name", NAME], capsys
    )
    assert code == 0
    assert f"champion of {NAME} is {v2}" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("w-")}
    assert set(rows) == {first.worker_id, second.worker_id, other_group.worker_id}
    assert "not on the champion" in rows[first.worker_id]
    assert "not on the champion" not in rows[second.worker_id]
    assert "3 worker(s), 2 version(s), 2 not on the champion" in out


def test_model_status_covers_blue_and_green_in_one_call(
    redis_server: Any,
    manager_factory: Callable[..., ModelManager],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The documented blue/green set-up (two key prefixes, two groups) is one call."""
    blue = manager_factory(redis_key_prefix="blue", group_id="stream-ae-blue")
    green = manager_factory(redis_key_prefix="green", group_id="stream-ae-green")
    other = manager_factory(redis_key_prefix="other")
    for manager in (blue, green, other):
        assert manager.write_heartbeat()
    base = ["status", "--redis-url", redis_server.url, "--json"]
    both = ["--key-prefix", "blue", "--key-prefix", "green"]
    code, out, _ = _run_model_cmd([*base, *both], capsys)
    assert code == 0
    assert {b["worker_id"] for b in json.loads(out)} == {blue.worker_id, green.worker_id}
    code, out, _ = _run_model_cmd([*base, *both, "--group", "stream-ae-green"], capsys)
    assert {b["worker_id"] for b in json.loads(out)} == {green.worker_id}


def test_model_status_without_workers(
    redis_server: Any, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run_model_cmd(
        ["status", "--redis-url", redis_server.url, "--key-prefix", "nobody"], capsys
    )
    assert code == 0 and "no live workers" in out


def test_model_show_prints_manifest_spec_and_threshold_derivation(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    version = registry.champion(NAME)
    assert version is not None
    folder = registry.path(NAME, version)
    code, out, _ = _run_model_cmd(["show", str(folder)], capsys)
    assert code == 0
    assert f"model      {NAME} version {version}" in out
    assert "integrity  verified" in out
    assert "window         16" in out and "hidden         8" in out
    assert "method quantile" in out
    assert "how: empirical 99.0000% quantile of 400 normal window distances" in out
    # The registry root resolves to its champion; --json carries the same facts.
    code, out, _ = _run_model_cmd(["show", str(registry.root), "--name", NAME, "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["manifest"]["version"] == version
    calibration = info["calibration"]["default"]
    assert calibration["level"] == 0.99 and calibration["windows"] == 400
    assert 0 < calibration["threshold"] < 1


def test_model_show_fails_on_a_corrupt_artifact(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = corrupt_version(registry, "truncated")
    code, _, err = _run_model_cmd(["show", str(registry.path(NAME, bad))], capsys)
    assert code == 1 and f"{MODEL_FILE} is corrupt" in err
    code, out, _ = _run_model_cmd(["show", str(registry.path(NAME, bad)), "--no-verify"], capsys)
    assert code == 0 and "not checked" in out


def test_model_help_explains_each_option(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="stream-ae model")
    model_cmd.add_arguments(parser)
    for action in ("status", "show"):
        with pytest.raises(SystemExit):
            parser.parse_args([action, "--help"])
        text = capsys.readouterr().out
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
            action
        ]
        for option in sub._actions:
            if option.option_strings and option.dest != "help":
                assert option.help, f"{action} {option.option_strings} has no help"
                assert option.option_strings[-1] in text
