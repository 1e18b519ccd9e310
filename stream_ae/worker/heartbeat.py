"""The worker's heartbeat: a :class:`~stream_ae.model.registry.Heartbeat` kept in Redis with a
TTL, so that ``stream-ae model status`` lists the live workers and the model each one runs; a
stopped (or killed) worker's key expires on its own."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from stream_ae.logs import fields
from stream_ae.model.registry import Heartbeat, heartbeat_key

log = logging.getLogger(__name__)


class HeartbeatWriter:
    """Writes one worker's heartbeat key.

    Arguments:
        redis: returns the Redis client (connected lazily by the caller).
        prefix: the worker's ``redis_key_prefix``.
        worker_id: the worker's id (the last part of the key).
        interval_s: how often the caller refreshes it; the TTL is three intervals, so that
            one late heartbeat (during a slow model load) does not make a worker vanish.
    """

    def __init__(
        self, redis: Callable[[], Any], prefix: str, worker_id: str, interval_s: float
    ) -> None:
        self._redis = redis
        self.key = heartbeat_key(prefix, worker_id)
        self.interval_s = interval_s
        self.ttl_s = max(1, round(interval_s * 3))
        self._ok = True  # Redis away is logged once, not at every beat

    def write(self, beat: Heartbeat) -> bool:
        """Set the key with its TTL; False (logged once) when Redis is away."""
        try:
            self._redis().set(self.key, beat.encode(), ex=self.ttl_s)
        except Exception as exc:  # the client raises many types; a beat is never fatal
            if self._ok:
                log.warning("heartbeat not written", extra=fields(key=self.key, error=str(exc)))
            self._ok = False
            return False
        self._ok = True
        return True

    def remove(self) -> None:
        """Delete the key (a clean stop); if Redis is away, the key expires on its own."""
        try:
            self._redis().delete(self.key)
        except Exception as exc:
            log.debug("heartbeat not removed: %s", exc)
