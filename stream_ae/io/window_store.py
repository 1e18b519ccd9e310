"""Where window states live between poll batches: Redis in production, memory in evaluations.

The interface is two batch calls, so a poll batch costs two round trips whatever its size:
:meth:`WindowStore.load` (one pipelined read) and :meth:`WindowStore.save` (one pipelined,
fenced write). A write lands only if it is newer than what is stored: for the same
topic-partition, its last applied offset must be greater than the stored one (compare-and-set
in a Lua script, atomic in Redis 6.2+). So a zombie worker that lost its partitions cannot
overwrite the newer state of the worker that took them over.

Keys are ``<prefix>:w:{<stream>}``: the braces are a Redis Cluster hash tag, so each stream's
key lives in one slot and the store works unchanged on a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from stream_ae.core.windowing import (
    HEADER_SIZE,
    OFFSET_POS,
    PARTITION_POS,
    StreamState,
    decode_state,
    encode_state,
)
from stream_ae.errors import StateFormatError, StoreError
from stream_ae.io.redis import connect_redis, redis_errors

# Fencing compare-and-set. Offsets are compared as Lua numbers (doubles): exact below 2**53.
_FENCED_SET = f"""
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.sub(cur, 1, 4) ~= 'SAE1' or string.len(cur) < {HEADER_SIZE} then
    return redis.error_reply('STATEFORMAT stored value is not a stream-ae window state')
  end
  local partition = struct.unpack('<i4', cur, {PARTITION_POS + 1})
  local offset = struct.unpack('<i8', cur, {OFFSET_POS + 1})
  local topic_len = struct.unpack('<I2', cur, {HEADER_SIZE - 1})
  local topic = string.sub(cur, {HEADER_SIZE + 1}, {HEADER_SIZE} + topic_len)
  if topic == ARGV[2] and partition == tonumber(ARGV[3]) and offset >= tonumber(ARGV[4]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class WindowStore(Protocol):
    """Batch access to window states; both calls are one round trip."""

    def load(self, streams: Sequence[str]) -> dict[str, StreamState | None]:
        """The stored state of each stream (None if none)."""
        ...

    def save(self, states: Mapping[str, StreamState]) -> dict[str, bool]:
        """Write states, fenced; returns per stream whether the write landed."""
        ...

    def delete(self, streams: Iterable[str]) -> None: ...

    def close(self) -> None: ...


def _fenced_newer(stored: StreamState, new: StreamState) -> bool:
    """The same rule as the Lua script, for the in-memory store."""
    return not (
        stored.topic == new.topic
        and stored.partition == new.partition
        and stored.offset >= new.offset
    )


class InMemoryWindowStore:
    """A dict of encoded states with the same semantics as Redis (encoding and fencing
    included, so the contract tests cover the binary format too)."""

    def __init__(self, window: int, features: int) -> None:
        self.window, self.features = window, features
        self._data: dict[str, bytes] = {}
        self.round_trips = 0

    def load(self, streams: Sequence[str]) -> dict[str, StreamState | None]:
        self.round_trips += bool(streams)  # counted like Redis: an empty batch costs nothing
        return {
            s: decode_state(self._data[s], self.window, self.features) if s in self._data else None
            for s in streams
        }

    def save(self, states: Mapping[str, StreamState]) -> dict[str, bool]:
        self.round_trips += bool(states)
        landed: dict[str, bool] = {}
        for stream, state in states.items():
            blob = self._data.get(stream)
            ok = blob is None or _fenced_newer(decode_state(blob), state)
            if ok:
                self._data[stream] = encode_state(state)
            landed[stream] = ok
        return landed

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
        with redis_errors("loading the fenced-write script"):
            self._sha = client.script_load(_FENCED_SET)
        self.round_trips = 0

    @classmethod
    def from_settings(cls, settings: Any, window: int, features: int) -> RedisWindowStore:
        return cls(connect_redis(settings), window, features, settings.redis_key_prefix)

    def key(self, stream: str) -> str:
        return f"{self.prefix}:w:{{{stream}}}"

    def load(self, streams: Sequence[str]) -> dict[str, StreamState | None]:
        if not streams:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for stream in streams:
            pipe.get(self.key(stream))
        blobs = self._execute(pipe, raise_on_error=False)
        out: dict[str, StreamState | None] = {}
        for stream, blob in zip(streams, blobs, strict=True):
            if isinstance(blob, Exception):
                # WRONGTYPE: another application's list/hash/... sits at our key.
                error = StateFormatError if "WRONGTYPE" in str(blob) else StoreError
                raise error(f"read of {self.key(stream)} failed: {blob}")
            out[stream] = None if blob is None else decode_state(blob, self.window, self.features)
        return out

    def save(self, states: Mapping[str, StreamState]) -> dict[str, bool]:
        if not states:
            return {}
        import redis

        streams = list(states)
        args = [
            (encode_state(s), s.topic, str(s.partition), str(s.offset)) for s in states.values()
        ]
        pipe = self.client.pipeline(transaction=False)
        for stream, argv in zip(streams, args, strict=True):
            pipe.evalsha(self._sha, 1, self.key(stream), *argv)
        results = self._execute(pipe, raise_on_error=False)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
            # The script cache was flushed (Redis restarted): load it and write again; rows
            # that landed the first time are refused by the fence, harmlessly.
            with redis_errors("loading the fenced-write script"):
                self._sha = self.client.script_load(_FENCED_SET)
            return self.save(states)
        for stream, result in zip(streams, results, strict=True):
            if isinstance(result, Exception):
                if "STATEFORMAT" in str(result) or "WRONGTYPE" in str(result):
                    raise StateFormatError(f"{self.key(stream)}: {result}")
                raise StoreError(f"fenced write of {self.key(stream)} failed: {result}")
        return {stream: bool(r) for stream, r in zip(streams, results, strict=True)}

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
