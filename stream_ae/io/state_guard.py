"""Noticing that Redis lost window states: partition markers and a server check.

A missing window state reads as a new stream, and committed offsets are never revisited, so a
Redis that restarts empty, comes back from an old snapshot or evicts keys would lose events
without a word. Two guards make every such loss visible:

**Partition markers.** After each batch's states are written and before its offsets are
committed, :meth:`StateGuard.record` writes, per topic-partition, the next offset to read
(``<prefix>:p:{<topic>:<partition>}``, a sorted set: the next offset as each recent writer's
score, written with ``ZADD GT`` so it only moves forward and a zombie cannot lower it; the
highest score is the marker, its member says which worker wrote it) and adds the batch's
streams to that partition's stream registry (``<prefix>:s:{<topic>:<partition>}``, a set).
Both keys share one hash tag, so they sit in one Redis Cluster slot. Because the marker is
written before the commit, a healthy store always holds ``marker >= committed``. At
assignment, :meth:`StateGuard.check` compares:

- no marker although the group has committed offsets: the store restarted empty (or was
  flushed, or the marker was evicted) -> replay from the log's start;
- ``marker < committed``: the store came back from a snapshot older than the commits ->
  replay from the marker, where the snapshot's states stop;
- registered streams whose state key is gone, or the registry itself gone (it always holds
  an empty-string sentinel; stream ids are never empty): keys were evicted -> replay from the
  log's start (the lost streams' whole history is needed; the fence makes the replay a no-op for
  the states that survived).

**Server check.** :func:`check_server` reads the eviction policy and persistence with
``INFO`` (and ``CONFIG GET save`` where allowed): ``allkeys-*`` policies evict our states, and a
server with neither AOF nor RDB loses everything on restart.

The marker needs one extra pipelined round trip per batch (the state write's pipeline belongs
to the store; merging the two is a change of its interface); the check reads a few keys per
assigned partition. A store upgraded from a version without markers has committed offsets but
no markers: the first start reports it once (``no_marker``) and, under ``rewind``, replays the
retained log, which the fence makes cheap for the states that exist.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from stream_ae.core.windowing import StreamState
from stream_ae.errors import StoreError

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
LossReason = Literal["no_marker", "stale", "evicted"]
LOSS_REASONS: tuple[LossReason, ...] = ("no_marker", "stale", "evicted")

# Always in a registry: stream ids are never empty, so a registry without it was evicted.
_REGISTRY_SENTINEL = ""
# Writers remembered per marker (worker ids change with every restart: keep the recent ones).
_MARKER_WRITERS = 8

# Eviction policies that may remove keys without a TTL, that is our states.
_EVICTING_POLICIES = ("allkeys-lru", "allkeys-lfu", "allkeys-random")


@dataclass(frozen=True)
class LostPartition:
    """A partition whose stored states are older than its committed offset.

    ``replay_from`` is where a rebuild must start reading (None: the log's start);
    ``missing_streams`` names registered streams whose state is gone (evictions).

    >>> LostPartition("metrics", 3, "stale", committed=120, marker=100, replay_from=100).describe()
    'metrics:3: stale (committed 120, marker 100)'
    """

    topic: str
    partition: int
    reason: LossReason
    committed: int | None
    marker: int | None
    replay_from: int | None
    missing_streams: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for the log."""
        text = (
            f"{self.topic}:{self.partition}: {self.reason} "
            f"(committed {self.committed}, marker {self.marker}"
        )
        if self.missing_streams:
            shown = ", ".join(self.missing_streams[:5])
            more = len(self.missing_streams) - 5
            text += f", {len(self.missing_streams)} states gone: {shown}"
            text += f" and {more} more" if more > 0 else ""
        return text + ")"


def marker_key(prefix: str, topic: str, partition: int) -> str:
    """The partition's marker: braces make ``topic:partition`` the Redis Cluster hash tag."""
    return f"{prefix}:p:{{{topic}:{partition}}}"


def registry_key(prefix: str, topic: str, partition: int) -> str:
    """The set of streams ever written from the partition (same hash tag as its marker)."""
    return f"{prefix}:s:{{{topic}:{partition}}}"


class StateGuard:
    """Partition markers and stream registries next to a :class:`RedisWindowStore`.

    ``client`` is the store's Redis client, ``prefix`` its key prefix and ``state_key`` its
    ``key(stream)``, so the guard and the store agree on where a stream's state lives.
    """

    def __init__(self, client: Any, prefix: str, state_key: Any, worker_id: str) -> None:
        self.client = client
        self.prefix = prefix
        self.state_key = state_key
        self.worker_id = worker_id

    @classmethod
    def of_store(cls, store: Any, worker_id: str) -> StateGuard:
        """The guard of a ``RedisWindowStore`` (its client, prefix and key scheme)."""
        return cls(store.client, store.prefix, store.key, worker_id)

    def record(
        self, next_offsets: Mapping[TopicPartition, int], states: Mapping[str, StreamState]
    ) -> None:
        """Note, in one round trip, that every state up to ``next_offsets`` is written.

        Call after the batch's states are written and before its offsets are committed.
        ``states`` are the states just written: their streams join their partition's registry.
        """
        if not next_offsets:
            return
        streams: dict[TopicPartition, list[str]] = {}
        for stream, state in states.items():
            streams.setdefault((state.topic, state.partition), []).append(stream)
        pipe = self.client.pipeline(transaction=False)
        for (topic, partition), offset in next_offsets.items():
            key = marker_key(self.prefix, topic, partition)
            # GT: only ever raised (offsets are exact as scores below 2**53).
            pipe.zadd(key, {self.worker_id: offset}, gt=True)
            pipe.zremrangebyrank(key, 0, -_MARKER_WRITERS - 1)
            names = streams.get((topic, partition), [])
            pipe.sadd(registry_key(self.prefix, topic, partition), _REGISTRY_SENTINEL, *names)
        errors = [r for r in _execute(pipe, "partition markers") if isinstance(r, Exception)]
        if errors:
            raise StoreError(f"partition marker write failed: {errors[0]}")

    def check(self, committed: Mapping[TopicPartition, int | None]) -> list[LostPartition]:
        """The partitions whose states are older than their ``committed`` offsets.

        Partitions without a committed offset are new to the group: nothing can be lost.
        """
        known = [(tp, offset) for tp, offset in committed.items() if offset is not None]
        if not known:
            return []
        pipe = self.client.pipeline(transaction=False)
        for (topic, partition), _ in known:
            pipe.zrevrange(marker_key(self.prefix, topic, partition), 0, 0, withscores=True)
            pipe.smembers(registry_key(self.prefix, topic, partition))
        replies = _execute(pipe, "partition markers", raise_on_error=True)
        lost: list[LostPartition] = []
        evicted_checks: list[tuple[TopicPartition, int | None, int, list[str]]] = []
        for i, ((topic, partition), offset) in enumerate(known):
            raw_marker, members = replies[2 * i], replies[2 * i + 1]
            marker = int(raw_marker[0][1]) if raw_marker else None
            if marker is None:
                lost.append(LostPartition(topic, partition, "no_marker", offset, None, None))
            elif marker < offset:
                lost.append(LostPartition(topic, partition, "stale", offset, marker, marker))
            elif not members:  # the registry itself was evicted: which streams are gone?
                lost.append(LostPartition(topic, partition, "evicted", offset, marker, None))
            else:
                names = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
                names.remove(_REGISTRY_SENTINEL)
                evicted_checks.append(((topic, partition), offset, marker, names))
        lost.extend(self._evicted(evicted_checks))
        return lost

    def _evicted(
        self, checks: list[tuple[TopicPartition, int | None, int, list[str]]]
    ) -> list[LostPartition]:
        """Registered streams whose state key no longer exists."""
        if not any(names for *_, names in checks):
            return []
        pipe = self.client.pipeline(transaction=False)
        for *_, names in checks:
            for name in names:
                pipe.exists(self.state_key(name))
        exists = iter(_execute(pipe, "state keys", raise_on_error=True))
        lost = []
        for (topic, partition), offset, marker, names in checks:
            missing = tuple(name for name in names if not next(exists))
            if missing:
                lost.append(
                    LostPartition(topic, partition, "evicted", offset, marker, None, missing)
                )
        return lost


def check_server(client: Any) -> list[str]:
    """What in the Redis server's configuration can lose window states (empty: nothing).

    Reads ``INFO memory`` and ``INFO persistence`` (on every node of a cluster) and, when AOF is
    off, ``CONFIG GET save``. A check the ACL forbids is reported as such, not as a problem.
    """
    import redis

    problems: list[str] = []
    try:
        memory = _per_node(client, client.info("memory", **_all_nodes(client)))
        persistence = _per_node(client, client.info("persistence", **_all_nodes(client)))
    except redis.exceptions.NoPermissionError:
        return ["cannot check the eviction policy and persistence: INFO is not permitted"]
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise StoreError(f"Redis unavailable: server check: {exc}") from exc
    for node, info in memory.items():
        policy = str(info.get("maxmemory_policy", ""))
        if policy in _EVICTING_POLICIES:
            problems.append(
                f"{node}maxmemory-policy is {policy}: Redis may evict window states "
                "(use noeviction, or a volatile-* policy: our keys have no TTL)"
            )
    for node, info in persistence.items():
        if int(info.get("aof_enabled", 0)):
            continue
        try:
            saves = _per_node(client, client.config_get("save", **_all_nodes(client)))
            save = saves.get(node, next(iter(saves.values()))).get("save", "")
        except redis.exceptions.NoPermissionError:
            problems.append(f"{node}AOF is off and CONFIG GET save is not permitted")
            continue
        if save:
            problems.append(
                f"{node}AOF is off (RDB snapshots only: a restart loses the writes since "
                "the last snapshot)"
            )
        else:
            problems.append(f"{node}neither AOF nor RDB is on: a restart loses every state")
    return problems


def _all_nodes(client: Any) -> dict[str, Any]:
    """Keyword arguments sending a command to every node of a cluster (none otherwise)."""
    all_nodes = getattr(client, "ALL_NODES", None)
    return {"target_nodes": all_nodes} if all_nodes is not None else {}


def _per_node(client: Any, reply: Any) -> dict[str, dict[str, Any]]:
    """A reply of a single server, or of every node of a cluster, by node ("" when single)."""
    if _all_nodes(client):
        return {f"{node}: ": dict(value) for node, value in reply.items()}
    return {"": dict(reply)}


def _execute(pipe: Any, what: str, raise_on_error: bool = False) -> list[Any]:
    import redis

    try:
        return list(pipe.execute(raise_on_error=raise_on_error))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise StoreError(f"Redis unavailable: {what}: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        raise StoreError(f"{what}: {exc}") from exc


def next_offsets(records: Iterable[Any]) -> dict[TopicPartition, int]:
    """The next offset to read of every partition in ``records`` (last offset + 1)."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        out[tp] = max(out.get(tp, 0), r.offset + 1)
    return out
