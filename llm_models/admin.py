import os

from django.contrib import admin

from llm_models.models import LLMModel


@admin.register(LLMModel)
class LLMModelAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "provider",
        "api_key_env",
        "key_is_set",
        "upstream_model",
        "context_window",
        "input_price_per_million",
        "output_price_per_million",
        "requests_per_minute",
        "tokens_per_minute",
    )
    search_fields = ("name", "upstream_model", "base_url")
    fieldsets = (
        (None, {"fields": ("name", "upstream_model", "context_window")}),
        ("Provider", {"fields": ("base_url", "api_key_env")}),
        (
            "Prices (USD per million tokens)",
            {"fields": ("input_price_per_million", "output_price_per_million")},
        ),
        ("Limits shared by every worker", {"fields": ("requests_per_minute", "tokens_per_minute")}),
    )

    @admin.display(description="Provider")
    def provider(self, row: LLMModel) -> str:
        return row.base_url or "default (OPENAI_BASE_URL)"

    # Of this web process: workers read their own environment, usually the same.
    @admin.display(description="Key set here", boolean=True)
    def key_is_set(self, row: LLMModel) -> bool | None:
        if not row.api_key_env:
            return None
        return bool(os.environ.get(row.api_key_env))
