"""Run counters: in Redis per tier and tenant (all time), and from the rows (the last day).

`execution:metrics:{tier}:{tenant}` is a hash: `runs:{status}:{ms}` (each
run counts once, by its final status and the smallest duration bucket that
holds its duration: one HINCRBY for both; `read()` adds them up by status
and into cumulative Prometheus-style buckets), `duration_ms_sum`,
`prompt_tokens`, `completion_tokens` and `cost_nusd:{model}` (what the runs
on that model cost, in billionths of a USD: HINCRBY adds integers only).
Hashes written before the status and bucket shared a field hold
`status:{status}` and `in:{ms}` as well; `read()` adds those in.
`execution:metrics:index` lists the hashes that exist. Every process and
machine adds to the same counters; the outbox (executions/outbox.py) adds a
run's increments in the same script that pushes its callback, so a run is
counted exactly once, whether or not its callback could be pushed yet.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from aes_project import redis_clients
from executions.models import Execution
from executions.queues import tier_queue
from protocol import keys

# Billionths of a USD: the unit of the cost counters.
NANO = Decimal(1_000_000_000)
# Upper bounds of the duration buckets, in milliseconds.
BUCKETS_MS = (100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000)


def increments(execution: Execution) -> list[tuple[str, int]]:
    """Return the (field, amount) pairs one ended run adds to its hash, its run count first."""
    duration = execution.duration_ms or 0
    bucket = next((bound for bound in BUCKETS_MS if duration <= bound), "inf")
    counts = [
        (f"runs:{execution.status}:{bucket}", 1),
        ("duration_ms_sum", duration),
        ("prompt_tokens", execution.prompt_tokens),
        ("completion_tokens", execution.completion_tokens),
    ]
    if execution.model and execution.cost_usd:
        counts.append((f"cost_nusd:{execution.model}", round(execution.cost_usd * NANO)))
    return counts


def read(tier: str | None = None, tenant_id: str | None = None) -> list[dict[str, Any]]:
    """Return the counters, one entry per tier and tenant, optionally filtered."""
    client = redis_clients.shared()
    entries = []
    for raw_key in sorted(client.smembers(keys.METRICS_INDEX)):
        _, _, key_tier, key_tenant = raw_key.decode().split(":", 3)
        if (tier and key_tier != tier) or (tenant_id and key_tenant != tenant_id):
            continue
        fields = {k.decode(): int(v) for k, v in client.hgetall(raw_key).items()}
        by_status, by_bucket = _runs(fields)
        cost = {k.split(":", 1)[1]: v for k, v in fields.items() if k.startswith("cost_nusd:")}
        cumulative, running = {}, 0
        for bound in BUCKETS_MS:
            running += by_bucket.get(str(bound), 0)
            cumulative[bound] = running
        entries.append(
            {
                "tier": key_tier,
                "tenant_id": key_tenant,
                "runs": sum(by_status.values()),
                "by_status": by_status,
                "duration_ms_sum": fields.get("duration_ms_sum", 0),
                "duration_buckets": cumulative,
                "prompt_tokens": fields.get("prompt_tokens", 0),
                "completion_tokens": fields.get("completion_tokens", 0),
                "cost_nusd_by_model": cost,
            }
        )
    return entries


def _runs(fields: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """Return a hash's run counts by status and by duration bucket (its upper bound, or inf)."""
    by_status: dict[str, int] = {}
    by_bucket: dict[str, int] = {}
    for field, count in fields.items():
        kind, _, rest = field.partition(":")
        if kind == "runs":
            status, _, bucket = rest.rpartition(":")
            by_status[status] = by_status.get(status, 0) + count
            by_bucket[bucket] = by_bucket.get(bucket, 0) + count
        elif kind == "status":
            by_status[rest] = by_status.get(rest, 0) + count
        elif kind == "in":
            by_bucket[rest] = by_bucket.get(rest, 0) + count
    return by_status, by_bucket


def quantile_ms(buckets: dict[int, int], total: int, q: float) -> int | None:
    """Return the upper bound of the bucket holding quantile `q` (an estimate, in ms)."""
    if total == 0:
        return None
    for bound in BUCKETS_MS:
        if buckets.get(bound, 0) >= q * total:
            return bound
    return None  # beyond the largest bucket


