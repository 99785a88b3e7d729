from django.contrib import admin

from tokens.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are issued with `manage.py issue_api_token` (the secret is shown once)."""

    list_display = (
        "__str__",
        "tenant_id",
        "tier",
        "name",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = ("tier", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("tenant_id", "name", "prefix")
    readonly_fields = ("tenant_id", "tier", "prefix", "created_at", "last_used_at", "revoked_at")
    fields = ("name", *readonly_fields)
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset) -> None:
        for token in queryset:
            token.revoke()
        self.message_user(request, f"Revoked {queryset.count()} token(s).")
