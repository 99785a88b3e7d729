"""Run counters in Redis, per tier and tenant."""

from __future__ import annotations

import pytest

from executions import metrics
from protocol import keys
from tests.helpers import agent_run, run_one

pytestmark = pytest.mark.django_db


def test_counters_add_up_the_runs_of_each_tier_and_tenant(peers, llm):
    completed = [run_one(agent_run()) for _ in range(2)]
    llm.push_error(400, "refused")
    failed = run_one(agent_run())
    rejected = run_one(agent_run(agent_id="no-such-bot"))
    other = run_one(agent_run(tier="enterprise"))

    (free,) = metrics.read(tier="free", tenant_id="tenant-a")
    assert free["runs"] == 4
    assert free["by_status"] == {"completed": 2, "failed": 1, "rejected": 1}
    runs = [*completed, failed, rejected]
    assert free["duration_ms_sum"] == sum(e.duration_ms for e in runs)
    assert free["prompt_tokens"] == sum(e.prompt_tokens for e in runs)
    assert free["completion_tokens"] == sum(e.completion_tokens for e in runs)
    slowest = max(e.duration_ms for e in runs)
    assert free["duration_buckets"][300000] == 4
    assert all(count == 4 for bound, count in free["duration_buckets"].items() if bound >= slowest)

    (enterprise,) = metrics.read(tier="enterprise")
    assert enterprise["runs"] == 1
    assert enterprise["by_status"] == {"completed": 1}
    assert other.status == "completed"
    assert len(metrics.read()) == 2


def test_a_hash_written_before_status_and_bucket_shared_a_field_still_adds_up(peers, llm, redis):
    run_one(agent_run())  # counted as runs:completed:{bucket}
    key = keys.metrics("free", "tenant-a")
    # What the earlier version wrote for two runs: a status and a bucket each.
    redis.hset(key, mapping={"status:completed": 1, "status:failed": 1, "in:100": 1, "in:2500": 1})
    (free,) = metrics.read(tier="free", tenant_id="tenant-a")
    assert free["runs"] == 3
    assert free["by_status"] == {"completed": 2, "failed": 1}
    assert free["duration_buckets"][100] >= 1
    assert free["duration_buckets"][2500] == free["duration_buckets"][300000] == 3
