"""Tenant-scoped API tokens: shown once, stored hashed, revocable."""

from __future__ import annotations

import hashlib
import secrets

from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

# A tenant's callback queues lie under "callbacks:{tenant_id}:" (PROTOCOL.md
# §3): with a colon in a tenant id, one tenant's prefix could hold another's.
tenant_id_validator = RegexValidator(
    r"^[^:\s\x00]+$", "A tenant id holds no colon, space or NUL.", code="invalid_tenant"
)

# Tokens read "aes_<prefix>_<secret>": the prefix finds the row, the hash of
# the whole token proves it. Only the hash is stored.
PREFIX_CHARS = 8


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiToken(models.Model):
    tenant_id = models.CharField(max_length=255, db_index=True, validators=[tenant_id_validator])
    tier = models.CharField(max_length=32, help_text="Tier of the runs this token starts.")
    name = models.CharField(max_length=100, blank=True, help_text="What the token is for.")
    prefix = models.CharField(max_length=PREFIX_CHARS, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"aes_{self.prefix}_… ({self.tenant_id})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def issue(cls, tenant_id: str, tier: str, name: str = "") -> tuple[ApiToken, str]:
        """Create a token; return it and its secret text, which is never stored.

        Raises django's ValidationError for a tenant id the API cannot serve.
        """
        tenant_id_validator(tenant_id)
        prefix = secrets.token_hex(PREFIX_CHARS // 2)
        token = f"aes_{prefix}_{secrets.token_urlsafe(32)}"
        row = cls.objects.create(
            tenant_id=tenant_id, tier=tier, name=name, prefix=prefix, digest=_digest(token)
        )
        return row, token

    @classmethod
    def find(cls, token: str) -> ApiToken | None:
        """Return the active token matching `token`, or None."""
        parts = token.split("_")
        if len(parts) < 3 or parts[0] != "aes":
            return None
        row = cls.objects.filter(prefix=parts[1], revoked_at__isnull=True).first()
        if row is None or not secrets.compare_digest(row.digest, _digest(token)):
            return None
        return row

    def revoke(self) -> None:
        """Stop the token from working, keeping its row for the record."""
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])

    def touch(self) -> None:
        """Record a use, at most once a minute (one write, not one per request)."""
        now = timezone.now()
        if self.last_used_at is None or (now - self.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now
