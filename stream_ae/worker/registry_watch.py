"""The threads that follow the registry for a :class:`~stream_ae.worker.swap.ModelManager`.

- the **watch thread** re-reads the registry's champion pointer every
  ``model_poll_interval_s``, or at once when asked (a notification, a swap). Before a load it
  draws a small random delay (jitter: a group notified together does not read the registry all
  at once). It also refreshes the heartbeat, prepares the spare model once and frees retired
  models: everything slow happens here, never on the worker thread;
- the **notify thread** listens on the Redis channel
  :data:`~stream_ae.model.registry.MODELS_CHANNEL`, where the registry announces champion
  changes, and wakes the watch thread. Polling stays on as the fallback, so a missed message
  (Redis away, a worker restarting) only delays a swap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from stream_ae.logs import fields
from stream_ae.model.registry import MODELS_CHANNEL

log = logging.getLogger(__name__)


class Follower(Protocol):
    """What the watch thread drives (the model manager)."""

    def refresh(self, jitter_s: float = 0.0) -> str: ...

    def write_heartbeat(self) -> bool: ...

    def make_spare(self) -> None: ...

    def release_retired(self) -> int: ...


class RegistryWatcher:
    """The watch and notify threads of one worker.

    Arguments:
        follower: what is refreshed, beaten and cleaned up.
        model_name: notifications of other models are ignored.
        redis: returns the Redis client of the notifications.
        stop: set when the worker stops (shared with the follower's waits).
        follow_registry: False for a single artifact: only the heartbeat is kept.
        poll_interval_s, heartbeat_interval_s: the two cadences of the watch thread.
        reload_jitter_s: the largest random delay before a load.
        retry_backoff_max_s: the longest wait between two subscriptions to the channel.
        prepare_spare: call ``follower.make_spare()`` once, after the first heartbeat.
        seed: seed of the jitter's random generator.
    """

    def __init__(
        self,
        follower: Follower,
        *,
        model_name: str,
        redis: Callable[[], Any],
        stop: threading.Event,
        follow_registry: bool,
        poll_interval_s: float,
        heartbeat_interval_s: float,
        reload_jitter_s: float,
        retry_backoff_max_s: float,
        prepare_spare: bool,
        seed: int | None = None,
    ) -> None:
        self.follower = follower
        self.model_name = model_name
        self._redis = redis
        self._stop = stop
        self.follow_registry = follow_registry
        self.poll_interval_s = poll_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.reload_jitter_s = reload_jitter_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.prepare_spare = prepare_spare and follow_registry
        self._rng = random.Random(seed)
        self._wakeup = threading.Event()
        self._check_requested = threading.Event()
        self._beat_requested = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the watch thread and, with a registry to follow, the notify thread."""
        if self._threads:
            return
        targets = [("model-watch", self._watch_loop)]
        if self.follow_registry:
            targets.append(("model-notify", self._notify_loop))
        for name, target in targets:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both threads (the stop event is set) and wait for them."""
        self._stop.set()
        self._wakeup.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def request_check(self) -> None:
        """Re-read the champion pointer now (what a notification does)."""
        self._check_requested.set()
        self._wakeup.set()

    def request_beat(self) -> None:
        """Refresh the heartbeat now (after a swap or a refusal)."""
        self._beat_requested.set()
        self._wakeup.set()

    def _watch_loop(self) -> None:
        spare_pending = self.prepare_spare
        next_poll = time.monotonic() + self.poll_interval_s
        next_beat = 0.0
        while not self._stop.is_set():
            try:
                if self._beat_requested.is_set() or time.monotonic() >= next_beat:
                    self._beat_requested.clear()
                    self.follower.write_heartbeat()
                    next_beat = time.monotonic() + self.heartbeat_interval_s
                if spare_pending:  # after the first heartbeat: status lists the worker at once
                    spare_pending = False
                    self.follower.make_spare()
                self.follower.release_retired()
                if self._check_requested.is_set() or time.monotonic() >= next_poll:
                    self._check_requested.clear()
                    next_poll = time.monotonic() + self.poll_interval_s
                    if self.follow_registry:
                        jitter_s = self._rng.uniform(0.0, self.reload_jitter_s)
                        self.follower.refresh(jitter_s=jitter_s)
            except Exception:  # never let the watcher die: the worker would stop following
                log.exception("model watcher error")
                next_poll = time.monotonic() + self.poll_interval_s
            timeout = min(next_poll, next_beat) - time.monotonic()
            self._wakeup.wait(max(0.0, timeout))
            self._wakeup.clear()

    def _notify_loop(self) -> None:
        backoff_s = 0.5
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._redis().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(MODELS_CHANNEL)
                backoff_s = 0.5
                # A message may have been missed while unsubscribed: look now.
                self.request_check()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self.on_notification(message.get("data"))
            except Exception as exc:  # Redis away: polling covers it meanwhile
                log.warning(
                    "model notifications unavailable, polling only",
                    extra=fields(error=str(exc), retry_in_s=backoff_s),
                )
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, self.retry_backoff_max_s)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()

    def on_notification(self, data: Any) -> None:
        """Check the pointer now if ``data`` announces a change of this worker's model."""
        try:
            body = json.loads(data)
            name = body.get("name") if isinstance(body, dict) else None
        except (ValueError, TypeError):
            log.warning("ignored a malformed model notification", extra=fields(data=str(data)))
            return
        if name == self.model_name:
            log.info("model notification", extra=fields(**body))
            self.request_check()
