"""Where window states live between poll batches: Redis in production, memory in evaluations.

The interface is two batch calls, so a poll batch costs two round trips whatever its size:
:meth:`WindowStore.load` (one read script call for the whole batch, decoded with array
operations across the states) and :meth:`WindowStore.save` (one fenced write:
a single Lua script call carrying every state of the batch). A write lands only if it is newer
than what is stored: for the same topic-partition, its last applied offset must be greater than
the stored one (compare-and-set in the script, atomic in Redis 6.2+). So a zombie worker that
lost its partitions cannot overwrite the newer state of the worker that took them over.

Keys are ``<prefix>:w:{<stream>}``: the braces are a Redis Cluster hash tag, so each stream's
key lives in one slot and the store works unchanged on a cluster, where the write is one script
call per slot (in one pipeline) instead of one per batch.

A value at a stream's key that is not a window state (corrupt, written by another program, of
another Redis type) affects only that stream: :meth:`WindowStore.load` returns it as
:class:`Undecodable`, and :meth:`WindowStore.quarantine` moves it, bytes intact, to a
quarantine key ``<prefix>:q:{<stream>}:<time ns>`` (same hash tag, same slot), after which the
stream starts afresh. Keys under our prefix are ours: nothing is ever overwritten, only moved.
Well-formed states of another window shape are not one stream's problem but the model's: loading
them raises :class:`~stream_ae.errors.StateShapeError` (not retriable).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stream_ae.core.state import StreamState
from stream_ae.core.state_codec import (
    HEADER_SIZE,
    OFFSET_POS,
    PARTITION_POS,
    decode_state,
    decode_states,
    encode_states,
)
from stream_ae.errors import StateFormatError, StateShapeError, StoreError
from stream_ae.io.redis import connect_redis, redis_errors

# Fencing compare-and-set over a batch: KEYS are state keys, ARGV[i] the new state of
# KEYS[i]. The script reads the topic, partition and offset of both the stored and the new
# state from their headers (the new state's header holds exactly its topic, partition and
# offset), so a stream costs two arguments, not five. Per key it returns 1 (written), 0 (refused:
# the stored state is at or past this offset of the same topic-partition), -1 (the value there
# is not a window state, or of another Redis type: to quarantine) or the error text of any
# other failure of its GET. Offsets are compared as Lua numbers (doubles): exact below 2**53.
# The batch runs as one script, atomically; the keys of one call must share a Redis Cluster
# slot (the store groups them so).
_FENCED_SET = f"""
local function position(blob)
  local partition = struct.unpack('<i4', blob, {PARTITION_POS + 1})
  local offset = struct.unpack('<i8', blob, {OFFSET_POS + 1})
  local topic_len = struct.unpack('<I2', blob, {HEADER_SIZE - 1})
  return string.sub(blob, {HEADER_SIZE + 1}, {HEADER_SIZE} + topic_len), partition, offset
end
local out = {{}}
for i = 1, #KEYS do
  local cur = redis.pcall('GET', KEYS[i])
  if type(cur) == 'table' then
    if string.find(cur.err, 'WRONGTYPE', 1, true) then out[i] = -1 else out[i] = cur.err end
  elseif cur and (string.sub(cur, 1, 4) ~= 'SAE1' or string.len(cur) < {HEADER_SIZE}) then
    out[i] = -1
  else
    out[i] = 1
    if cur then
      local topic, partition, offset = position(cur)
      local new_topic, new_partition, new_offset = position(ARGV[i])
      if topic == new_topic and partition == new_partition and offset >= new_offset then
        out[i] = 0
      end
    end
    if out[i] == 1 then redis.call('SET', KEYS[i], ARGV[i]) end
  end