def combine(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up entries of read(): runs, by_status, buckets, duration sum, tokens, cost."""
    total: dict[str, Any] = {
        "runs": 0,
        "by_status": {},
        "duration_buckets": dict.fromkeys(BUCKETS_MS, 0),
        "duration_ms_sum": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_nusd_by_model": {},
    }
    for entry in entries:
        for status, count in entry["by_status"].items():
            total["by_status"][status] = total["by_status"].get(status, 0) + count
        for model, cost in entry["cost_nusd_by_model"].items():
            by_model = total["cost_nusd_by_model"]
            by_model[model] = by_model.get(model, 0) + cost
        for bound, count in entry["duration_buckets"].items():
            total["duration_buckets"][bound] += count
        for field in ("runs", "duration_ms_sum", "prompt_tokens", "completion_tokens"):
            total[field] += entry[field]
    return total


def summary(tenant_id: str | None = None) -> dict[str, Any]:
    """Return totals by tier and status, duration quantiles, tokens and cost, for dashboards."""
    entries = read(tenant_id=tenant_id)
    total = combine(entries)
    by_tier = {}
    for tier in dict.fromkeys(entry["tier"] for entry in entries):
        per_tier = combine([entry for entry in entries if entry["tier"] == tier])
        by_tier[tier] = {"runs": per_tier["runs"], "by_status": per_tier["by_status"]}
    runs, buckets = total["runs"], total["duration_buckets"]
    return {
        "runs": runs,
        "by_status": total["by_status"],
        "by_tier": by_tier,
        "duration_ms": {
            "mean": round(total["duration_ms_sum"] / runs) if runs else None,
            "p50": quantile_ms(buckets, runs, 0.50),
            "p95": quantile_ms(buckets, runs, 0.95),
        },
        "tokens": {
            "prompt_tokens": total["prompt_tokens"],
            "completion_tokens": total["completion_tokens"],
            "total_tokens": total["prompt_tokens"] + total["completion_tokens"],
        },
        # Of the runs whose cost was known.
        "cost_usd": {
            model: float(Decimal(cost) / NANO)
            for model, cost in sorted(total["cost_nusd_by_model"].items())
        },
    }


def queue_depths(tiers: list[str]) -> dict[str, dict[str, int]]:
    """Return, per tier, messages waiting for the consumer and jobs waiting for workers."""
    client = redis_clients.shared()
    with client.pipeline(transaction=False) as pipe:
        for tier in tiers:
            pipe.llen(keys.actions(tier))
        waiting = pipe.execute()
    return {
        tier: {"messages": messages, "jobs": tier_queue(tier).count}
        for tier, messages in zip(tiers, waiting, strict=True)
    }


# The admin's last 24 hours, read from the rows.
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


def hourly() -> dict[str, Any]:
    """The last 24 hours hour by hour, from the rows: runs by status, p95 duration, tokens, cost.

    Hours are those the runs were queued in, the current one last; an hour
    without runs has no p95 (None) and zero of the rest.
    """
    now = timezone.now()
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    hours = [first + timedelta(hours=n) for n in range(24)]
    index = {hour: n for n, hour in enumerate(hours)}
    recent = Execution.objects.filter(queued_at__gte=first)
    runs: dict[str, list[int]] = {}
    tokens, cost = [0] * 24, [Decimal(0)] * 24
    rows = (
        recent.annotate(hour=TruncHour("queued_at"))
        .values("hour", "status")
        .annotate(
            runs=Count("id"),
            tokens=Sum("total_tokens"),
            cost=Sum("cost_usd"),
        )
    )
    for row in rows:
        n = index.get(row["hour"])
        if n is None:
            continue
        runs.setdefault(row["status"], [0] * 24)[n] += row["runs"]
        tokens[n] += row["tokens"] or 0
        cost[n] += row["cost"] or 0
    durations: list[list[int]] = [[] for _ in hours]
    for queued_at, duration in (
        recent.filter(duration_ms__isnull=False)
        .order_by("-queued_at")
        .values_list("queued_at", "duration_ms")[:MAX_DURATIONS]
    ):
        n = index.get(queued_at.replace(minute=0, second=0, microsecond=0))
        if n is not None:
            durations[n].append(duration)
    return {
        "hours": hours,
        "runs": dict(sorted(runs.items())),
        "p95_ms": [_percentile(sorted(values), 0.95) for values in durations],
        "tokens": tokens,
        "cost_usd": [float(value) for value in cost],
    }
