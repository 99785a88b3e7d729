"""Failed API authentications, counted per client address in a fixed window.

An address that has failed `AES_AUTH_FAILURE_RATE` times ("30/min") in its
window is refused with 429 until the window ends, before any credential it
sends is checked: a guess from it learns nothing, right or wrong. The window
opens at the address's first failure. Counts live in the Django cache (Redis),
so every web process shares them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import cache
from rest_framework import exceptions
from rest_framework.throttling import BaseThrottle

KEY = "auth-failures"
PERIOD_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """Return (failures, window seconds) of a rate written like DRF's, "30/min".

    settings.py checks AES_AUTH_FAILURE_RATE's form itself, at start-up.
    """
    count, _, period = rate.partition("/")
    seconds = PERIOD_SECONDS.get(period[:1])
    if not count.isdigit() or int(count) < 1 or seconds is None:
        raise ValueError(f"a rate reads N/s, N/min, N/hour or N/day, got {rate!r}")
    return int(count), seconds


def client_ident(request) -> str:
    """Return the client's address as DRF's throttles see it (REST_FRAMEWORK["NUM_PROXIES"]).

    Also axes' AXES_CLIENT_IP_CALLABLE, so the admin login and the API agree.
    """
    return BaseThrottle().get_ident(request)


def seconds_locked(ident: str) -> int | None:
    """Return the seconds left in the window of an address over its budget, or None."""
    limit, window = parse_rate(settings.AES_AUTH_FAILURE_RATE)
    found = cache.get_many([_key("count", ident), _key("start", ident)])
    started = found.get(_key("start", ident))
    if found.get(_key("count", ident), 0) < limit or started is None:
        return None
    return max(1, math.ceil(started + window - time.time()))


def record_failure(ident: str) -> int:
    """Count one failed authentication from `ident`; return its failures in the window."""
    _, window = parse_rate(settings.AES_AUTH_FAILURE_RATE)
    # Both keys expire with the window; `add` leaves an open window as it is.
    cache.add(_key("count", ident), 0, timeout=window)
    cache.add(_key("start", ident), time.time(), timeout=window)
    try:
        return cache.incr(_key("count", ident))
    except ValueError:  # the window closed between add and incr
        cache.set(_key("count", ident), 1, timeout=window)
        return 1


@contextmanager
def guarded(request) -> Iterator[None]:
    """Refuse a locked-out address unheard; count a credential that fails inside as one failure.

    Raises `Throttled` (429 with Retry-After) before the block runs when the
    address is over its budget. A credential that succeeds is not counted.
    """
    ident = client_ident(request)
    wait = seconds_locked(ident)
    if wait is not None:
        raise exceptions.Throttled(wait=wait)
    try:
        yield
    except exceptions.AuthenticationFailed:
        record_failure(ident)
        raise


def _key(part: str, ident: str) -> str:
    return f"{KEY}:{part}:{ident}"