end
return out
"""
# What the fence script answers for a value that is not a window state.
_FOREIGN = -1

# A batch read: per key its value, nil if none, or -1 (:data:`_FOREIGN`) for a value of another
# Redis type; any other error fails the call. One script call instead of a pipeline of GETs:
# a few microseconds a key less on the client (one command to pack, one array to parse), and,
# unlike MGET, a hash or list at a key is told apart from a missing one.
_READ = """
local out = {}
for i = 1, #KEYS do
  local v = redis.pcall('GET', KEYS[i])
  if type(v) == 'table' then
    if string.find(v.err, 'WRONGTYPE', 1, true) then out[i] = -1 else return v end
  else
    out[i] = v
  end
end
return out
"""


@dataclass(frozen=True)
class Undecodable:
    """A stored value that is not a window state: its bytes (None for a value of another Redis
    type) and why it cannot be decoded."""

    raw: bytes | None
    reason: str


class WindowStore(Protocol):
    """Batch access to window states; load and save are one round trip each."""

    def load(self, streams: Sequence[str]) -> dict[str, StreamState | Undecodable | None]:
        """The stored state of each stream (None if none, :class:`Undecodable` if the value
        there is not a window state)."""
        ...

    def save(self, states: Mapping[str, StreamState]) -> dict[str, bool]:
        """Write states, fenced; returns per stream whether the write landed. A value there
        that is not a window state is quarantined first."""
        ...

    def quarantine(self, streams: Sequence[str]) -> dict[str, str]:
        """Move the values stored for ``streams`` to quarantine keys, intact; returns the
        quarantine key of each stream that had a value."""
        ...

    def delete(self, streams: Iterable[str]) -> None: ...

    def close(self) -> None: ...


# RENAME in a script: Redis Cluster clients refuse a pipelined RENAME even within one slot, and
# both keys share the stream's hash tag, so the script never crosses slots.
_QUARANTINE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
"""


def quarantine_key(prefix: str, stream: str) -> str:
    """Where a stream's undecodable value is moved: same hash tag, so the same cluster slot."""
    return f"{prefix}:q:{{{stream}}}:{time.time_ns()}"


def _is_state(blob: bytes) -> bool:
    """Whether the fence can read ``blob`` as a state (the same test as the Lua script)."""
    return blob[:4] == b"SAE1" and len(blob) >= HEADER_SIZE


def _fenced_newer(stored: bytes, new: StreamState) -> bool:
    """The same rule as the Lua script, reading the same header fields, for the in-memory
    store."""
    (partition,) = struct.unpack_from("<i", stored, PARTITION_POS)
    (offset,) = struct.unpack_from("<q", stored, OFFSET_POS)
    (topic_len,) = struct.unpack_from("<H", stored, HEADER_SIZE - 2)
    topic = stored[HEADER_SIZE : HEADER_SIZE + topic_len]
    return not (topic == new.topic.encode() and partition == new.partition and offset >= new.offset)


def decode_blobs(
    blobs: Sequence[bytes | None], window: int, features: int
) -> list[StreamState | Undecodable | None]:
    """The stored values of a batch of streams as states (None where none is stored), decoded
    together (:func:`~stream_ae.core.state_codec.decode_states`); when one of them is not a
    state, each is decoded alone, so that only that stream gets :class:`Undecodable`.
    Well-formed states of another shape raise :class:`~stream_ae.errors.StateShapeError`."""
    present = [blob for blob in blobs if blob is not None]
    try:
        states: list[StreamState | Undecodable] = list(decode_states(present, window, features))
    except StateShapeError:
        raise
    except StateFormatError:
        states = [_decode_one(blob, window, features) for blob in present]
    decoded = iter(states)
    return [None if blob is None else next(decoded) for blob in blobs]


def _decode_one(blob: bytes, window: int, features: int) -> StreamState | Undecodable:
    try:
        return decode_state(blob, window, features)
    except StateShapeError:
        raise
    except StateFormatError as exc:
        return Undecodable(blob, str(exc))


