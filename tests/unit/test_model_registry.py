"""The registry's read side and the artifact checks that guard what a worker loads: every file
the loader reads is hashed, the champion pointer stays inside the registry, one compatibility
check, and the heartbeat's codec. Files only: no Keras model is built here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from stream_ae.errors import ArtifactError, IncompatibleModelError
from stream_ae.model.artifacts import (
    LOADED_FILES,
    MANIFEST,
    StateShape,
    check_compatible,
    read_manifest,
    read_metadata,
)
from stream_ae.model.registry import (
    CHAMPION_POINTER,
    Heartbeat,
    Refusal,
    read_champion,
    resolve_artifact_dir,
    resolve_version,
    version_dir,
    version_names,
)
from tests.support.training_data import write_fake_artifact

NAME = "m"


def _artifact(root: Path, version: str) -> Path:
    folder = root / NAME / version
    write_fake_artifact(folder, version, NAME, size=1000)
    return folder


def _point(root: Path, text: str) -> None:
    (root / NAME / CHAMPION_POINTER).write_text(text + "\n")


@pytest.mark.parametrize("omitted", LOADED_FILES)
def test_a_manifest_must_list_every_file_the_loader_reads(omitted: str, tmp_path: Path) -> None:
    folder = _artifact(tmp_path, "v1")
    manifest = json.loads((folder / MANIFEST).read_text())
    del manifest["files"][omitted]
    (folder / MANIFEST).write_text(json.dumps(manifest))
    # The file it leaves out is changed: without the rule, nothing would notice.
    (folder / omitted).write_bytes(b"changed")
    for verify in (True, False):
        with pytest.raises(ArtifactError, match=f"does not list {re.escape(omitted)}"):
            read_manifest(folder, verify=verify)
    with pytest.raises(ArtifactError, match=f"does not list {re.escape(omitted)}"):
        read_metadata(folder)


def test_a_manifest_cannot_list_files_outside_its_artifact(tmp_path: Path) -> None:
    folder = _artifact(tmp_path, "v1")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"]["../../elsewhere"] = "0" * 64
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="plain names"):
        read_manifest(folder, verify=False)


def test_a_complete_manifest_is_accepted_and_a_changed_file_refused(tmp_path: Path) -> None:
    folder = _artifact(tmp_path, "v1")
    assert set(read_manifest(folder)["files"]) == set(LOADED_FILES)
    (folder / "calibration.json").write_text('{"default": {}}')
    with pytest.raises(ArtifactError, match=r"calibration\.json is corrupt"):
        read_manifest(folder)


@pytest.mark.parametrize(
    "pointer",
    ["../../outside", "/ABS", "..", ".staging-v1", "decisions", "v1/../v1", "missing"],
)
def test_the_champion_pointer_must_name_a_version_inside_the_registry(
    pointer: str, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    _artifact(root, "v1")
    (root / NAME / "decisions").mkdir()
    (root / NAME / ".staging-v1").mkdir()
    # A complete artifact outside the registry, where the traversal would lead.
    outside = tmp_path / "outside"
    write_fake_artifact(outside, "evil", NAME, size=1000)
    pointer = pointer.replace("/ABS", str(outside))
    _point(root, pointer)
    with pytest.raises(ArtifactError, match="CHAMPION"):
        read_champion(root, NAME)
    with pytest.raises(ArtifactError):
        resolve_artifact_dir(root, NAME)


def test_a_plain_pointer_resolves_and_no_pointer_is_none(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    folder = _artifact(root, "v1")
    assert read_champion(root, NAME) is None
    _point(root, "v1")
    assert read_champion(root, NAME) == "v1"
    assert resolve_artifact_dir(root, NAME) == folder
    assert resolve_artifact_dir(folder, "any name") == folder  # an artifact is itself


def test_names_that_could_leave_the_registry_are_refused(tmp_path: Path) -> None:
    for name, version in (("../x", "v1"), (NAME, "../v1"), (NAME, "a/b"), ("", "v1")):
        with pytest.raises(ArtifactError, match="plain name"):
            version_dir(tmp_path, name, version)


def test_version_names_skip_the_write_sides_records(tmp_path: Path) -> None:
    _artifact(tmp_path, "v2")
    _artifact(tmp_path, "v1")
    for entry in ("decisions", ".staging-v3-abc", ".lock-dir"):
        (tmp_path / NAME / entry).mkdir()
    (tmp_path / NAME / "v0").mkdir()  # incomplete: listed, it has no manifest
    assert version_names(tmp_path, NAME) == ["v0", "v1", "v2"]


def test_compatibility_is_window_and_features_in_order() -> None:
    running = StateShape(16, ("cpu", "mem"))
    check_compatible(StateShape(16, ("cpu", "mem")), running, "m/v2")
    for other in (
        StateShape(24, ("cpu", "mem")),
        StateShape(16, ("mem", "cpu")),
        StateShape(16, ("cpu",)),
    ):
        with pytest.raises(IncompatibleModelError, match=r"m/v2: window .* differs from window"):
            check_compatible(other, running, "m/v2")
    assert issubclass(IncompatibleModelError, ArtifactError)
    assert StateShape.of_manifest({"window": 16, "features": ["cpu", "mem"]}) == running
    with pytest.raises(ArtifactError, match="window and features"):
        StateShape.of_manifest({"window": 16})


def test_a_heartbeat_round_trips_and_garbage_is_refused() -> None:
    beat = Heartbeat(
        worker_id="w-1",
        group="g",
        model=NAME,
        version="v2",
        previous_version="v1",
        champion="v3",
        swaps=1,
        failures=2,
        refused=Refusal("v3", "refused_incompatible", "window 24 differs"),
        updated_at="2026-01-01T00:00:00+00:00",
        ttl_s=30,
    )
    assert Heartbeat.decode(beat.encode()) == beat
    assert Heartbeat.decode(beat.encode().decode()) == beat
    for raw in (b"not json", b"[]", b'{"worker_id": "w"}', b""):
        with pytest.raises(ValueError, match="not a heartbeat"):
            Heartbeat.decode(raw)


def test_a_version_resolves_by_name_latest_or_unique_prefix(tmp_path: Path) -> None:
    for version in ("20260101T0900-a", "20260101T1000-b"):
        _artifact(tmp_path, version)
    (tmp_path / NAME / "20260102T0000-partial").mkdir()  # no manifest: never resolved
    assert resolve_version(tmp_path, NAME, "latest") == "20260101T1000-b"
    assert resolve_version(tmp_path, NAME, "20260101T09") == "20260101T0900-a"
    with pytest.raises(ArtifactError, match="prefix of 2 versions"):
        resolve_version(tmp_path, NAME, "2026")
    with pytest.raises(ArtifactError, match="no published version '20260102'"):
        resolve_version(tmp_path, NAME, "20260102")
