"""Seed the four default tiers of DESIGN.md; operators edit them in the admin."""

from django.db import migrations

# name, priority, max_iterations, max_tools, timeout_seconds, max_tokens,
# max_history_messages, rate_limit_per_minute, rate_limit_per_day,
# max_concurrent_executions, agent_config_cache_ttl, history_cache_ttl,
# wait_for_persistence. None means unlimited.
DEFAULTS = [
    ("free", 4, 3, 2, 30, 4000, 10, 10, 100, 2, 300, 60, False),
    ("advance", 3, 5, 5, 60, 8000, 25, 50, 1000, 5, 300, 120, False),
    ("professional", 2, 10, 10, 120, 16000, 50, 200, 10000, 20, 600, 300, True),
    ("enterprise", 1, 20, None, 300, 32000, 100, None, None, None, 900, 600, True),
]
FIELDS = [
    "name", "priority", "max_iterations", "max_tools", "timeout_seconds", "max_tokens",
    "max_history_messages", "rate_limit_per_minute", "rate_limit_per_day",
    "max_concurrent_executions", "agent_config_cache_ttl", "history_cache_ttl",
    "wait_for_persistence",
]


def seed(apps, schema_editor):
    Tier = apps.get_model("tiers", "Tier")
    for row in DEFAULTS:
        values = dict(zip(FIELDS, row))
        Tier.objects.update_or_create(name=values.pop("name"), defaults=values)


def unseed(apps, schema_editor):
    apps.get_model("tiers", "Tier").objects.filter(name__in=[row[0] for row in DEFAULTS]).delete()


class Migration(migrations.Migration):
    dependencies = [("tiers", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
