"""One contract for every window store (stream_ae.io.window_store), run over the in-memory store and
over Redis (a real redis-server from tests/conftest.py): round trips, fencing, deletes, batch
cost, hash-tagged keys, and refusing to clobber what is not ours."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from stream_ae.core.state import StreamState, new_state
from stream_ae.core.state_codec import encode_state
from stream_ae.core.windowing import append
from stream_ae.errors import StateFormatError, StateShapeError, StoreError
from stream_ae.io.window_store import (
    InMemoryWindowStore,
    RedisWindowStore,
    Undecodable,
    WindowStore,
)

WINDOW, FEATURES = 4, 2
TOPIC = "metrics"

RawWriter = Callable[[str, bytes], None]


class Backend:
    """A store under test plus what the contract needs to reach behind it."""

    def __init__(
        self,
        store: Any,
        put_raw: RawWriter,
        get_raw: Callable[[str], bytes | None],
        quarantined: Callable[[str], list[bytes]],
    ):
        self.store = store
        self.put_raw = put_raw
        self.get_raw = get_raw
        self.quarantined = quarantined  # the values moved to a stream's quarantine keys


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        memory = InMemoryWindowStore(WINDOW, FEATURES)

        def put_memory(stream: str, blob: bytes) -> None:
            memory._data[stream] = blob  # a foreign writer, as Redis allows

        def quarantined_memory(stream: str) -> list[bytes]:
            return [v for k, v in memory.quarantined.items() if f":{{{stream}}}:" in k]

        yield Backend(memory, put_memory, memory.raw, quarantined_memory)
        memory.close()
    else:
        client: redis.Redis = request.getfixturevalue("redis_client")
        store = RedisWindowStore(client, WINDOW, FEATURES, prefix="test")

        def put_redis(stream: str, blob: bytes) -> None:
            client.set(store.key(stream), blob)

        def get_redis(stream: str) -> bytes | None:
            value = client.get(store.key(stream))
            assert value is None or isinstance(value, bytes)
            return value

        def quarantined_redis(stream: str) -> list[bytes]:
            return [client.get(key) or b"" for key in store.quarantine_keys(stream)]

        yield Backend(store, put_redis, get_redis, quarantined_redis)


def state_at(
    offset: int, partition: int = 0, topic: str = TOPIC, events: int = 6, level: float = 0.0
) -> StreamState:
    """A state whose last applied event is ``offset`` on ``topic``/``partition``."""
    offsets = np.arange(offset - events + 1, offset + 1)
    values = level + np.arange(events * FEATURES, dtype=np.float32).reshape(events, FEATURES)
    return append(
        new_state(WINDOW, FEATURES),
        values,
        1_700_000_000_000 + 1000 * offsets,
        offsets,
        topic=topic,
        partition=partition,
        stride=1,
    ).state


def stored(backend: Backend, stream: str) -> StreamState | None:
    return backend.store.load([stream])[stream]


# --- the contract -----------------------------------------------------------------------------


def test_both_stores_implement_the_protocol(backend: Backend) -> None:
    """Every method of the protocol, with the protocol's parameters (names and order)."""
    store: WindowStore = backend.store  # checked by mypy, too
    members = [name for name in vars(WindowStore) if not name.startswith("_")]
    assert {"load", "save", "quarantine", "delete", "close"} <= set(members)
    for name in members:
        expected = list(inspect.signature(getattr(WindowStore, name)).parameters)[1:]
        actual = list(inspect.signature(getattr(store, name)).parameters)
        assert actual == expected, (type(store).__name__, name, actual, expected)


def test_unknown_streams_load_as_none(backend: Backend) -> None:
    assert backend.store.load(["never-seen", "nor-this"]) == {
        "never-seen": None,
        "nor-this": None,
    }


def test_a_stream_named_twice_loads_as_once(backend: Backend) -> None:
    backend.store.save({"kept": state_at(10), "other": state_at(20)})
    loaded = backend.store.load(["kept", "kept", "never-seen", "other"])
    assert list(loaded) == ["kept", "never-seen", "other"] and loaded["never-seen"] is None
    for stream in ("kept", "other"):
        alone = backend.store.load([stream])[stream]
        got = loaded[stream]
        assert isinstance(alone, StreamState) and isinstance(got, StreamState)
        assert alone.same_as(got)


def test_empty_batches_cost_nothing(backend: Backend) -> None:
    before = backend.store.round_trips
    assert backend.store.load([]) == {}
    assert backend.store.save({}) == {}
    assert backend.store.round_trips == before


