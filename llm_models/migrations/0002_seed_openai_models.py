"""The models the example agents name, on the default provider, at OpenAI's list prices.

Without rows every agent's model would fall back to AES_DEFAULT_MODEL; these
keep an OpenAI deployment working as before. Prices change: check them.
"""

from decimal import Decimal

from django.db import migrations

SEED = [
    # name, context window, USD per million prompt tokens, per million completion tokens
    ("gpt-4o-mini", 128_000, Decimal("0.15"), Decimal("0.60")),
    ("gpt-4o", 128_000, Decimal("2.50"), Decimal("10.00")),
]


def seed(apps, schema_editor):
    LLMModel = apps.get_model("llm_models", "LLMModel")
    for name, window, prompt_price, completion_price in SEED:
        LLMModel.objects.get_or_create(
            name=name,
            defaults={
                "context_window": window,
                "input_price_per_million": prompt_price,
                "output_price_per_million": completion_price,
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("llm_models", "LLMModel").objects.filter(name__in=[s[0] for s in SEED]).delete()


class Migration(migrations.Migration):
    dependencies = [("llm_models", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
