from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from webhooks.models import ROTATION_OVERLAP, SigningSecret, Webhook, WebhookAttempt


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ("started_at", "outcome", "status_code", "error", "duration_ms")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    """Read-only but for sending again: deliveries are written by the service."""

    list_display = (
        "event_id",
        "status",
        "tenant_id",
        "url",
        "run",
        "next_attempt_at",
        "created_at",
    )
    list_filter = ("status", "tenant_id")
    search_fields = ("event_id", "url", "execution__id")
    date_hierarchy = "created_at"
    actions = ["send_again"]
    inlines = [WebhookAttemptInline]
    exclude = ("execution",)
    readonly_fields = ("run", "tenant_id", "url", "event_id", "status", "failures")
    readonly_fields += ("next_attempt_at", "created_at", "delivered_at", "payload")

    @admin.display(description="Execution")
    def run(self, webhook: Webhook) -> str:
        url = reverse("admin:executions_execution_change", args=[webhook.execution_id])
        return format_html('<a href="{}">{}</a>', url, webhook.execution_id)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Send the selected webhooks again (same webhook-id)")
    def send_again(self, request, queryset) -> None:
        count = 0
        for webhook in queryset:
            webhook.resend()
            count += 1
        self.message_user(
            request, f"{count} webhook(s) due now; the sender sends them within seconds."
        )


@admin.register(SigningSecret)
class SigningSecretAdmin(admin.ModelAdmin):
    """Each tenant's signing secrets, shown to staff, who hand them to the tenant."""

    list_display = ("tenant_id", "secret", "created_at", "expires_at")
    list_filter = (("expires_at", admin.EmptyFieldListFilter),)
    search_fields = ("tenant_id",)
    fields = ("tenant_id", "secret", "created_at", "expires_at")
    readonly_fields = fields
    actions = ["rotate"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(
        description="Rotate the secrets of the selected tenants (the old ones sign too for a day)"
    )
    def rotate(self, request, queryset) -> None:
        tenants = sorted(set(queryset.values_list("tenant_id", flat=True)))
        for tenant_id in tenants:
            SigningSecret.rotate(tenant_id, ROTATION_OVERLAP)
        self.message_user(request, f"New secrets for {len(tenants)} tenant(s).")
