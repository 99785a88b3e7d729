"""The admin's metrics page: the last 24 hours from the rows, all time from Redis."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Sum
from django.utils import timezone

from executions.models import Execution

WINDOW = timedelta(hours=24)
# Durations read to compute percentiles; a busier day is sampled by recency.
MAX_DURATIONS = 100_000


def _percentile(values: list[int], q: float) -> int | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def last_day() -> dict:
    """Runs by tier and status, p50/p95 duration and tokens over the last 24 hours."""
    since = timezone.now() - WINDOW
    recent = Execution.objects.filter(queued_at__gte=since)
    counts: dict[str, dict[str, int]] = {}
    for row in recent.values("tier", "status").annotate(runs=Count("id")).order_by("tier"):
        counts.setdefault(row["tier"], {})[row["status"]] = row["runs"]
    durations = sorted(
        recent.filter(duration_ms__isnull=False)
        .order_by("-queued_at")
        .values_list("duration_ms", flat=True)[:MAX_DURATIONS]
    )
    tokens = recent.aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    statuses = sorted({status for row in counts.values() for status in row})
    return {
        "since": since,
        "statuses": statuses,
        "rows": [(tier, [row.get(s, 0) for s in statuses]) for tier, row in counts.items()],
        "runs": sum(sum(row.values()) for row in counts.values()),
        "p50": _percentile(durations, 0.50),
        "p95": _percentile(durations, 0.95),
        "prompt_tokens": tokens["prompt"] or 0,
        "completion_tokens": tokens["completion"] or 0,
    }


def context(request, admin_site) -> dict:
    """Return the page's context: the admin's own, the last day, totals, queue depths."""
    from tiers import lookup
    from workers import metrics

    tiers = [tier.name for tier in lookup.tiers_by_priority()]
    return {
        **admin_site.each_context(request),
        "title": "Execution metrics",
        "day": last_day(),
        "total": metrics.summary(),
        "queues": metrics.queue_depths(tiers),
    }
