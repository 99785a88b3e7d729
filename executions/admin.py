from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from executions import charts, metrics, outbox
from executions.models import STEP_FIELDS, Execution, ExecutionStep
from tiers import lookup
from webhooks.models import Webhook


class ExecutionStepInline(admin.TabularInline):
    model = ExecutionStep
    extra = 0
    can_delete = False
    fields = STEP_FIELDS
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


def _charts(day: dict) -> list[charts.Chart]:
    hours = day["hours"]
    return [
        charts.stacked_bars("Runs by status", "", hours, day["runs"]),
        charts.line("p95 duration", " ms", hours, day["p95_ms"]),
        charts.stacked_bars("Tokens", "", hours, {"tokens": day["tokens"]}),
        charts.stacked_bars(
            "Cost", " USD", hours, {"cost": day["cost_usd"]}, fmt=lambda v: f"{v:.6f}", whole=False
        ),
    ]


class WebhookInline(admin.TabularInline):
    model = Webhook
    extra = 0
    can_delete = False
    show_change_link = True  # to its attempts, and to send it again
    fields = ("event_id", "url", "status", "next_attempt_at", "delivered_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Execution)
class ExecutionAdmin(admin.ModelAdmin):
    """Read-only: executions are written by the service, never by hand."""

    list_display = (
        "id",
        "status",
        "stop_reason",
        "tier",
        "tenant_id",
        "agent_id",
        "session_id",
        "task_id",
        "iterations",
        "resumes",
        "total_tokens",
        "model",
        "cost_usd",
        "duration_ms",
        "queued_at",
    )
    list_filter = (
        "status",
        "stop_reason",
        "tier",
        "model",
        ("callback_sent_at", admin.EmptyFieldListFilter),
        "tenant_id",
    )
    actions = ["resend_callback"]
    search_fields = ("task_id", "session_id", "action_id")
    date_hierarchy = "queued_at"
    inlines = [ExecutionStepInline, WebhookInline]
    readonly_fields = ("session_history",)

    @admin.display(description="Session")
    def session_history(self, execution: Execution) -> str:
        if not execution.session_id:
            return "-"
        query = urlencode({"session_id": execution.session_id, "tenant_id": execution.tenant_id})
        url = f"{reverse('admin:executions_execution_changelist')}?{query}"
        return format_html(
            '<a href="{}">All executions of session {}</a>', url, execution.session_id
        )

    def get_urls(self):
        metrics = self.admin_site.admin_view(self.metrics_view)
        return [path("metrics/", metrics, name="executions_metrics"), *super().get_urls()]

    def metrics_view(self, request):
        tiers = [tier.name for tier in lookup.tiers_by_priority()]
        context = {
            **self.admin_site.each_context(request),
            "title": "Execution metrics",
            "day": metrics.last_day(),
            "charts": _charts(metrics.hourly()),
            "total": metrics.summary(),
            "queues": metrics.queue_depths(tiers),
        }
        return TemplateResponse(request, "admin/executions/metrics.html", context)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Re-send the callback of the selected executions")
    def resend_callback(self, request, queryset) -> None:
        sent = 0
        for execution in queryset.filter(callback__isnull=False):
            outbox.deliver(execution, again=True)
            sent += 1
        self.message_user(request, f"Re-sent {sent} callback(s); runs still going have none yet.")
