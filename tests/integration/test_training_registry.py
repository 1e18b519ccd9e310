"""The model registry: atomic publish under a concurrent reader, manifest checks, promote,
rollback, rejected candidates, Redis notifications, and the champion/challenger gate."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import redis

from stream_ae.errors import ArtifactError, IncompatibleModelError
from stream_ae.model.artifacts import load_artifact, read_manifest, save_artifact
from stream_ae.model.registry import MODELS_CHANNEL
from stream_ae_dev.devstack import RedisProcess
from tests.support.training_data import TINY_FIT, sine_series, tiny_spec, write_fake_artifact
from training.fit import FitResult, fit_series
from training.gate import GateConfig, GateMetrics, decide, evaluate_artifact
from training.refit import publish_gated
from training.registry import LOSS_UNIT, Registry, format_versions, redis_notifier


def _fake(registry: Registry, name: str, version: str, pause_s: float = 0.0) -> str:
    return registry.publish(
        name,
        lambda directory, v: write_fake_artifact(directory, v, name, pause_s=pause_s),
        version=version,
    )


def test_publish_is_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    """A reader polling the pointer and the version list never meets a half-written version,
    while versions are written slowly and promoted one after the other."""
    registry = Registry(tmp_path)
    problems: list[str] = []
    champions_seen: set[str] = set()
    versions_seen: set[str] = set()
    reads = 0
    done = threading.Event()

    def reader() -> None:
        nonlocal reads
        last_pass = False
        while not last_pass:
            # One more full pass after the writer is done: it must see the last version.
            last_pass = done.is_set()
            try:
                champion = registry.champion("m")
                if champion is not None:
                    read_manifest(registry.path("m", champion), verify=True)
                    champions_seen.add(champion)
                for version in registry.versions("m"):
                    read_manifest(registry.path("m", version), verify=True)
                    versions_seen.add(version)
                reads += 1
            except Exception as exc:  # any failure is what the test is looking for
                problems.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(6):
            version = _fake(registry, "m", f"v{i}", pause_s=0.002)
            registry.promote("m", version)
    finally:
        done.set()
        thread.join(timeout=30)
    assert not problems, problems[:3]
    assert reads > 20  # the reader really ran alongside the writer
    assert len(champions_seen) >= 2 and versions_seen == {f"v{i}" for i in range(6)}
    assert registry.champion("m") == "v5"
    # Nothing staged is left behind.
    assert sorted(p.name for p in (tmp_path / "m").iterdir() if p.name.startswith(".stag")) == []


def test_a_failed_publish_leaves_no_version_and_no_staging(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    _fake(registry, "m", "v1")
    registry.promote("m", "v1")

    def broken(directory: Path, version: str) -> None:
        write_fake_artifact(directory, version, "m")
        (directory / "metrics.json").write_text("tampered after the manifest")

    with pytest.raises(ArtifactError, match="corrupt"):
        registry.publish("m", broken, version="v2")
    assert registry.versions("m") == ["v1"]
    assert [p.name for p in (tmp_path / "m").iterdir() if p.name.startswith(".staging")] == []
    assert registry.champion("m") == "v1"
    with pytest.raises(ArtifactError, match="immutable"):
        _fake(registry, "m", "v1")


def test_promote_rollback_and_history(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    for version in ("v1", "v2", "v3"):
        _fake(registry, "m", version)
        registry.promote("m", version)
    assert registry.champion("m") == "v3"
    assert registry.rollback("m") == "v2"
    assert registry.rollback("m") == "v1"  # a stack: not back to v3
    with pytest.raises(ArtifactError, match="no earlier champion"):
        registry.rollback("m")
    assert [e["event"] for e in registry.history("m")] == [
        "promote",
        "promote",
        "promote",
        "rollback",
        "rollback",
    ]
    statuses = {v.version: v.status for v in registry.list_versions("m")}
    assert statuses == {"v1": "champion", "v2": "retired", "v3": "retired"}
    with pytest.raises(ArtifactError, match="no published version 'v9'"):
        registry.promote("m", "v9")


def _fake_of_window(registry: Registry, version: str, window: int) -> str:
    def write(directory: Path, v: str) -> None:
        write_fake_artifact(directory, v, "m", size=1000)
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["window"] = window  # not hashed: the manifest is what lists the hashes
        (directory / "manifest.json").write_text(json.dumps(manifest))

    return registry.publish("m", write, version=version)


def test_versions_resolve_by_unique_prefix_latest_and_previous(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    for version in ("20260101T0900-a", "20260101T1000-b", "20260102T0900-c"):
        _fake(registry, "m", version)
    (tmp_path / "m" / "20260103T0000-incomplete").mkdir()  # never 'latest'
    assert registry.resolve("m", "latest") == "20260102T0900-c"
    assert registry.resolve("m", "20260101T10") == "20260101T1000-b"
    assert registry.resolve("m", "20260101T0900-a") == "20260101T0900-a"
    with pytest.raises(ArtifactError, match="prefix of 2 versions"):
        registry.resolve("m", "20260101")
    for ref in ("2027", "", "20260103"):
        with pytest.raises(ArtifactError, match="no published version"):
            registry.resolve("m", ref)
    with pytest.raises(ArtifactError, match="no 'previous'"):
        registry.resolve("m", "previous")
    assert registry.promote("m", "20260101T09") == "20260101T0900-a"
    assert registry.promote("m", "latest") == "20260102T0900-c"
    assert registry.resolve("m", "previous") == "20260101T0900-a"
    assert registry.rollback("m", to="previous") == "20260101T0900-a"
    assert registry.champion("m") == "20260101T0900-a"


def test_promote_refuses_what_running_workers_would_refuse_unless_forced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(tmp_path)
    _fake(registry, "m", "v1")
    registry.promote("m", "v1")
    _fake_of_window(registry, "v2", window=24)
    with pytest.raises(IncompatibleModelError, match=r"window 24 .* workers on champion v1"):
        registry.promote("m", "v2")
    assert registry.champion("m") == "v1"
    assert [e["version"] for e in registry.history("m")] == ["v1"]
    with caplog.at_level(logging.INFO, logger="training.registry"):
        registry.promote("m", "v2", force=True, reason="new group")
        assert registry.champion("m") == "v2"
        # Back to window 12: the rollback is checked the same way.
        with pytest.raises(IncompatibleModelError):
            registry.rollback("m")
        registry.rollback("m", force=True)
    messages = [r.getMessage() for r in caplog.records]
    assert any("running workers will refuse it (forced)" in m for m in messages)
    assert "promoted m/v2 to champion (was v1): new group" in messages
    assert "rolled back m to v1 (was v2): rollback" in messages
    assert not any("rollback" in m for m in messages if m.startswith("promoted"))


def test_list_shows_one_loss_in_one_unit_the_gate_and_the_status(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    for version in ("v1", "v2", "v3"):
        _fake(registry, "m", version)
    registry.promote("m", "v1", reason="first champion")

    def gate(error: float, far: float) -> dict[str, object]:
        decision = decide(GateMetrics(error, far, 100), GateMetrics(1.0, 0.01, 100), GateConfig())
        return decision.to_dict()

    registry.reject("m", "v2", "error too high", gate=gate(3.0, 0.01))
    registry.promote("m", "v3", reason="gate passed", gate=gate(0.9, 0.0))
    info = {v.version: v for v in registry.list_versions("m")}
    assert [(v.status, v.loss, v.champion_loss) for v in info.values()] == [
        ("retired", None, None),
        ("rejected", 3.0, 1.0),
        ("champion", 0.9, 1.0),
    ]
    assert info["v3"].false_alert_rate == 0.0 and info["v3"].champion_false_alert_rate == 0.01
    assert "val_loss" not in info["v3"].metrics  # a loss in the model's own scaling units
    table = format_versions(list(info.values()))
    assert LOSS_UNIT in table
    row = next(line for line in table.splitlines() if line.startswith("v2"))
    assert row.split()[:6] == ["v2", "rejected", "reconstruct", "12", "3", "1"]
    # A rejected one is promoted only when asked, and keeps the gate's figures.
    with pytest.raises(ArtifactError, match="v2 was rejected"):
        registry.promote("m", "v2", reason="by hand")
    registry.promote("m", "v2", reason="by hand", allow_rejected=True)
    assert next(v for v in registry.list_versions("m") if v.version == "v2").loss == 3.0


def test_rejected_candidates_are_kept_with_the_reason(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    _fake(registry, "m", "v1")
    registry.promote("m", "v1")
    _fake(registry, "m", "v2")
    registry.reject("m", "v2", "error 3 > champion's 1", gate={"accepted": False})
    (v1, v2) = registry.list_versions("m")
    assert (v1.status, v2.status, v2.reason) == ("champion", "rejected", "error 3 > champion's 1")
    assert (tmp_path / "m" / "v2" / "manifest.json").is_file()  # kept, not deleted
    assert registry.decision("m", "v2")["gate"] == {"accepted": False}


def test_promotion_notifies_workers_over_redis(
    tmp_path: Path, redis_server: RedisProcess, redis_client: redis.Redis
) -> None:
    pubsub = redis_client.pubsub()
    pubsub.subscribe(MODELS_CHANNEL)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    registry = Registry(tmp_path, notifier=redis_notifier(redis_server.url))
    _fake(registry, "m", "v1")
    registry.promote("m", "v1")
    message = pubsub.get_message(timeout=5)
    assert message is not None and message["type"] == "message"
    assert json.loads(message["data"]) == {"name": "m", "version": "v1"}
    pubsub.close()
    # An unreachable Redis does not undo or fail the promotion: workers also poll the pointer.
    Registry(tmp_path, notifier=redis_notifier("redis://127.0.0.1:1/0")).promote("m", "v1")


# --- real artifacts -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def champion_fit() -> FitResult:
    series = [sine_series("a", 400, seed=1), sine_series("b", 400, seed=2, level=3)]
    return fit_series(series, tiny_spec(hidden=12), TINY_FIT)


def _publish(registry: Registry, fit: FitResult, version: str) -> Path:
    def write(directory: Path, v: str) -> None:
        save_artifact(
            directory,
            model=fit.model,
            spec=fit.spec,
            scaling=fit.scaling,
            calibration=fit.calibration,
            name="m",
            version=v,
            metrics=fit.metrics,
        )

    registry.publish("m", write, version=version)
    return registry.path("m", version)


def test_a_corrupted_file_fails_the_manifest_check(champion_fit: FitResult, tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    path = _publish(registry, champion_fit, "v1")
    assert load_artifact(path).version == "v1"
    calibration = path / "calibration.json"
    body = calibration.read_bytes()
    calibration.write_bytes(body.replace(b"0", b"1", 1))  # one digit of one number
    with pytest.raises(ArtifactError, match=r"calibration\.json is corrupt"):
        load_artifact(path)
    with pytest.raises(ArtifactError, match="corrupt"):
        registry.promote("m", "v1")
    assert registry.champion("m") is None
    calibration.write_bytes(body)
    model_file = path / "model.keras"
    model_file.write_bytes(model_file.read_bytes()[:-10])  # truncated
    with pytest.raises(ArtifactError, match=r"model\.keras is corrupt"):
        read_manifest(path)


def test_decide_compares_with_tolerance() -> None:
    config = GateConfig(error_tolerance=0.1, far_tolerance=0.01)
    champion = GateMetrics(error=1.0, false_alert_rate=0.01, windows=100)
    assert decide(GateMetrics(1.09, 0.019, 100), champion, config).accepted
    worse_error = decide(GateMetrics(1.2, 0.0, 100), champion, config)
    assert not worse_error.accepted and "error 1.2 > champion's 1" in worse_error.reason
    worse_far = decide(GateMetrics(0.5, 0.03, 100), champion, config)
    assert not worse_far.accepted and "false-alert rate" in worse_far.reason
    assert not decide(GateMetrics(float("nan"), 0.0, 100), champion, config).accepted
    assert decide(GateMetrics(9.0, 0.9, 100), None, config).accepted


def test_the_gate_refuses_a_deliberately_bad_challenger(
    champion_fit: FitResult, tmp_path: Path
) -> None:
    registry = Registry(tmp_path)
    _publish(registry, champion_fit, "v1")
    registry.promote("m", "v1")
    champion = load_artifact(registry.path("m", "v1"))
    recent = [sine_series("a", 200, seed=7), sine_series("b", 200, seed=8, level=3)]

    # The same model with its weights scrambled: same spec, scaling and calibration.
    rng = np.random.default_rng(0)
    bad_model = champion.model
    bad_model.set_weights([rng.normal(0, 1.0, w.shape) for w in champion.model.get_weights()])
    bad = FitResult(**{**champion_fit.__dict__, "model": bad_model})
    fresh_champion = load_artifact(registry.path("m", "v1"))

    good_metrics = evaluate_artifact(fresh_champion, recent)
    published = publish_gated(
        registry, "m", bad, gate_series=recent, gate=GateConfig(), champion=fresh_champion
    )
    assert not published.promoted
    assert published.decision is not None
    assert published.decision.challenger.error > 2 * good_metrics.error
    assert "error" in published.reason
    assert registry.champion("m") == "v1"
    (status,) = [v for v in registry.list_versions("m") if v.version == published.version]
    assert status.status == "rejected" and status.reason == published.reason

    # The champion itself passes against itself: the gate is not refusing everything.
    again = publish_gated(
        registry, "m", champion_fit, gate_series=recent, gate=GateConfig(), champion=fresh_champion
    )
    assert again.promoted and registry.champion("m") == again.version