@pytest.mark.parametrize("stream", ["s1", "host-7/cpu:user", "ünïcode stream", "a" * 256])
def test_save_load_round_trip(backend: Backend, stream: str) -> None:
    state = state_at(100)
    assert backend.store.save({stream: state}) == {stream: True}
    loaded = stored(backend, stream)
    assert loaded is not None and loaded.same_as(state)
    assert backend.get_raw(stream) == encode_state(state)  # the compact binary form, as is


def test_round_trip_of_a_partly_filled_window_and_alert_state(backend: Backend) -> None:
    from stream_ae.core.alerting import AlertState

    young = state_at(2, events=2)  # fewer events than the window
    young.alert = AlertState(open=True, above_run=0, below_run=2, cooldown_left=0, open_offset=1)
    backend.store.save({"young": young})
    loaded = stored(backend, "young")
    assert loaded is not None and loaded.same_as(young) and loaded.count == 2


def test_the_post_processing_state_round_trips_and_is_fenced_like_the_rest(
    backend: Backend,
) -> None:
    from stream_ae.core.postprocess import PostParams, new_post_state

    state = state_at(20)
    state.post = new_post_state(PostParams()) + np.linspace(-1.0, 1.0, PostParams().state_size)
    assert backend.store.save({"s": state}) == {"s": True}
    loaded = stored(backend, "s")
    assert isinstance(loaded, StreamState) and loaded.same_as(state)
    assert loaded.post.tobytes() == state.post.tobytes()
    older = state_at(19)
    older.post = np.zeros(3)
    assert backend.store.save({"s": older}) == {"s": False}  # the fence reads the same header
    assert backend.get_raw("s") == encode_state(state)


def test_fencing_refuses_older_or_equal_offsets_on_the_same_partition(backend: Backend) -> None:
    store = backend.store
    assert store.save({"s": state_at(100)}) == {"s": True}
    raw = backend.get_raw("s")

    assert store.save({"s": state_at(99, level=5.0)}) == {"s": False}  # a zombie's older state
    assert store.save({"s": state_at(100, level=5.0)}) == {"s": False}  # equal: already there
    assert backend.get_raw("s") == raw  # untouched

    assert store.save({"s": state_at(101, level=5.0)}) == {"s": True}
    loaded = stored(backend, "s")
    assert loaded is not None and loaded.offset == 101 and loaded.values[0, 0] >= 5.0


def test_fencing_accepts_another_partition_or_topic(backend: Backend) -> None:
    """A stream that moved partitions starts a new offset sequence: lower offsets land."""
    store = backend.store
    store.save({"s": state_at(1000, partition=0)})
    assert store.save({"s": state_at(5, partition=1)}) == {"s": True}
    loaded = stored(backend, "s")
    assert loaded is not None and loaded.position() == (TOPIC, 1, 5)
    assert store.save({"s": state_at(3, partition=1, topic="metrics-v2")}) == {"s": True}
    loaded = stored(backend, "s")
    assert loaded is not None and loaded.position() == ("metrics-v2", 1, 3)


def test_fencing_is_per_stream_within_one_batch(backend: Backend) -> None:
    store = backend.store
    store.save({"a": state_at(50), "b": state_at(50)})
    assert store.save({"a": state_at(40), "b": state_at(60), "c": state_at(1)}) == {
        "a": False,
        "b": True,
        "c": True,
    }
    loaded = store.load(["a", "b", "c"])
    assert [loaded[s].offset for s in "abc"] == [50, 60, 1]


def test_a_batch_of_fresh_and_stale_states_lands_exactly_the_fresh_ones(backend: Backend) -> None:
    """One save of many streams, each fenced on its own: older, equal, newer, on another
    partition, new streams, and a value that is not a state, all in one batch."""
    store = backend.store
    store.save({f"s{i}": state_at(100) for i in range(60)})
    backend.put_raw("s59", b"not ours")
    offsets = [90, 100, 101, 150] * 15  # per stream: older, equal, newer, newer
    batch = {f"s{i}": state_at(offset, level=7.0) for i, offset in enumerate(offsets)}
    batch["s3"] = state_at(5, partition=1, level=7.0)  # another partition: a new sequence
    batch.update({f"new{i}": state_at(1, level=7.0) for i in range(5)})
    expected = {stream: state.offset > 100 for stream, state in batch.items()}
    expected.update({"s3": True, "s59": True, **{f"new{i}": True for i in range(5)}})

    assert store.save(batch) == expected
    assert backend.quarantined("s59") == [b"not ours"]
    loaded = store.load(list(batch))
    for stream, state in batch.items():
        kept = loaded[stream]
        assert isinstance(kept, StreamState)
        assert kept.same_as(state) == expected[stream], stream
        if not expected[stream]:
            assert kept.offset == 100 and kept.values[0, 0] < 7.0  # the stored one, untouched


