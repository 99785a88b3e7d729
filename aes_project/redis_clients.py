"""Redis clients for the service: one shared client, and blocking ones.

redis-py pools are fork-safe (a child opens its own connections), so one
module-level client per process is reused by every job a worker runs.
"""

from __future__ import annotations

import asyncio
import functools
import weakref

import redis
import redis.asyncio
from django.conf import settings
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from protocol import keys


def _retry() -> Retry:
    # Rides out a Redis restart or failover of a few seconds: a command that
    # meets a dropped connection reconnects and is sent again.
    return Retry(
        ExponentialWithJitterBackoff(base=0.1, cap=2.0),
        retries=8,
        supported_errors=(redis.ConnectionError, redis.TimeoutError),
    )


def _connect(socket_timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        retry=_retry(),
        # No CLIENT SETINFO on every new connection: each forked work-horse
        # opens its own, so it would cost two commands per run.
        lib_name=None,
        lib_version=None,
    )


@functools.cache
def shared() -> redis.Redis:
    """Return the process-wide client for short commands."""
    return _connect(socket_timeout=keys.SOCKET_MARGIN_SECONDS * 2)


def blocking(block_seconds: float = keys.BLOCK_SECONDS) -> redis.Redis:
    """Return a new client whose socket outlives a wait of `block_seconds`."""
    return _connect(socket_timeout=block_seconds + keys.SOCKET_MARGIN_SECONDS)


@functools.cache
def shared_blocking() -> redis.Redis:
    """Return the process-wide client for waits of at most BLOCK_SECONDS."""
    return blocking()


# One asyncio client per event loop: a redis.asyncio connection belongs to the
# loop that opened it (a web process has one; each test client its own).
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
    weakref.WeakKeyDictionary()
)


def async_blocking(block_seconds: float) -> redis.asyncio.Redis:
    """Return this event loop's client for waits of at most `block_seconds`.

    Its pool has no bound: each client of a blocking read holds a connection
    while it waits, and a bound would make the next one fail, not wait.
    """
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = redis.asyncio.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=block_seconds + keys.SOCKET_MARGIN_SECONDS,
            socket_connect_timeout=5,
            socket_keepalive=True,
            health_check_interval=30,
            lib_name=None,
            lib_version=None,
        )
    return client
