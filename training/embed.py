"""The encoder as an embedding model: export it alone, embed windows with it.

The exported ``.keras`` file is :func:`stream_ae.model.network.encoder_of` the artifact's model: it
maps *scaled* windows (N, window - horizon, F) to latent codes (N, D). Scaling stays with the
artifact (``preprocessing.json``), so :func:`embed_series` scales with it first; a user of the
bare encoder must apply the same scaling.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stream_ae.core.records import ms_to_iso
from stream_ae.model.artifacts import Artifact
from stream_ae.model.network import encoder_of, split_window
from training.data import Series
from training.model_runner import predict_verbosity
from training.windows import Windows, all_windows, pad_side, scale_windows


def export_encoder(artifact: Artifact, path: Path) -> Path:
    """Save the encoder of ``artifact`` as a ``.keras`` file (loadable with safe_mode)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"the encoder is saved as .keras, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder_of(artifact.model).save(path)
    return path


def embed_windows(artifact: Artifact, windows: Windows, batch_size: int = 1024) -> np.ndarray:
    """Latent codes (N, D) of raw windows, scaled as the model was trained."""
    side = pad_side(artifact.spec)
    scaled = scale_windows(artifact.scaling, windows, side)
    inputs, _ = split_window(artifact.spec, scaled)
    encoder = encoder_of(artifact.model)
    return np.asarray(
        encoder.predict(inputs, batch_size=batch_size, verbose=predict_verbosity(len(inputs))),
        dtype=np.float32,
    )


def embed_series(
    artifact: Artifact, series: Sequence[Series], stride: int = 1
) -> tuple[Windows, np.ndarray]:
    """Every window of ``series`` (built as the worker builds them) and its code."""
    spec = artifact.spec
    windows = all_windows(
        list(series), spec.window, stride, pad=pad_side(spec) if spec.masking else None
    )
    return windows, embed_windows(artifact, windows)


def write_embeddings(path: Path, windows: Windows, codes: np.ndarray) -> Path:
    """Codes with their window's stream and times: ``.npz`` (arrays) or ``.csv`` (rows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez_compressed(
            path,
            codes=codes,
            streams=np.asarray(windows.streams),
            start_ts_ms=windows.start_ts_ms,
            end_ts_ms=windows.end_ts_ms,
        )
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                ["stream", "start_ts", "end_ts", *[f"code_{i}" for i in range(codes.shape[1])]]
            )
            for i, row in enumerate(codes):
                writer.writerow(
                    [
                        windows.streams[i],
                        ms_to_iso(int(windows.start_ts_ms[i])),
                        ms_to_iso(int(windows.end_ts_ms[i])),
                        *[f"{v:.6g}" for v in row],
                    ]
                )
    else:
        raise ValueError(f"embeddings are written as .npz or .csv, got {path.name}")
    return path
