"""Small training data, model specs and artifact writers shared by the training tests."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from stream_ae.model.artifacts import ARTIFACT_FORMAT, MANIFEST
from stream_ae.model.network import ModelKind, ModelSpec
from training.data import Series
from training.fit import FitConfig

KINDS: tuple[ModelKind, ...] = ("reconstruct", "predict", "composite")
START_MS = 1_700_000_000_000
STEP_MS = 60_000

# Tiny and quick: the machine running the suite is small and shared.
TINY_FIT = FitConfig(
    epochs=4, batch_size=32, learning_rate=5e-3, patience=3, train_stride=2, verbose=0
)


def sine_series(
    name: str = "s0",
    steps: int = 500,
    *,
    period: int = 24,
    noise: float = 0.1,
    level: float = 0.0,
    seed: int = 0,
    labels: tuple[tuple[int, int], ...] = (),
) -> Series:
    """A noisy sine, one event a minute from START_MS."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    values = level + np.sin(2 * np.pi * t / period) + noise * rng.standard_normal(steps)
    return Series(name, values.astype(np.float32), START_MS + STEP_MS * t, labels=labels)


def tiny_spec(
    kind: ModelKind = "reconstruct",
    window: int = 12,
    *,
    hidden: int = 8,
    masking: bool = False,
    reverse: bool = False,
) -> ModelSpec:
    horizon = 0 if kind == "reconstruct" else 3
    return ModelSpec(
        kind=kind, window=window, hidden=hidden, horizon=horizon, masking=masking, reverse=reverse
    )


def write_fake_artifact(
    directory: Path, version: str, name: str, *, size: int = 200_000, pause_s: float = 0.0
) -> None:
    """A format-valid artifact without a real model, written slowly in chunks (manifest
    last, as save_artifact does) so a concurrent reader has every chance to see it half
    written if publishing were not atomic."""
    directory.mkdir(parents=True)
    files = {
        "model.keras": os.urandom(size),
        "spec.json": b"{}",
        "preprocessing.json": b"{}",
        "calibration.json": b"{}",
        "metrics.json": json.dumps({"val_loss": 0.5}).encode(),
    }
    for fname, body in files.items():
        with (directory / fname).open("wb") as fh:
            for start in range(0, len(body), 16_384):
                fh.write(body[start : start + 16_384])
                fh.flush()
                if pause_s:
                    time.sleep(pause_s)
    manifest = {
        "format": ARTIFACT_FORMAT,
        "name": name,
        "version": version,
        "created_at": "2024-01-01T00:00:00+00:00",
        "window": 12,
        "features": ["value"],
        "kind": "reconstruct",
        "files": {fname: hashlib.sha256(body).hexdigest() for fname, body in files.items()},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest))
