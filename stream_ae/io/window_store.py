"""Where window states live between poll batches: Redis in production, memory in evaluations.

The interface is two batch calls, so a poll batch costs two round trips whatever its size:
:meth:`WindowStore.load` (one pipelined read) and :meth:`WindowStore.save` (one pipelined,
fenced write). A write lands only if it is newer than what is stored: for the same
topic-partition, its last applied offset must be greater than the stored one (compare-and-set
in a Lua script, atomic in Redis 6.2+). So a zombie worker that lost its partitions cannot
overwrite the newer state of the worker that took them over.

Keys are ``<prefix>:w:{<stream>}``: the braces are a Redis Cluster hash tag, so each stream's
key lives in one slot and the store works unchanged on a cluster.

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
    encode_states,
)
from stream_ae.errors import StateFormatError, StateShapeError, StoreError
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
        return {s: self._decode(self._data.get(s)) for s in streams}

    def _decode(self, blob: bytes | None) -> StreamState | Undecodable | None:
        if blob is None:
            return None
        try:
            return decode_state(blob, self.window, self.features)
        except StateShapeError:
            raise
        except StateFormatError as exc:
            return Undecodable(blob, str(exc))

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
        with redis_errors("loading the fenced-write script"):
            self._sha = client.script_load(_FENCED_SET)
        self.round_trips = 0

    @classmethod
    def from_settings(cls, settings: Any, window: int, features: int) -> RedisWindowStore:
        return cls(connect_redis(settings), window, features, settings.redis_key_prefix)

    def key(self, stream: str) -> str:
        return f"{self.prefix}:w:{{{stream}}}"

    def load(self, streams: Sequence[str]) -> dict[str, StreamState | Undecodable | None]:
        if not streams:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for stream in streams:
            pipe.get(self.key(stream))
        blobs = self._execute(pipe, raise_on_error=False)
        out: dict[str, StreamState | Undecodable | None] = {}
        for stream, blob in zip(streams, blobs, strict=True):
            if isinstance(blob, Exception):
                if "WRONGTYPE" not in str(blob):
                    raise StoreError(f"read of {self.key(stream)} failed: {blob}")
                # A list/hash/... sits at our key: not a state, and not readable as bytes.
                out[stream] = Undecodable(None, f"a value of another Redis type: {blob}")
                continue
            try:
                out[stream] = (
                    None if blob is None else decode_state(blob, self.window, self.features)
                )
            except StateShapeError:
                raise
            except StateFormatError as exc:
                out[stream] = Undecodable(blob, str(exc))
        return out

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
        import redis

        streams = list(states)
        blobs = encode_states(list(states.values()))  # the whole batch's in one pass
        args = [
            (blob, s.topic, str(s.partition), str(s.offset))
            for blob, s in zip(blobs, states.values(), strict=True)
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
        foreign = []
        for stream, result in zip(streams, results, strict=True):
            if isinstance(result, Exception):
                if "STATEFORMAT" in str(result) or "WRONGTYPE" in str(result):
                    foreign.append(stream)  # written there since our load: move it aside
                    continue
                raise StoreError(f"fenced write of {self.key(stream)} failed: {result}")
        landed = {stream: bool(r) for stream, r in zip(streams, results, strict=True)}
        if foreign:
            self.quarantine(foreign)
            landed.update(self.save({stream: states[stream] for stream in foreign}))
        return landed

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
