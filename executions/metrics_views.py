"""The counters as the API serves them (JSON) and as Prometheus scrapes them (`/metrics`).

The run counters live in Redis (executions/metrics.py), so however many
consumers, workers and web processes run, one request to any web process
sees the whole service: no per-process registries to merge. Prometheus
labels are tiers, statuses and the model table's names only, never tenants,
so the series stay few.
"""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from rest_framework.response import Response
from rest_framework.views import APIView
from rq import Worker

from aes_project import redis_clients
from executions import metrics
from executions.permissions import StaffOrTenantToken, is_tenant
from tiers import lookup
from webhooks import metrics as webhook_metrics
from webhooks.models import Webhook, WebhookAttempt


class MetricsView(APIView):
    """Run counts by status and tier, duration p50/p95, tokens, and (for staff) queue depths.

    Counters since they began: cheap enough to poll. Durations are bucket
    estimates (the bucket's upper bound, in ms). A token sees its own
    tenant's figures only.
    """

    permission_classes = [StaffOrTenantToken]

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request):
        if is_tenant(request):
            return Response(metrics.summary(tenant_id=request.user.tenant_id))
        body = metrics.summary()
        body["queues"] = metrics.queue_depths([t.name for t in lookup.tiers_by_priority()])
        return Response(body)


class ServiceCollector:
    def collect(self):
        tiers = [tier.name for tier in lookup.tiers_by_priority()]
        runs = CounterMetricFamily("aes_runs", "Finished runs.", labels=["tier", "status"])
        tokens = CounterMetricFamily("aes_tokens", "LLM tokens spent.", labels=["tier", "kind"])
        cost = CounterMetricFamily(
            "aes_cost_usd",
            "What finished runs' LLM calls cost at the model table's prices (runs of unknown"
            " price not counted).",
            labels=["tier", "model"],
        )
        durations = HistogramMetricFamily(
            "aes_run_duration_seconds", "Run duration, start to end.", labels=["tier"]
        )
        for tier in tiers:
            total = metrics.combine(metrics.read(tier=tier))
            for status, count in sorted(total["by_status"].items()):
                runs.add_metric([tier, status], count)
            tokens.add_metric([tier, "prompt"], total["prompt_tokens"])
            tokens.add_metric([tier, "completion"], total["completion_tokens"])
            for model, nusd in sorted(total["cost_nusd_by_model"].items()):
                cost.add_metric([tier, model], nusd / 1e9)
            durations.add_metric(
                [tier],
                [(str(bound / 1000), count) for bound, count in total["duration_buckets"].items()]
                + [("+Inf", total["runs"])],
                sum_value=total["duration_ms_sum"] / 1000,
            )
        yield from (runs, tokens, cost, durations)

        messages = GaugeMetricFamily(
            "aes_queue_messages", "Messages waiting for the consumer.", labels=["tier"]
        )
        jobs = GaugeMetricFamily("aes_queue_jobs", "Jobs waiting for RQ workers.", labels=["tier"])
        for tier, depth in metrics.queue_depths(tiers).items():
            messages.add_metric([tier], depth["messages"])
            jobs.add_metric([tier], depth["jobs"])
        yield from (messages, jobs)
        yield GaugeMetricFamily(
            "aes_rq_workers", "Live RQ workers.", value=Worker.count(redis_clients.shared())
        )
        yield from _webhook_families()


def _webhook_families():
    counts = webhook_metrics.read()
    attempts = CounterMetricFamily(
        "aes_webhook_attempts", "Webhook delivery attempts by outcome.", labels=["outcome"]
    )
    for outcome in WebhookAttempt.Outcome.values:
        attempts.add_metric([outcome], counts.get(outcome, 0))
    yield attempts
    yield CounterMetricFamily(
        "aes_webhooks_given_up",
        "Webhooks whose retries ran out without a 2xx answer.",
        value=counts.get(webhook_metrics.GAVE_UP, 0),
    )
    yield GaugeMetricFamily(
        "aes_webhooks_pending",
        "Webhooks still to be delivered (due now or retried later).",
        value=Webhook.objects.filter(status=Webhook.Status.PENDING).count(),
    )


def prometheus_view(request):
    """Serve the counters in the Prometheus text format."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
