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

from stream_ae.errors import ConfigError, StoreError
from stream_ae.logs import mask_urls


def connect_redis(settings: Any) -> Any:
    """A Redis client from the settings, checked with a PING: a single server, or a Redis
    Cluster (``redis_cluster``, or a ``redis+cluster://`` / ``rediss+cluster://`` URL) found
    through the URL's node; TLS with a ``rediss://`` URL and the ``redis_ssl_*`` files.

    The password comes from the secret, never the URL we log. A refused login or a TLS
    setting without a TLS URL raises :class:`ConfigError` (one line, no password): retrying
    cannot help. An unreachable server raises the client's connection error (retried).
    """
    import redis
    from redis.cluster import RedisCluster

    url: str = settings.redis_url
    cluster = bool(getattr(settings, "redis_cluster", False))
    scheme, sep, rest = url.partition("://")
    if scheme.endswith("+cluster"):
        url, cluster = scheme.removesuffix("+cluster") + sep + rest, True
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    options: dict[str, Any] = {
        "username": settings.redis_username,
        "password": password,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
    }
    tls_files = {
        "ssl_ca_certs": getattr(settings, "redis_ssl_ca_file", None),
        "ssl_certfile": getattr(settings, "redis_ssl_cert_file", None),
        "ssl_keyfile": getattr(settings, "redis_ssl_key_file", None),
    }
    if any(tls_files.values()) and not url.startswith("rediss://"):
        raise ConfigError("redis_ssl_* files are set but redis_url is not a rediss:// URL")
    options.update({name: str(path) for name, path in tls_files.items() if path})
    client: Any
    try:
        if cluster:
            client = RedisCluster.from_url(url, **options)
        else:
            client = redis.Redis.from_url(url, health_check_interval=30, **options)
        client.ping()
    except (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError) as exc:
        who = f" of user {settings.redis_username!r}" if settings.redis_username else ""
        raise ConfigError(f"Redis refused the login{who}: {exc}") from None
    except redis.exceptions.RedisClusterException as exc:
        if "invalid username-password" in str(exc) or "WRONGPASS" in str(exc):
            who = f" of user {settings.redis_username!r}" if settings.redis_username else ""
            raise ConfigError(f"Redis Cluster refused the login{who}") from None
        raise StoreError(f"Redis Cluster unavailable: {exc}") from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        # After the login errors (subclasses of ConnectionError): the server is away, for now.
        raise StoreError(f"Redis unavailable at {mask_urls(url)}: {exc}") from exc
    return client


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
