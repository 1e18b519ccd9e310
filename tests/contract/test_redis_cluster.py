"""The window store on a real 3-master Redis Cluster (issue 14): the store's contract suite
(every test of tests/contract/test_window_store.py that takes ``backend``, re-run here with a
cluster backend), keys on the slots of their hash tags, a Lua fence that never crosses slots,
the state guard's keys in one slot, and one end-to-end worker run (slow).

To run the contract over the cluster from test_window_store.py itself, add ``"redis-cluster"``
to its ``backend`` params and ``yield cluster_backend(request.getfixturevalue("cluster_client"))``
for it (with ``from tests.contract.test_redis_cluster import cluster_client``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.cluster import RedisCluster

from stream_ae.io import window_store
from stream_ae.io.state_guard import StateGuard, marker_key, registry_key
from stream_ae.io.window_store import RedisWindowStore, connect_redis
from stream_ae.settings import Settings
from tests.contract import test_window_store as contract
from tests.support.redis_servers import RedisClusterServers

# The contract: every backend-parametrised test of the store's suite, collected here too.
CONTRACT_TESTS = [
    name
    for name, test in vars(contract).items()
    if name.startswith("test_") and "backend" in inspect.signature(test).parameters
]
globals().update({name: getattr(contract, name) for name in CONTRACT_TESTS})


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterServers) -> Iterator[RedisCluster]:
    """A cluster client on flushed masters (replies are bytes)."""
    client = redis_cluster.client()
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    try:
        yield client
    finally:
        client.close()


def cluster_backend(client: RedisCluster) -> contract.Backend:
    """The contract's view of a RedisWindowStore on a cluster."""
    store = RedisWindowStore(client, contract.WINDOW, contract.FEATURES, prefix="test")

    def put_raw(stream: str, blob: bytes) -> None:
        client.set(store.key(stream), blob)

    def get_raw(stream: str) -> bytes | None:
        value = client.get(store.key(stream))
        assert value is None or isinstance(value, bytes)
        return value

    def quarantined(stream: str) -> list[bytes]:
        return [client.get(key) or b"" for key in store.quarantine_keys(stream)]

    return contract.Backend(store, put_raw, get_raw, quarantined)


@pytest.fixture
def backend(cluster_client: RedisCluster) -> contract.Backend:
    """Overrides the suite's backend: the contract tests above run on the cluster."""
    return cluster_backend(cluster_client)


def test_the_contract_suite_is_collected_here() -> None:
    assert len(CONTRACT_TESTS) >= 10, CONTRACT_TESTS


def test_keys_land_on_the_slot_of_their_hash_tag_across_all_masters(
    cluster_client: RedisCluster,
) -> None:
    store = RedisWindowStore(cluster_client, contract.WINDOW, contract.FEATURES, prefix="sae")
    streams = [f"host-{i}/cpu" for i in range(60)]
    assert all(store.save({s: contract.state_at(10) for s in streams}).values())
    owners = set()
    for stream in streams:
        key = store.key(stream)
        slot = cluster_client.keyslot(key)
        assert slot == cluster_client.keyslot(stream)  # the tag alone decides the slot
        node = cluster_client.get_node_from_key(key)
        direct = cluster_client.get_redis_connection(node)
        assert direct.execute_command("CLUSTER", "KEYSLOT", key) == slot
        assert direct.exists(key) == 1  # stored on the master that owns the slot
        owners.add(node.name)
    assert len(owners) == 3  # the streams spread over every master


def test_the_fence_touches_only_its_keys_of_one_slot(cluster_client: RedisCluster) -> None:
    """The fence script is given exactly the keys it writes, all of one slot (redis-py routes
    EVALSHA by them and refuses keys of several slots, and a script touching another slot's key
    would fail on a cluster): every fenced write lands and refuses on the key's own master."""
    store = RedisWindowStore(cluster_client, contract.WINDOW, contract.FEATURES, prefix="sae")
    streams = [f"s{i}" for i in range(40)]
    assert all(store.save({s: contract.state_at(10) for s in streams}).values())
    assert not any(store.save({s: contract.state_at(9) for s in streams}).values())
    # Every key the script reads or writes is KEYS[i], one of those it is given.
    for script in (window_store._FENCED_SET, window_store._READ):
        calls = re.findall(r"redis\.p?call\('(\w+)', ([^,)]+)", script)
        assert calls and all(key == "KEYS[i]" for _, key in calls), calls


