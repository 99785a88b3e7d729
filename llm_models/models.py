"""The models agents may name: where each is served, what it costs, how fast it may be called."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

# Variables that hold the service's own secrets: a model's key is never read from them.
RESERVED_ENV_VARS = frozenset({"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "POSTGRES_PASSWORD"})


def validate_base_url(value: str) -> None:
    """Accept http(s) URLs with any host name, such as a compose service's `http://llama:8080/v1`.

    Django's URLValidator wants a dotted name, which internal hosts often lack.
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("An http:// or https:// URL with a host, e.g. http://llm:8080/v1.")
    try:
        parts.port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        raise ValidationError("The port must be a number.") from None


def _limit(help_text: str) -> models.PositiveIntegerField:
    return models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=help_text + " Empty means no limit.",
    )


def _price(help_text: str) -> models.DecimalField:
    return models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        help_text=help_text + " Empty means unknown: costs are then not computed.",
    )


class LLMModel(models.Model):
    name = models.CharField(
        max_length=255, unique=True, help_text="What agents name as their `model`."
    )
    base_url = models.CharField(
        max_length=500,
        validators=[validate_base_url],
        blank=True,
        help_text="The provider's OpenAI-compatible base URL, e.g. http://llm.internal:8080/v1. "
        "Empty: the default provider (OPENAI_BASE_URL, with OPENAI_API_KEY).",
    )
    api_key_env = models.CharField(
        "API key variable",
        max_length=128,
        blank=True,
        validators=[RegexValidator(r"^[A-Z_][A-Z0-9_]*$", "An environment variable name.")],
        help_text="The NAME of the environment variable holding the provider's key on the "
        "workers (never the key itself). Empty: no key, or OPENAI_API_KEY on the default "
        "provider.",
    )
    upstream_model = models.CharField(
        max_length=255,
        blank=True,
        help_text="The model id the provider is sent. Empty: the name.",
    )
    context_window = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Tokens the model accepts in one request (prompt plus answer).",
    )
    input_price_per_million = _price("USD per million prompt tokens.")
    output_price_per_million = _price("USD per million completion tokens.")
    requests_per_minute = _limit("Calls per minute, shared by every worker.")
    tokens_per_minute = _limit(
        "Tokens per minute (prompt plus completion), shared by every worker."
    )

    class Meta:
        ordering = ["name"]
        verbose_name = "LLM model"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.api_key_env in RESERVED_ENV_VARS:
            raise ValidationError(
                {"api_key_env": f"{self.api_key_env} holds the service's own secret, not a key."}
            )
