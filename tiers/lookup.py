"""The one way to read tiers: a small in-process cache over the Tier table.

Every process (consumer, RQ workers, web) keeps the rows for at most
AES_TIER_CACHE_SECONDS, so an admin edit is seen everywhere within a few
seconds without a restart, and a busy worker does not query tiers per run.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings
from django.db.models.signals import post_delete, post_save

from tiers.models import Tier

_lock = threading.Lock()
_cache: tuple[float, dict[str, Tier]] | None = None
# Bumped by clear(): a read that began before an edit must not be cached after it.
_generation = 0


def _rows() -> dict[str, Tier]:
    global _cache
    cached = _cache
    if cached is not None and time.monotonic() - cached[0] <= settings.AES_TIER_CACHE_SECONDS:
        return cached[1]
    # The query runs outside the lock: a thread holding the lock while it
    # waits for a pooled database connection would deadlock with threads
    # that hold connections and wait for the lock (threaded workers).
    generation = _generation
    rows = {tier.name: tier for tier in Tier.objects.order_by("priority")}
    with _lock:
        if generation == _generation:
            _cache = (time.monotonic(), rows)
    return rows


def get_tier(name: str) -> Tier | None:
    """Return the tier called `name`, or None when there is none."""
    return _rows().get(name)


def tiers_by_priority() -> list[Tier]:
    """Return every tier, the one served first first."""
    return list(_rows().values())


def clear() -> None:
    """Forget the cached rows (after an edit in this process, and in tests)."""
    global _cache, _generation
    with _lock:
        _cache = None
        _generation += 1


def connect_signals() -> None:
    post_save.connect(lambda **kwargs: clear(), sender=Tier, weak=False)
    post_delete.connect(lambda **kwargs: clear(), sender=Tier, weak=False)