def test_streams_of_one_slot_share_one_script_call(cluster_client: RedisCluster) -> None:
    """On a cluster the batch is one script call per slot: streams whose keys hash to the same
    slot travel together, the others alone, and the fence holds for each."""
    store = RedisWindowStore(cluster_client, contract.WINDOW, contract.FEATURES, prefix="sae")
    by_slot: dict[int, list[str]] = {}
    for name in (f"host-{i}/cpu" for i in range(200)):  # host-1/cpu and host-30/cpu collide
        by_slot.setdefault(cluster_client.keyslot(store.key(name)), []).append(name)
    shared = next(names for names in by_slot.values() if len(names) >= 2)[:2]
    alone = [names[0] for names in by_slot.values() if shared[0] not in names][:3]
    store.save({shared[0]: contract.state_at(50)})

    def evalsha_calls() -> int:
        stats = cluster_client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        return sum(int(node.get("cmdstat_evalsha", {}).get("calls", 0)) for node in stats.values())

    before = evalsha_calls()
    states = {shared[0]: contract.state_at(40), shared[1]: contract.state_at(40)}
    states.update({name: contract.state_at(40) for name in alone})
    landed = store.save(states)
    assert evalsha_calls() - before == 1 + len(alone)
    assert landed == {shared[0]: False, shared[1]: True, **{name: True for name in alone}}


def test_the_state_guard_on_a_cluster(cluster_client: RedisCluster) -> None:
    store = RedisWindowStore(cluster_client, contract.WINDOW, contract.FEATURES, prefix="sae")
    guard = StateGuard.of_store(store, "w1")
    for partition in range(6):
        marker, registry = marker_key("sae", "m", partition), registry_key("sae", "m", partition)
        assert cluster_client.keyslot(marker) == cluster_client.keyslot(registry)
    states = {f"s{i}": contract.state_at(10, partition=i % 6, topic="m") for i in range(30)}
    store.save(states)
    committed = {("m", p): 11 for p in range(6)}
    guard.record(committed, states)
    assert guard.check(committed) == []
    cluster_client.delete(store.key("s7"))
    (loss,) = guard.check(committed)
    assert (loss.partition, loss.reason, loss.missing_streams) == (1, "evicted", ("s7",))


@pytest.mark.parametrize("how", ["url", "setting"])
def test_connect_redis_reaches_the_cluster(redis_cluster: RedisClusterServers, how: str) -> None:
    node = redis_cluster.nodes[1]
    settings = (
        Settings(redis_url=f"redis+cluster://127.0.0.1:{node.port}/0")
        if how == "url"
        else Settings(redis_url=node.url, redis_cluster=True)
    )
    client = connect_redis(settings)
    try:
        assert isinstance(client, RedisCluster)
        assert len(client.get_primaries()) == 3
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.integration
def test_a_worker_on_the_cluster_ends_with_the_oracle_states(
    redis_cluster: RedisClusterServers,
    cluster_client: RedisCluster,
    broker: Any,
    topic_factory: Callable[..., str],
    tiny_model: Any,
) -> None:
    from tests.support.kafka_topics import produce
    from tests.support.outcomes import expected_outcome
    from tests.support.tiny_model import fleet, live_messages, load_tiny_scorer
    from tests.support.waiting import wait_until
    from tests.support.worker_process import running_worker, settings_of, worker_config

    topics = {
        "input_topic": topic_factory(2, prefix="in"),
        "alerts_topic": topic_factory(1, prefix="alerts"),
        "dlq_topic": topic_factory(1, prefix="dlq"),
    }
    settings = settings_of(
        worker_config(
            bootstrap_servers=broker.bootstrap_servers,
            redis_url=f"redis+cluster://127.0.0.1:{redis_cluster.nodes[0].port}/0",
            model=tiny_model,
            **topics,
        )
    )
    sent = produce(broker.bootstrap_servers, topics["input_topic"], live_messages(fleet()))
    with running_worker(settings) as worker:
        wait_until(lambda: worker.totals.applied >= len(sent), 120, "every event applied")
    expected = expected_outcome(sent, settings, load_tiny_scorer(tiny_model))
    store = RedisWindowStore(cluster_client, tiny_model.window, tiny_model.features)
    store.prefix = settings.redis_key_prefix
    blobs = {s: cluster_client.get(store.key(s)) for s in expected.blobs}
    assert blobs == expected.blobs
