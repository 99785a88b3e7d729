from django.contrib import admin

from tiers.models import LIMIT_FIELDS, Tier


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    list_display = ("name", "priority", *LIMIT_FIELDS)
    list_editable = LIMIT_FIELDS
    ordering = ("priority",)
