"""Service tiers: the single source of truth for every per-tier limit."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

# Fields copied into each Execution when it starts, so a running execution
# keeps the limits it began with even if an operator edits the tier.
LIMIT_FIELDS = (
    "max_iterations",
    "max_tools",
    "timeout_seconds",
    "max_tokens",
    "max_history_messages",
    "rate_limit_per_minute",
    "rate_limit_per_day",
    "max_concurrent_executions",
    "agent_config_cache_ttl",
    "history_cache_ttl",
    "wait_for_persistence",
)


def _positive(help_text: str, *, unlimited: bool = False) -> models.PositiveIntegerField:
    return models.PositiveIntegerField(
        null=unlimited,
        blank=unlimited,
        validators=[MinValueValidator(1)],
        help_text=help_text + (" Empty means unlimited." if unlimited else ""),
    )


class Tier(models.Model):
    name = models.SlugField(max_length=32, unique=True, help_text="Name used on the wire.")
    priority = models.PositiveSmallIntegerField(
        unique=True,
        validators=[MinValueValidator(1)],
        help_text="1 is served first; a lower tier waits while a higher one has work.",
    )
    max_iterations = _positive("LLM calls one run may make.")
    max_tools = _positive("Distinct tools one run may use.", unlimited=True)
    timeout_seconds = _positive("Seconds one run may take, from start to callback.")
    max_tokens = _positive("Tokens one run may spend (prompt plus completion).")
    max_history_messages = _positive("Conversation messages given to the agent.")
    rate_limit_per_minute = _positive("Runs a tenant may start per minute.", unlimited=True)
    rate_limit_per_day = _positive("Runs a tenant may start per day.", unlimited=True)
    max_concurrent_executions = _positive("Runs of one tenant at the same time.", unlimited=True)
    agent_config_cache_ttl = _positive("Seconds an agent's configuration stays cached.")
    history_cache_ttl = _positive("Seconds a session's history stays cached.")
    wait_for_persistence = models.BooleanField(
        default=False,
        help_text="Wait for the conversation service to confirm saved messages.",
    )

    class Meta:
        ordering = ["priority"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.name and self.name not in settings.AES_QUEUE_TIERS:
            raise ValidationError(
                {"name": f"No RQ queue is configured for {self.name!r}: add it to AES_QUEUE_TIERS."}
            )

    def limits(self) -> dict[str, int | bool | None]:
        """Return the limits as a plain dict, the snapshot stored on executions."""
        return {field: getattr(self, field) for field in LIMIT_FIELDS}

    def reaches(self, other: Tier) -> bool:
        """Return True when this tier is at least as high as `other`."""
        return self.priority <= other.priority
