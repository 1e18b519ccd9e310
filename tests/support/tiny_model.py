"""The worker tests' model and streams: a tiny LSTM autoencoder and the synthetic fleet.

Fixture ``tiny_model`` (session): a :class:`TinyModel`, an LSTM autoencoder (window 16,
hidden 16) trained for a few epochs on the history of :func:`fleet`'s streams, written as an
artifact once per session. The streams' live continuation is what the tests send
(:func:`live_messages` of :func:`fleet` or :func:`long_fleet`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream_ae.core.records import encode_event
from stream_ae.core.synthetic import SyntheticStream, make_stream
from stream_ae.model.inference import Scorer

TINY_WINDOW = 16
TINY_HIDDEN = 16
# The model learns each stream's normal shape from its history; the tests send what follows.
HISTORY_STEPS = 500
LIVE_STEPS = 300
STREAMS = 6
ANOMALOUS_STREAMS = 3  # the first three carry two injected anomalies each
# Anomalies start this many steps into the live part, so that the first windows of the live
# part (scored with a freshly filled ring) are all normal.
ANOMALY_MARGIN = 40
# Small buckets keep the warm-up short; a poll batch never holds more windows than events.
DEFAULT_BUCKETS = (16, 128, 512)


def fleet(live_steps: int = LIVE_STEPS) -> list[SyntheticStream]:
    """The streams of every test: ``HISTORY_STEPS`` of training history, then ``live_steps``.

    The history does not depend on ``live_steps`` (the generator draws its noise in time
    order), so the tiny model fits a fleet of any live length; the anomalies do move with it.
    """
    return [
        make_stream(
            f"host-{i}",
            HISTORY_STEPS + live_steps,
            anomalies=2 if i < ANOMALOUS_STREAMS else 0,
            min_anomaly_step=HISTORY_STEPS + ANOMALY_MARGIN,
            seed=100 + i,
        )
        for i in range(STREAMS)
    ]


def long_fleet(live_steps: int) -> list[SyntheticStream]:
    """:func:`fleet` with its anomalies, continued without anomalies to ``live_steps`` live
    steps: for tests that keep a stream flowing for as long as they need (the anomalies come
    early whatever the length)."""
    streams = []
    for i, short in enumerate(fleet()):
        base = make_stream(short.name, HISTORY_STEPS + live_steps, seed=100 + i)
        values = base.values.copy()
        values[: len(short.values)] = short.values
        streams.append(SyntheticStream(short.name, values, base.ts_ms, short.anomalies))
    return streams


def live_messages(
    streams: Iterable[SyntheticStream], start: int = HISTORY_STEPS
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of every stream's events from step ``start`` on, interleaved in time."""
    from stream_ae.io.producing import interleave

    for stream, ts_ms, values in interleave(list(streams), start=start):
        yield stream.encode(), encode_event(stream, ts_ms, values[0])


@dataclass(frozen=True)
class TinyModel:
    """The session's model artifact and the shape of its windows."""

    path: Path
    window: int
    features: int


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Train the tiny autoencoder once per session (about 15-25 s on 2 busy cores)."""
    from stream_ae.model.network import ModelSpec
    from training.fit import FitConfig, train_artifact

    streams = fleet()
    path = train_artifact(
        [(s.name, s.values[:HISTORY_STEPS]) for s in streams],
        ModelSpec(window=TINY_WINDOW, hidden=TINY_HIDDEN),
        tmp_path_factory.mktemp("tiny-model") / "artifact",
        name="tiny",
        config=FitConfig(epochs=4, train_stride=2, seed=0, verbose=0),
    )
    return TinyModel(path=path, window=TINY_WINDOW, features=1)


@functools.cache
def load_tiny_scorer(model: TinyModel) -> Scorer:
    """An in-process scorer of the tiny model (the worker's buckets, warmed up), loaded once."""
    from stream_ae.model.artifacts import load_artifact

    scorer = Scorer(load_artifact(model.path), DEFAULT_BUCKETS)
    scorer.warm_up()
    return scorer