class InMemoryWindowStore:
    """A dict of encoded states with the same semantics as Redis (encoding and fencing
    included, so the contract tests cover the binary format too)."""

    def __init__(self, window: int, features: int) -> None:
        self.window, self.features = window, features
        self._data: dict[str, bytes] = {}
        self.quarantined: dict[str, bytes] = {}  # quarantine key -> the value moved there
        self.round_trips = 0

    def load(self, streams: Sequence[str]) -> dict[str, StreamState | Undecodable | None]:
        self.round_trips += bool(streams)  # counted like Redis: an empty batch costs nothing
        blobs = [self._data.get(s) for s in streams]
        return dict(zip(streams, decode_blobs(blobs, self.window, self.features), strict=True))

    def save(self, states: Mapping[str, StreamState]) -> dict[str, bool]:
        self.round_trips += bool(states)
        landed: dict[str, bool] = {}
        blobs = dict(zip(states, encode_states(list(states.values())), strict=True))
        for stream, state in states.items():
            blob = self._data.get(stream)
            if blob is not None and not _is_state(blob):
                self.quarantine([stream])
                blob = None
            ok = blob is None or _fenced_newer(blob, state)
            if ok:
                self._data[stream] = blobs[stream]
            landed[stream] = ok
        return landed

    def quarantine(self, streams: Sequence[str]) -> dict[str, str]:
        moved: dict[str, str] = {}
        for stream in streams:
            if stream in self._data:
                moved[stream] = quarantine_key("mem", stream)
                self.quarantined[moved[stream]] = self._data.pop(stream)
        return moved

    def delete(self, streams: Iterable[str]) -> None:
        for stream in streams:
            self._data.pop(stream, None)

    def raw(self, stream: str) -> bytes | None:
        return self._data.get(stream)

    def close(self) -> None:
        pass


