"""The model registry on object storage, against an S3-API server over HTTP (moto's server
mode, :mod:`tests.support.object_store`): publish, promote, the worker's read of the champion and
load of its artifact, versions that stay immutable, incomplete versions ignored, a reader
during a publish that never sees half a version, and a pointer that cannot leave the
registry."""

from __future__ import annotations

import argparse
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from stream_ae.api import Detector
from stream_ae.cli import model as model_cmd
from stream_ae.errors import ArtifactError, IncompatibleModelError
from stream_ae.model.artifacts import MANIFEST, MODEL_FILE, load_artifact, read_manifest
from stream_ae.model.inference import Scorer
from stream_ae.model.network import ModelSpec
from stream_ae.model.registry import (
    CHAMPION_POINTER,
    is_published,
    local_version_dir,
    read_champion,
    resolve_artifact_dir,
    resolve_version,
    version_names,
)
from stream_ae.model.registry_store import ObjectStore
from stream_ae.settings import Settings
from stream_ae.worker.metrics import WorkerMetrics
from stream_ae.worker.swap import ModelManager
from tests.support.hotswap_models import NAME, new_version, publish, write_artifact
from tests.support.object_store import S3Server, running_s3_server
from tests.support.training_data import write_fake_artifact
from training.cli import main as train_main
from training.registry import Registry

BUCKETS = [16]


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


