"""Prometheus `/metrics`, built at scrape time from the counters every process shares.

The run counters live in Redis (workers/metrics.py), so however many
consumers, workers and web processes run, one scrape of any web process
sees the whole service: no per-process registries to merge. Labels are
tiers and statuses only, never tenants, so the series stay few.
"""

from __future__ import annotations

from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from rq import Worker

from tiers import lookup
from workers import metrics, redis_client


class ServiceCollector:
    def collect(self):
        tiers = [tier.name for tier in lookup.tiers_by_priority()]
        runs = CounterMetricFamily("aes_runs", "Finished runs.", labels=["tier", "status"])
        tokens = CounterMetricFamily("aes_tokens", "LLM tokens spent.", labels=["tier", "kind"])
        durations = HistogramMetricFamily(
            "aes_run_duration_seconds", "Run duration, start to end.", labels=["tier"]
        )
        for tier in tiers:
            total = metrics.combine(metrics.read(tier=tier))
            for status, count in sorted(total["by_status"].items()):
                runs.add_metric([tier, status], count)
            tokens.add_metric([tier, "prompt"], total["prompt_tokens"])
            tokens.add_metric([tier, "completion"], total["completion_tokens"])
            durations.add_metric(
                [tier],
                [(str(bound / 1000), count) for bound, count in total["duration_buckets"].items()]
                + [("+Inf", total["runs"])],
                sum_value=total["duration_ms_sum"] / 1000,
            )
        yield from (runs, tokens, durations)

        messages = GaugeMetricFamily(
            "aes_queue_messages", "Messages waiting for the consumer.", labels=["tier"]
        )
        jobs = GaugeMetricFamily("aes_queue_jobs", "Jobs waiting for RQ workers.", labels=["tier"])
        for tier, depth in metrics.queue_depths(tiers).items():
            messages.add_metric([tier], depth["messages"])
            jobs.add_metric([tier], depth["jobs"])
        yield from (messages, jobs)
        yield GaugeMetricFamily(
            "aes_rq_workers", "Live RQ workers.", value=Worker.count(redis_client.shared())
        )


def metrics_view(request):
    registry = CollectorRegistry()
    registry.register(ServiceCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
