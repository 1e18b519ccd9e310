"""The Redis connection of the window store and the model-swap notifications.

:func:`redis_errors` turns the client's exceptions into the project's: a connection that
drops or times out is a retriable :class:`~stream_ae.errors.StoreError`; a refused login or a
command the ACL forbids is not (trying again fails the same way).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis

from stream_ae.errors import StoreError


def connect_redis(settings: Any) -> Any:
    """A Redis client from the settings; the password comes from the secret, never the URL
    we log."""
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return redis.Redis.from_url(
        settings.redis_url,
        username=settings.redis_username,
        password=password,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


@contextlib.contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Run a Redis call; its client errors leave as :class:`StoreError`."""
    try:
        yield
    except (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        error = StoreError(f"{what}: {type(exc).__name__}: {exc}")
        error.retriable = False
        raise error from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise StoreError(f"Redis unavailable: {what}: {exc}") from exc