def test_delete(backend: Backend) -> None:
    store = backend.store
    store.save({"gone": state_at(10), "kept": state_at(10)})
    store.delete(["gone", "never-existed"])
    store.delete([])
    assert store.load(["gone", "kept"])["gone"] is None
    assert stored(backend, "kept") is not None
    # After a delete, any offset lands again (a reset stream).
    assert store.save({"gone": state_at(3)}) == {"gone": True}


def test_a_batch_of_many_streams_is_one_round_trip_each_way(backend: Backend) -> None:
    store = backend.store
    states = {f"stream-{i}": state_at(100 + i) for i in range(300)}
    before = store.round_trips
    assert all(store.save(states).values())
    assert store.round_trips == before + 1
    loaded = store.load(list(states))
    assert store.round_trips == before + 2
    assert all(loaded[s] is not None and loaded[s].same_as(states[s]) for s in states)


@pytest.mark.parametrize(
    "foreign",
    [
        b'{"owner": "another application"}',
        b"SAE1",  # short: merely starts like ours
        b"SAE1" + bytes(80),  # a header of zeros: a corrupt state
        encode_state(state_at(10))[:-3],  # truncated
        b"",
    ],
    ids=["json", "short", "zeros", "truncated", "empty"],
)
def test_an_undecodable_value_affects_only_its_own_stream(backend: Backend, foreign: bytes) -> None:
    backend.store.save({"fine": state_at(10)})
    backend.put_raw("taken", foreign)
    loaded = backend.store.load(["taken", "fine", "new"])
    assert isinstance(loaded["taken"], Undecodable) and loaded["taken"].raw == foreign
    assert loaded["taken"].reason
    assert isinstance(loaded["fine"], StreamState) and loaded["new"] is None
    # Quarantined: moved aside intact, never overwritten; the stream's key is free again.
    moved = backend.store.quarantine(["taken", "new"])
    assert list(moved) == ["taken"] and ":q:{taken}:" in moved["taken"]
    assert backend.quarantined("taken") == [foreign]
    assert backend.store.load(["taken"]) == {"taken": None}
    assert backend.store.save({"taken": state_at(10)}) == {"taken": True}


def test_a_foreign_value_written_after_the_load_is_quarantined_by_the_save(
    backend: Backend,
) -> None:
    foreign = b'{"owner": "another application"}'
    backend.put_raw("taken", foreign)
    assert backend.store.save({"taken": state_at(10), "other": state_at(3)}) == {
        "taken": True,
        "other": True,
    }
    assert backend.quarantined("taken") == [foreign]
    loaded = stored(backend, "taken")
    assert loaded is not None and loaded.same_as(state_at(10))


def test_a_state_of_another_window_shape_is_refused_on_load(backend: Backend) -> None:
    """Not one stream's problem: the model does not fit the stored states. Not retriable."""
    other = append(
        new_state(WINDOW * 2, FEATURES),
        np.zeros((3, FEATURES)),
        np.arange(3),
        np.arange(3),
        topic=TOPIC,
        partition=0,
        stride=1,
    ).state
    backend.put_raw("reshaped", encode_state(other))
    with pytest.raises(StateShapeError, match="model expects") as info:
        backend.store.load(["reshaped"])
    assert not info.value.retriable
    assert backend.get_raw("reshaped") == encode_state(other)  # nothing moved


def test_state_format_errors_are_not_retriable() -> None:
    assert StoreError.retriable and not StateFormatError.retriable
    assert issubclass(StateFormatError, StoreError)
    assert issubclass(StateShapeError, StateFormatError) and not StateShapeError.retriable


# --- Redis specifics --------------------------------------------------------------------------


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


