"""The one way to read tiers: a small in-process cache over the Tier table.

Every process (consumer, RQ workers, web) keeps the rows for at most
AES_TIER_CACHE_SECONDS, so an admin edit is seen everywhere within a few
seconds without a restart, and a busy worker does not query tiers per run.
"""

from __future__ import annotations

from django.conf import settings

from aes_project.table_cache import TableCache
from tiers.models import Tier

_table: TableCache[Tier] = TableCache(
    lambda: {tier.name: tier for tier in Tier.objects.order_by("priority")},
    lambda: settings.AES_TIER_CACHE_SECONDS,
)


def get_tier(name: str) -> Tier | None:
    """Return the tier called `name`, or None when there is none."""
    return _table.rows().get(name)


def tiers_by_priority() -> list[Tier]:
    """Return every tier, the one served first first."""
    return list(_table.rows().values())


def clear() -> None:
    """Forget the cached rows (after an edit in this process, and in tests)."""
    _table.clear()


def connect_signals() -> None:
    _table.clear_on_change(Tier)
