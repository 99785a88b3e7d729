"""Redis clients for the service: one shared client, and blocking ones.

redis-py pools are fork-safe (a child opens its own connections), so one
module-level client per process is reused by every job a worker runs.
"""

from __future__ import annotations

import functools

import redis
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
