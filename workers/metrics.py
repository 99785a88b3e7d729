"""Run counters in Redis per tier and tenant, updated once per run by the outbox.

`execution:metrics:{tier}:{tenant}` is a hash: `status:{status}`,
`duration_ms_sum`, `prompt_tokens`, `completion_tokens`, and duration buckets
`in:{ms}` (each run counts once, in the smallest bucket that holds its
duration; `read()` adds them up into cumulative Prometheus-style buckets).
`execution:metrics:index` lists the hashes that exist. Every process and
machine adds to the same counters; the outbox (workers/callbacks.py) adds a
run's increments in the same script that pushes its callback, so a run is
counted exactly once, whether or not its callback could be pushed yet.
"""

from __future__ import annotations

from typing import Any

from executions.models import Execution
from protocol import keys
from workers import redis_client

# Upper bounds of the duration buckets, in milliseconds.
BUCKETS_MS = (100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000)


def increments(execution: Execution) -> list[tuple[str, int]]:
    """Return the (field, amount) pairs one ended run adds to its hash."""
    duration = execution.duration_ms or 0
    bucket = next((bound for bound in BUCKETS_MS if duration <= bound), "inf")
    return [
        (f"status:{execution.status}", 1),
        ("duration_ms_sum", duration),
        ("prompt_tokens", execution.prompt_tokens),
        ("completion_tokens", execution.completion_tokens),
        (f"in:{bucket}", 1),
    ]


def read(tier: str | None = None, tenant_id: str | None = None) -> list[dict[str, Any]]:
    """Return the counters, one entry per tier and tenant, optionally filtered."""
    client = redis_client.shared()
    entries = []
    for raw_key in sorted(client.smembers(keys.METRICS_INDEX)):
        _, _, key_tier, key_tenant = raw_key.decode().split(":", 3)
        if (tier and key_tier != tier) or (tenant_id and key_tenant != tenant_id):
            continue
        fields = {k.decode(): int(v) for k, v in client.hgetall(raw_key).items()}
        by_status = {k.split(":", 1)[1]: v for k, v in fields.items() if k.startswith("status:")}
        cumulative, running = {}, 0
        for bound in BUCKETS_MS:
            running += fields.get(f"in:{bound}", 0)
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
            }
        )
    return entries


def quantile_ms(buckets: dict[int, int], total: int, q: float) -> int | None:
    """Return the upper bound of the bucket holding quantile `q` (an estimate, in ms)."""
    if total == 0:
        return None
    for bound in BUCKETS_MS:
        if buckets.get(bound, 0) >= q * total:
            return bound
    return None  # beyond the largest bucket


def combine(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up entries of read(): runs, by_status, buckets, duration sum, tokens."""
    total: dict[str, Any] = {
        "runs": 0,
        "by_status": {},
        "duration_buckets": dict.fromkeys(BUCKETS_MS, 0),
        "duration_ms_sum": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }
    for entry in entries:
        for status, count in entry["by_status"].items():
            total["by_status"][status] = total["by_status"].get(status, 0) + count
        for bound, count in entry["duration_buckets"].items():
            total["duration_buckets"][bound] += count
        for field in ("runs", "duration_ms_sum", "prompt_tokens", "completion_tokens"):
            total[field] += entry[field]
    return total


def summary(tenant_id: str | None = None) -> dict[str, Any]:
    """Return totals by tier and status, duration quantiles and tokens, for dashboards."""
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
    }


def queue_depths(tiers: list[str]) -> dict[str, dict[str, int]]:
    """Return, per tier, messages waiting for the consumer and jobs waiting for workers."""
    from workers.jobs import tier_queue

    client = redis_client.shared()
    with client.pipeline(transaction=False) as pipe:
        for tier in tiers:
            pipe.llen(keys.actions(tier))
        waiting = pipe.execute()
    return {
        tier: {"messages": messages, "jobs": tier_queue(tier).count}
        for tier, messages in zip(tiers, waiting, strict=True)
    }