class RedisWindowStore:
    """Window states in Redis, one binary string per stream."""

    def __init__(self, client: Any, window: int, features: int, prefix: str = "sae") -> None:
        self.client = client
        self.window, self.features, self.prefix = window, features, prefix
        self._shas: dict[str, str] = {}
        for script in (_READ, _FENCED_SET):
            self._load_script(script)
        self.round_trips = 0

    @classmethod
    def from_settings(cls, settings: Any, window: int, features: int) -> RedisWindowStore:
        return cls(connect_redis(settings), window, features, settings.redis_key_prefix)

    def key(self, stream: str) -> str:
        return f"{self.prefix}:w:{{{stream}}}"

    def load(self, streams: Sequence[str]) -> dict[str, StreamState | Undecodable | None]:
        if not streams:
            return {}
        keys = [self.key(stream) for stream in streams]
        blobs: list[Any] = [None] * len(keys)
        groups = self._slot_groups(keys)
        for rows, reply in zip(groups, self._scripts(_READ, groups, keys), strict=True):
            if isinstance(reply, Exception):
                raise StoreError(f"read of {len(rows)} states failed: {reply}")
            for i, blob in zip(rows, reply, strict=True):
                blobs[i] = blob
        # A list/hash/... at our key (_FOREIGN): not a state, and not readable as bytes.
        foreign = Undecodable(None, "a value of another Redis type (WRONGTYPE)")
        readable = [i for i, blob in enumerate(blobs) if not isinstance(blob, int)]
        out: list[StreamState | Undecodable | None] = [foreign] * len(blobs)
        decoded = decode_blobs([blobs[i] for i in readable], self.window, self.features)
        for i, state in zip(readable, decoded, strict=True):
            out[i] = state
        return dict(zip(streams, out, strict=True))

    def quarantine(self, streams: Sequence[str]) -> dict[str, str]:
        if not streams:
            return {}
        targets = {stream: quarantine_key(self.prefix, stream) for stream in streams}
        pipe = self.client.pipeline(transaction=False)
        for stream, target in targets.items():
            pipe.execute_command("EVAL", _QUARANTINE_LUA, 2, self.key(stream), target)
        results = self._execute(pipe, raise_on_error=False)
        moved: dict[str, str] = {}
        for (stream, target), result in zip(targets.items(), results, strict=True):
            if result == 0:
                continue  # gone meanwhile: nothing to keep
            if isinstance(result, Exception):
                raise StoreError(f"quarantine of {self.key(stream)} failed: {result}")
            moved[stream] = target
        return moved

    def quarantine_keys(self, stream: str) -> list[str]:
        """The quarantine keys of a stream (a SCAN: for operators and tests, not the hot path)."""
        pattern = _glob_escape(f"{self.prefix}:q:{{{stream}}}:") + "*"
        return sorted(k.decode() for k in self.client.scan_iter(match=pattern, count=1000))

    def save(self, states: Mapping[str, StreamState]) -> dict[str, bool]:
        if not states:
            return {}
        streams = list(states)
        blobs = encode_states(list(states.values()))  # the whole batch's in one pass
        keys = [self.key(stream) for stream in streams]
        # One script call for the whole batch; on a cluster, one per slot (the keys of a
        # script must share a slot), all in one pipeline.
        groups = self._slot_groups(keys)
        replies = self._scripts(_FENCED_SET, groups, keys, blobs)
        results: list[Any] = [None] * len(streams)
        for rows, reply in zip(groups, replies, strict=True):
            if isinstance(reply, Exception):
                raise StoreError(f"fenced write of {len(rows)} states failed: {reply}")
            for i, result in zip(rows, reply, strict=True):
                results[i] = result
        foreign = []
        for stream, result in zip(streams, results, strict=True):
            if result == _FOREIGN:
                foreign.append(stream)  # written there since our load: move it aside
            elif not isinstance(result, int):
                text = result.decode() if isinstance(result, bytes) else result
                raise StoreError(f"fenced write of {self.key(stream)} failed: {text}")
        landed = {stream: r == 1 for stream, r in zip(streams, results, strict=True)}
        if foreign:
            self.quarantine(foreign)
            landed.update(self.save({stream: states[stream] for stream in foreign}))
        return landed

    def _load_script(self, script: str) -> str:
        with redis_errors("loading a store script"):
            self._shas[script] = sha = self.client.script_load(script)
        return sha

    def _scripts(
        self,
        script: str,
        groups: Sequence[Sequence[int]],
        keys: Sequence[str],
        args: Sequence[bytes] | None = None,
    ) -> list[Any]:
        """One call of ``script`` per group of positions into ``keys`` (and ``args``), all in
        one pipeline; the replies, errors included. The groups whose call found the script
        cache flushed (Redis restarted) are sent once more after loading it again: the read
        is pure, and a fenced write that landed the first time is refused the second, harmlessly."""
        import redis

        replies: list[Any] = [None] * len(groups)
        todo = list(range(len(groups)))
        for attempt in range(2):
            sha = self._shas[script] if attempt == 0 else self._load_script(script)
            pipe = self.client.pipeline(transaction=False)
            for g in todo:
                rows = groups[g]
                own_args = [args[i] for i in rows] if args is not None else []
                pipe.evalsha(sha, len(rows), *[keys[i] for i in rows], *own_args)
            for g, reply in zip(todo, self._execute(pipe, raise_on_error=False), strict=True):
                replies[g] = reply
            todo = [g for g in todo if isinstance(replies[g], redis.exceptions.NoScriptError)]
            if not todo:
                break
        return replies

    def _slot_groups(self, keys: Sequence[str]) -> list[list[int]]:
        """The positions of ``keys`` grouped so that each group's keys may share one command:
        all of them on a single server, those of one hash slot on a Redis Cluster."""
        from redis.cluster import RedisCluster

        if not isinstance(self.client, RedisCluster):
            return [list(range(len(keys)))]
        slots: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            slots.setdefault(self.client.keyslot(key), []).append(i)
        return list(slots.values())

    def delete(self, streams: Iterable[str]) -> None:
        keys = [self.key(s) for s in streams]
        if keys:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:  # one DEL per key: keys of different slots cannot share a command
                pipe.delete(key)
            self._execute(pipe)

    def _execute(self, pipe: Any, raise_on_error: bool = True) -> list[Any]:
        import redis

        self.round_trips += 1
        try:
            return list(pipe.execute(raise_on_error=raise_on_error))
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreError(f"Redis unavailable: {exc}") from exc

    def close(self) -> None:
        self.client.close()


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
