"""The state-loss guard (stream_ae.io.state_guard) on a real redis-server: partition markers,
stream registries, and the server check of eviction policy and persistence."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import redis

from stream_ae.core.windowing import StreamState, append, new_state
from stream_ae.io.state_guard import StateGuard, check_server, marker_key, next_offsets
from stream_ae.io.window_store import RedisWindowStore
from tests.support.redis_servers import RedisServer

TOPIC = "metrics"


def state(partition: int, offset: int) -> StreamState:
    offsets = np.arange(offset - 2, offset + 1)
    return append(
        new_state(4, 1),
        np.ones((3, 1), np.float32),
        1_700_000_000_000 + offsets,
        offsets,
        topic=TOPIC,
        partition=partition,
        stride=1,
    ).state


@pytest.fixture
def guarded(redis_client: redis.Redis) -> tuple[RedisWindowStore, StateGuard]:
    store = RedisWindowStore(redis_client, 4, 1, prefix="guard")
    return store, StateGuard.of_store(store, "worker-1")


def write_batch(
    store: RedisWindowStore, guard: StateGuard, states: dict[str, StreamState]
) -> dict[tuple[str, int], int]:
    """Write states and their markers as the worker does; returns the offsets to commit."""
    store.save(states)
    offsets = {(s.topic, s.partition): s.offset + 1 for s in states.values()}
    guard.record(offsets, states)
    return offsets


def test_a_healthy_store_loses_nothing(guarded: tuple[RedisWindowStore, StateGuard]) -> None:
    store, guard = guarded
    committed = write_batch(store, guard, {"a": state(0, 10), "b": state(1, 20)})
    assert guard.check(committed) == []
    # A crash between the marker and the commit leaves the marker ahead: still healthy.
    assert guard.check({(TOPIC, 0): 5, (TOPIC, 1): 21}) == []


def test_partitions_new_to_the_group_are_not_checked(
    guarded: tuple[RedisWindowStore, StateGuard],
) -> None:
    _, guard = guarded
    assert guard.check({(TOPIC, 0): None, (TOPIC, 1): None}) == []


def test_an_empty_store_with_committed_offsets_is_a_loss(
    guarded: tuple[RedisWindowStore, StateGuard], redis_client: redis.Redis
) -> None:
    store, guard = guarded
    committed = write_batch(store, guard, {"a": state(0, 10), "b": state(1, 20)})
    redis_client.flushdb()
    lost = guard.check(committed)
    assert [(x.partition, x.reason, x.replay_from) for x in lost] == [
        (0, "no_marker", None),
        (1, "no_marker", None),
    ]


def test_a_marker_behind_the_commit_is_a_stale_snapshot(
    guarded: tuple[RedisWindowStore, StateGuard],
) -> None:
    store, guard = guarded
    write_batch(store, guard, {"a": state(0, 10)})
    (loss,) = guard.check({(TOPIC, 0): 30})
    assert (loss.reason, loss.marker, loss.replay_from, loss.committed) == ("stale", 11, 11, 30)


def test_an_evicted_state_is_named(
    guarded: tuple[RedisWindowStore, StateGuard], redis_client: redis.Redis
) -> None:
    store, guard = guarded
    committed = write_batch(store, guard, {s: state(0, 10) for s in ("a", "b", "c")})
    redis_client.delete(store.key("b"))
    (loss,) = guard.check(committed)
    assert (loss.reason, loss.missing_streams, loss.replay_from) == ("evicted", ("b",), None)
    assert "1 states gone: b" in loss.describe()
    redis_client.delete(f"guard:s:{{{TOPIC}:0}}")  # the registry too
    (loss,) = guard.check(committed)
    assert (loss.reason, loss.missing_streams, loss.replay_from) == ("evicted", (), None)


def test_the_marker_only_moves_forward(
    guarded: tuple[RedisWindowStore, StateGuard], redis_client: redis.Redis
) -> None:
    store, guard = guarded
    write_batch(store, guard, {"a": state(0, 10)})
    zombie = StateGuard.of_store(store, "zombie")
    zombie.record({(TOPIC, 0): 5}, {})
    zombie.record({(TOPIC, 0): 6}, {})
    key = marker_key("guard", TOPIC, 0)
    assert redis_client.zrevrange(key, 0, 0, withscores=True) == [(b"worker-1", 11.0)]
    assert guard.check({(TOPIC, 0): 11}) == []


def test_a_marker_keeps_its_recent_writers_only(
    guarded: tuple[RedisWindowStore, StateGuard], redis_client: redis.Redis
) -> None:
    store, _ = guarded
    for restart in range(20):
        StateGuard.of_store(store, f"worker-{restart}").record({(TOPIC, 0): 100 + restart}, {})
    key = marker_key("guard", TOPIC, 0)
    assert redis_client.zcard(key) == 8
    assert redis_client.zrevrange(key, 0, 0, withscores=True) == [(b"worker-19", 119.0)]


def test_next_offsets_of_a_batch() -> None:
    from types import SimpleNamespace as Record

    records = [Record(topic="t", partition=p, offset=o) for p, o in [(0, 4), (1, 9), (0, 7)]]
    assert next_offsets(records) == {("t", 0): 8, ("t", 1): 10}


def test_server_check_names_eviction_and_missing_persistence(
    redis_factory: Callable[..., RedisServer],
) -> None:
    assert check_server(redis_factory().client()) == []  # AOF on, noeviction
    lru = redis_factory(maxmemory_policy="allkeys-lru", appendonly="no", save='"3600 1"')
    problems = check_server(lru.client())
    assert len(problems) == 2
    assert "maxmemory-policy is allkeys-lru" in problems[0]
    assert "AOF is off (RDB snapshots only" in problems[1]
    bare = redis_factory(appendonly="no", maxmemory_policy="volatile-lru")
    assert check_server(bare.client()) == ["neither AOF nor RDB is on: a restart loses every state"]