@pytest.fixture
def url(s3_server: S3Server) -> str:
    """A registry root on the server, in a bucket of its own."""
    return f"s3://{s3_server.new_bucket()}/models"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The local cache of downloaded versions (the worker's default one, moved under the
    test's own folder)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "stream-ae" / "models"


def _store(url: str) -> ObjectStore:
    store = Registry(url).store
    assert isinstance(store, ObjectStore)
    return store


def test_publish_promote_and_load_the_champion(url: str, cache: Path) -> None:
    registry = Registry(url)
    first = publish(registry)
    second = publish(registry, promote=False)
    assert read_champion(url, NAME) == first
    assert version_names(url, NAME) == sorted([first, second])
    assert resolve_version(url, NAME, "latest") == max(first, second)

    registry.promote(NAME, second)
    assert read_champion(url, NAME) == second
    assert [v.status for v in registry.list_versions(NAME)] == ["retired", "champion"]
    assert registry.champion_stack(NAME) == [first, second]
    # What a worker starts from: the champion, downloaded into the cache, checked, loaded.
    directory = resolve_artifact_dir(url, NAME)
    assert directory.is_relative_to(cache) and directory.name == second
    artifact = load_artifact(directory)
    assert (artifact.name, artifact.version) == (NAME, second)
    assert Detector.load(url, name=NAME).scorer.version == second  # the embeddable API too
    assert registry.rollback(NAME) == first
    assert read_champion(url, NAME) == first


def test_the_registry_url_comes_through_the_settings(url: str) -> None:
    settings = Settings(model_path=url, model_name=NAME)
    assert settings.model_path == url  # kept whole: a Path would fold "s3://" into "s3:/"
    assert Settings(model_path="file:///srv/models").model_path == Path("/srv/models")


def test_a_worker_follows_the_champion_on_object_storage(
    url: str, cache: Path, redis_server: Any
) -> None:
    registry = Registry(url)
    first = publish(registry)
    settings = Settings(
        model_path=url,
        model_name=NAME,
        redis_url=redis_server.url,
        redis_key_prefix=f"t{uuid.uuid4().hex[:8]}",
        batch_buckets=BUCKETS,
        model_poll_interval_s=3600.0,
    )
    scorer = Scorer(load_artifact(resolve_artifact_dir(settings.model_path, NAME)), BUCKETS)
    manager = ModelManager(
        settings,
        scorer,
        WorkerMetrics(),
        redis_client=redis.Redis.from_url(redis_server.url),
        start=False,
        freeze_gc=False,
        prepare_spare=False,
        seed=0,
    )
    try:
        assert manager.registry_root == url
        assert manager.refresh() == "current"
        second = publish(registry, seed=1)
        assert manager.refresh() == "staged"
        manager.between_batches()
        assert (manager.version, manager.previous_version) == (second, first)
        windows = np.zeros((1, 16, 1), dtype=np.float32)
        expected = Scorer(load_artifact(local_version_dir(url, NAME, second)), BUCKETS)
        assert np.allclose(
            manager.current().predict(windows)[0], expected.predict(windows)[0], atol=1e-6
        )
        # A version the running model cannot take is refused there too, before any load.
        wider = publish(registry, ModelSpec(window=24, hidden=8), promote=False)
        with pytest.raises(IncompatibleModelError, match="running workers"):
            registry.promote(NAME, wider)
        assert manager.refresh() == "current"
    finally:
        manager.close()


def test_versions_are_immutable(url: str, cache: Path) -> None:
    registry = Registry(url)
    version = publish(registry, promote=False)
    before = _store(url).fs.cat_file(f"{_store(url).base}/{NAME}/{version}/{MANIFEST}")
    with pytest.raises(ArtifactError, match="already exists: versions are immutable"):
        registry.publish(NAME, lambda d, v: write_artifact(d, v, seed=3), version)
    after = _store(url).fs.cat_file(f"{_store(url).base}/{NAME}/{version}/{MANIFEST}")
    assert after == before


def test_a_version_without_its_manifest_is_ignored(url: str, cache: Path, tmp_path: Path) -> None:
    registry = Registry(url)
    good = publish(registry)
    # A publish that died before its manifest: every file there, but the manifest.
    half = new_version("-half")
    write_fake_artifact(tmp_path / half, half, NAME, size=1000)
    store = _store(url)
    for path in sorted((tmp_path / half).iterdir()):
        if path.name != MANIFEST:
            store.fs.put_file(str(path), f"{store.base}/{NAME}/{half}/{path.name}")

    assert half in version_names(url, NAME)
    assert not is_published(url, NAME, half)
    assert resolve_version(url, NAME, "latest") == good
    assert registry.list_versions(NAME)[-1].status == "incomplete"
    with pytest.raises(ArtifactError, match="no published version"):
        registry.promote(NAME, half)
    # A pointer flipped to it by hand: the loader refuses it, the worker keeps its model.
    store.write_atomic(f"{NAME}/{CHAMPION_POINTER}", half + "\n")
    with pytest.raises(ArtifactError, match="incomplete"):
        resolve_artifact_dir(url, NAME)


def test_a_reader_during_a_publish_never_sees_half_a_version(url: str, cache: Path) -> None:
    registry = Registry(url)
    published: list[str] = []
    errors: list[BaseException] = []
    sightings = {"incomplete": 0, "complete": 0}

    def publish_some() -> None:
        try:
            for _ in range(3):
                version = new_version()
                # Several MB: the upload takes long enough for the reader to look meanwhile.
                registry.publish(
                    NAME,
                    lambda d, v: write_fake_artifact(d, v, NAME, size=4_000_000),
                    version,
                )
                published.append(version)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    writer = threading.Thread(target=publish_some)
    writer.start()
    checked: set[str] = set()
    while writer.is_alive():
        for version in version_names(url, NAME):
            if not is_published(url, NAME, version):
                sightings["incomplete"] += 1
            elif version not in checked:
                # Published: every file there and intact, at the first moment it shows.
                read_manifest(local_version_dir(url, NAME, version), verify=True)
                checked.add(version)
                sightings["complete"] += 1
    writer.join()
    assert not errors, errors
    assert len(published) == 3 and version_names(url, NAME) == sorted(published)
    # The reader did look while a version was half uploaded, and took it for incomplete.
    assert sightings["incomplete"] > 0, sightings


@pytest.mark.parametrize("pointer", ["../../elsewhere", "/abs/path", "..", "v1/../v1", "missing"])
def test_the_pointer_cannot_leave_the_registry(url: str, cache: Path, pointer: str) -> None:
    registry = Registry(url)
    publish(registry)
    store = _store(url)
    # Something a traversal could reach, next to the registry's prefix.
    store.fs.pipe_file(f"{store.base.rsplit('/', 1)[0]}/elsewhere/{MANIFEST}", b"{}")
    store.write_atomic(f"{NAME}/{CHAMPION_POINTER}", pointer + "\n")
    with pytest.raises(ArtifactError):
        read_champion(url, NAME)
    with pytest.raises(ArtifactError):
        resolve_artifact_dir(url, NAME)


def test_the_cache_is_checked_against_the_manifest(url: str, cache: Path) -> None:
    registry = Registry(url)
    version = publish(registry)
    directory = local_version_dir(url, NAME, version)
    # A cached copy changed on disk is downloaded again, not loaded.
    (directory / MODEL_FILE).write_bytes(b"changed")
    assert local_version_dir(url, NAME, version) == directory
    read_manifest(directory, verify=True)
    # A file changed on object storage after its publish is refused.
    store = _store(url)
    store.fs.pipe_file(f"{store.base}/{NAME}/{version}/calibration.json", b"{}")
    (directory / MODEL_FILE).write_bytes(b"changed")
    with pytest.raises(ArtifactError, match=r"calibration\.json is corrupt"):
        local_version_dir(url, NAME, version)


def test_the_commands_take_a_registry_url(
    url: str, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry(url)
    first = publish(registry)
    second = publish(registry, promote=False)
    common = ["--registry", url, "--name", NAME]
    assert train_main(["promote", "latest", *common]) == 0
    assert read_champion(url, NAME) == second != first
    capsys.readouterr()
    assert train_main(["list", *common, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["champion"] == second
    assert [v["status"] for v in listed["versions"]] == ["retired", "champion"]
    # The operator's view of an artifact on object storage: downloaded, checked, described.
    parser = argparse.ArgumentParser()
    model_cmd.add_arguments(parser)
    assert model_cmd.run(parser.parse_args(["show", url, "--name", NAME, "--json"])) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["manifest"]["version"] == second
