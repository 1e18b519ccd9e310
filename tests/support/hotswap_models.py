"""Helpers of the hot-swap tests: tiny untrained models published to a registry, broken in
chosen ways, and a steady input load.

Models are tiny (window 16, hidden 8) and never trained: what the tests check is which model
scores, not how well. A calibration fitted on each model's own errors over sine windows makes
their scores spread over [0, 1], so a threshold of 0.8 opens and resolves alerts all along.
"""

from __future__ import annotations

import functools
import itertools
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from stream_ae.core.records import encode_event
from stream_ae.core.scoring import fit_calibration, window_errors
from stream_ae.model.artifacts import (
    MANIFEST,
    MODEL_FILE,
    CalibrationSet,
    Scaling,
    save_artifact,
    sha256_file,
)
from stream_ae.model.network import ModelSpec, as_output_list, build_model, split_window
from stream_ae.model.registry import CHAMPION_POINTER
from training.registry import Registry, write_atomic

NAME = "hs"
SPEC = ModelSpec(window=16, hidden=8)
# Event times of the load: step k of every stream is at CLOCK_BASE_MS + k s.
CLOCK_BASE_MS = 1_700_000_000_000


@functools.cache
def model_parts(spec: ModelSpec, seed: int) -> tuple[Any, Scaling, CalibrationSet]:
    """An untrained model of ``spec`` with a calibration fitted on its errors over sine
    windows: cached, so publishing a version costs one save, not one model build."""
    model = build_model(spec, seed=seed)
    rng = np.random.default_rng(seed)
    t = np.arange(400 + spec.window)[:, None] + rng.uniform(0, 6, size=(1, spec.features))
    series = np.sin(t / 5.0) + 0.1 * rng.standard_normal(t.shape)
    windows = np.stack([series[i : i + spec.window] for i in range(400)]).astype(np.float32)
    scaling = Scaling.fit(series)
    inputs, targets = split_window(spec, scaling.apply(windows))
    outputs = as_output_list(model.predict_on_batch(inputs))
    errors, _ = window_errors(np.concatenate(targets, axis=1), np.concatenate(outputs, axis=1))
    calibration = fit_calibration(errors, method="quantile", level=0.99)
    return model, scaling, CalibrationSet(calibration)


def write_artifact(directory: Path, version: str, spec: ModelSpec = SPEC, seed: int = 0) -> Path:
    model, scaling, calibration = model_parts(spec, seed)
    return save_artifact(
        directory,
        model=model,
        spec=spec,
        scaling=scaling,
        calibration=calibration,
        name=NAME,
        version=version,
        metrics={"seed": seed},
    )


_PUBLISHED = itertools.count()


def new_version(tag: str = "") -> str:
    # Sortable in publishing order and unique: versions are immutable, a test may publish many
    # per second, and "latest", list order and the like follow the name's order.
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{next(_PUBLISHED):06d}-{uuid.uuid4().hex[:6]}{tag}"


def publish(
    registry: Registry,
    spec: ModelSpec = SPEC,
    *,
    promote: bool = True,
    seed: int = 0,
    force: bool = False,
) -> str:
    """Publish a new version through the registry (and make it the champion; ``force``: even
    one that running workers must refuse)."""
    version = registry.publish(NAME, lambda d, v: write_artifact(d, v, spec, seed), new_version())
    if promote:
        registry.promote(NAME, version, force=force)
    return version


def flip(root: Path, version: str) -> None:
    """Point the champion at ``version`` without the registry's checks (what a bad manual
    edit, or a disk corrupting a promoted artifact, looks like to a worker)."""
    write_atomic(root / NAME / CHAMPION_POINTER, version + "\n")


def corrupt_version(registry: Registry, how: str) -> str:
    """A published version broken in one way, then made the champion by a raw flip."""
    version = publish(registry, promote=False)
    folder = registry.path(NAME, version)
    model_file = folder / MODEL_FILE
    if how == "truncated":
        data = model_file.read_bytes()
        model_file.write_bytes(data[: len(data) // 2])
    elif how == "bit_flip":
        flipped = bytearray((folder / "calibration.json").read_bytes())
        flipped[len(flipped) // 2] ^= 0x01
        (folder / "calibration.json").write_bytes(bytes(flipped))
    elif how == "no_manifest":
        (folder / MANIFEST).unlink()
    elif how == "unloadable":
        # Garbage with a matching manifest: only the Keras load can tell.
        model_file.write_bytes(b"PK\x03\x04 not a keras archive" * 50)
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["files"][MODEL_FILE] = sha256_file(model_file)
        (folder / MANIFEST).write_text(json.dumps(manifest))
    elif how == "unreadable":
        # An I/O error on read (file permissions would not stop root, who runs CI here).
        (folder / MANIFEST).unlink()
        (folder / MANIFEST).mkdir()
    else:
        raise ValueError(how)
    flip(registry.root, version)
    return version


class Load:
    """Continuous input: ``streams`` sine streams, one event of each per step, at about
    ``rate_per_s`` events/s, until :meth:`stop`; counts what it sent per stream."""

    def __init__(self, bootstrap: str, topic: str, streams: int = 8, rate_per_s: float = 400):
        from kafka import KafkaProducer

        self.sent = {f"s{i}": 0 for i in range(streams)}
        self._stop = threading.Event()
        producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)

        def run() -> None:
            step, started = 0, time.monotonic()
            rng = np.random.default_rng(0)
            while not self._stop.is_set():
                for i, name in enumerate(self.sent):
                    # The calibration's own kind of data: scores spread over [0, 1].
                    value = float(np.sin(step / 5.0 + i) + 0.1 * rng.standard_normal())
                    producer.send(
                        topic,
                        key=name.encode(),
                        value=encode_event(name, CLOCK_BASE_MS + step * 1000, value),
                    )
                    self.sent[name] += 1
                step += 1
                ahead = step * len(self.sent) / rate_per_s - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            producer.flush()
            producer.close()

        self.thread = threading.Thread(target=run, name="test-load", daemon=True)
        self.thread.start()

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def stop(self) -> int:
        self._stop.set()
        self.thread.join(timeout=30)
        return self.total


def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` up to its current end (no consumer group)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < end[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()