class SendCounter:
    """Counts writes of commands to the Redis socket: one per network round trip."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sends = 0
        original = redis.connection.AbstractConnection.send_packed_command

        def counting(connection: Any, command: Any, check_health: bool = True) -> None:
            self.sends += 1
            original(connection, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)


def test_redis_batch_cost_in_commands_and_network_round_trips(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisWindowStore(redis_client, WINDOW, FEATURES, prefix="test")
    states = {f"stream-{i}": state_at(100 + i) for i in range(200)}
    counter = SendCounter(monkeypatch)

    before = command_calls(redis_client)
    sends = counter.sends
    store.save(states)
    save_sends = counter.sends - sends
    between = command_calls(redis_client)
    sends = counter.sends
    store.load(list(states))
    load_sends = counter.sends - sends
    after = command_calls(redis_client)

    # INFO itself shows up in its own counter; everything else is the store's.
    save_cmds = {k: v for k, v in delta(between, before).items() if k != "info"}
    load_cmds = {k: v for k, v in delta(after, between).items() if k != "info"}
    # One script call carries the whole batch each way; its GETs and SETs run inside it.
    assert save_cmds == {"evalsha": 1, "get": 200, "set": 200}
    assert load_cmds == {"evalsha": 1, "get": 200}
    assert save_sends == 1 and load_sends == 1  # one pipelined write to the socket each way


def test_redis_keys_carry_the_stream_as_hash_tag(redis_client: redis.Redis) -> None:
    store = RedisWindowStore(redis_client, WINDOW, FEATURES, prefix="sae-test")
    store.save({"host-1/cpu": state_at(5), "x:y": state_at(5)})
    assert sorted(redis_client.keys("*")) == [b"sae-test:w:{host-1/cpu}", b"sae-test:w:{x:y}"]
    assert store.key("s") == "sae-test:w:{s}"
    # Redis Cluster hashes only what is inside the first {...}: the stream id.
    key = store.key("host-1/cpu")
    assert key[key.index("{") + 1 : key.index("}")] == "host-1/cpu"


def test_redis_prefixes_keep_stores_apart(redis_client: redis.Redis) -> None:
    first = RedisWindowStore(redis_client, WINDOW, FEATURES, prefix="one")
    second = RedisWindowStore(redis_client, WINDOW, FEATURES, prefix="two")
    first.save({"s": state_at(5)})
    assert second.load(["s"]) == {"s": None}


def test_redis_a_zombie_worker_on_another_connection_cannot_overwrite(
    redis_client: redis.Redis, redis_server: Any
) -> None:
    owner = RedisWindowStore(redis_client, WINDOW, FEATURES, prefix="test")
    zombie = RedisWindowStore(redis.Redis.from_url(redis_server.url), WINDOW, FEATURES, "test")
    try:
        owner.save({"s": state_at(200)})
        assert zombie.save({"s": state_at(150)}) == {"s": False}
        loaded = owner.load(["s"])["s"]
        assert loaded is not None and loaded.offset == 200
    finally:
        zombie.close()


def test_redis_script_cache_flush_is_survived(redis_client: redis.Redis) -> None:
    """After a Redis restart the script cache is empty: the store loads the script again."""
    store = RedisWindowStore(redis_client, WINDOW, FEATURES, prefix="test")
    store.save({"s": state_at(10)})
    redis_client.script_flush()
    assert store.save({"s": state_at(11), "t": state_at(3)}) == {"s": True, "t": True}
    redis_client.script_flush()
    assert store.save({"s": state_at(9)}) == {"s": False}  # the fence still holds


def test_redis_a_value_of_another_redis_type_is_quarantined_not_clobbered(
    redis_client: redis.Redis,
) -> None:
    store = RedisWindowStore(redis_client, WINDOW, FEATURES, prefix="test")
    redis_client.rpush(store.key("listy"), b"x")
    loaded = store.load(["listy", "other"])
    assert isinstance(loaded["listy"], Undecodable) and loaded["listy"].raw is None
    assert loaded["other"] is None
    (key,) = store.quarantine(["listy"]).values()
    assert redis_client.lrange(key, 0, -1) == [b"x"]  # intact, under the quarantine key
    assert store.quarantine_keys("listy") == [key]
    # Written there again between load and save: moved aside too, and the state lands.
    redis_client.rpush(store.key("listy"), b"y")
    assert store.save({"listy": state_at(10)}) == {"listy": True}
    assert len(store.quarantine_keys("listy")) == 2


def test_redis_quarantine_keys_share_the_streams_hash_tag(redis_client: redis.Redis) -> None:
    store = RedisWindowStore(redis_client, WINDOW, FEATURES, prefix="test")
    stream = "we*ird?[x]"
    redis_client.set(store.key(stream), b"junk")
    (key,) = store.quarantine([stream]).values()
    assert key[key.index("{") + 1 : key.index("}")] == stream  # same cluster slot
    assert store.quarantine_keys(stream) == [key]
    assert store.quarantine_keys("we") == []  # the glob characters are literal


def test_redis_unavailable_is_a_retriable_store_error(redis_client: redis.Redis) -> None:
    from stream_ae_dev.devstack import find_free_port

    store = RedisWindowStore(redis_client, WINDOW, FEATURES, prefix="test")
    # Nobody listens there; no client-side retries, so the test does not wait out a backoff.
    store.client = redis.Redis(
        port=find_free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(StoreError) as info:
        store.load(["s"])
    assert info.value.retriable
    with pytest.raises(StoreError) as info:
        store.save({"s": state_at(1)})
    assert info.value.retriable
