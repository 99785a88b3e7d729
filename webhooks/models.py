"""Webhooks: a run's callback POSTed to the URL its caller gave, signed, retried, each try kept.

A Webhook row is the outbox entry of one delivery: it is written in the
transaction that records the run's callback (Execution.finish), holds the
body it sends, and is claimed, sent and settled by the sender loop
(webhooks/sender.py) until a 2xx answer or the retry schedule runs out.
"""

from __future__ import annotations

import base64
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone

SECRET_PREFIX = "whsec_"
# Random bytes of a signing secret (Standard Webhooks asks for 24 to 64).
SECRET_BYTES = 32
# How long a rotated-out secret keeps signing beside the new one, by default:
# a day for receivers to switch over without refusing a delivery.
ROTATION_OVERLAP = timedelta(hours=24)


def new_secret() -> str:
    """Return a fresh signing secret as Standard Webhooks writes it: whsec_ and base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class SigningSecret(models.Model):
    """A tenant's webhook signing secret: one current, and earlier ones until they expire.

    A rotated-out secret keeps signing beside the new one until `expires_at`
    (Standard Webhooks sends several signatures, space-separated), so a
    receiver can switch secrets without refusing a single delivery.
    """

    tenant_id = models.CharField(max_length=255, db_index=True)
    secret = models.CharField(max_length=128, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Empty for the current secret; a rotated one signs until then.",
    )

    class Meta:
        ordering = ["tenant_id", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant_id"],
                condition=models.Q(expires_at__isnull=True),
                name="webhook_secret_one_current",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} ({'current' if self.expires_at is None else 'rotated'})"

    @classmethod
    def current(cls, tenant_id: str) -> SigningSecret:
        """Return the tenant's current secret, creating it on first need."""
        found = cls.objects.filter(tenant_id=tenant_id, expires_at__isnull=True).first()
        if found is not None:
            return found
        try:
            with transaction.atomic():
                return cls.objects.create(tenant_id=tenant_id, secret=new_secret())
        except IntegrityError:  # created meanwhile by another process
            return cls.objects.get(tenant_id=tenant_id, expires_at__isnull=True)

    @classmethod
    def signing(cls, tenant_id: str) -> list[str]:
        """Return the secrets a delivery is signed with now: the current one first."""
        current = cls.current(tenant_id)
        earlier = cls.objects.filter(tenant_id=tenant_id, expires_at__gt=timezone.now())
        return [current.secret, *earlier.order_by("-created_at").values_list("secret", flat=True)]

    @classmethod
    def rotate(cls, tenant_id: str, overlap: timedelta) -> SigningSecret:
        """Make a new current secret; the one it replaces signs beside it for `overlap`."""
        now = timezone.now()
        with transaction.atomic():
            cls.objects.filter(tenant_id=tenant_id, expires_at__isnull=True).update(
                expires_at=now + overlap
            )
            # Earlier secrets never outlive the one just rotated out.
            cls.objects.filter(tenant_id=tenant_id, expires_at__gt=now + overlap).update(
                expires_at=now + overlap
            )
            return cls.objects.create(tenant_id=tenant_id, secret=new_secret())


class Webhook(models.Model):
    """One run's callback to deliver to one URL, and where its delivery stands."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed", "failed (gave up)"

    execution = models.ForeignKey(
        "executions.Execution", on_delete=models.CASCADE, related_name="webhooks"
    )
    tenant_id = models.CharField(max_length=255)
    url = models.CharField(max_length=2048)
    event_id = models.CharField(
        max_length=255, unique=True, help_text="The callback's event_id, sent as webhook-id."
    )
    payload = models.JSONField(help_text="The execution.callback it sends.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    failures = models.PositiveIntegerField(
        default=0, help_text="Failed attempts since it was (re)started: its place in the schedule."
    )
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # The sender's scan: pending deliveries by when they are due.
            models.Index(
                fields=["next_attempt_at"],
                name="webhook_due",
                condition=models.Q(status="pending"),
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_id} ({self.status})"

    @classmethod
    def record(cls, execution: Any, url: str, callback: dict[str, Any]) -> Webhook:
        """Record the delivery of a run's callback to `url`, due now.

        Called inside the transaction that stores the callback, so a run has
        its webhook exactly when it has its callback.
        """
        return cls.objects.create(
            execution_id=execution.pk,
            tenant_id=execution.tenant_id,
            url=url,
            event_id=callback["event_id"],
            payload=callback,
            next_attempt_at=timezone.now(),
        )

    @classmethod
    def claim_due(cls, limit: int, hold_seconds: float) -> list[Webhook]:
        """Take up to `limit` due deliveries for `hold_seconds`; return those this process won.

        A conditional UPDATE per row instead of a lock: of two senders that
        read the same due row, one moves its `next_attempt_at` and sends it.
        One that dies while sending leaves the row due again when the hold ends.
        """
        if limit <= 0:
            return []
        now = timezone.now()
        due = cls.objects.filter(status=cls.Status.PENDING, next_attempt_at__lte=now)
        held = now + timedelta(seconds=hold_seconds)
        won = []
        for webhook in due.order_by("next_attempt_at")[:limit]:
            rows = cls.objects.filter(
                pk=webhook.pk, status=cls.Status.PENDING, next_attempt_at=webhook.next_attempt_at
            )
            if rows.update(next_attempt_at=held) == 1:
                webhook.next_attempt_at = held
                won.append(webhook)
        return won

    def settle(self, attempt: WebhookAttempt) -> None:
        """Record a finished attempt, and deliver, schedule the next or give up.

        The webhook moves on only while this sender still holds it (a resend
        or another sender after a lapsed hold may have taken it over); the
        attempt is recorded either way.
        """
        schedule = settings.AES_WEBHOOK_RETRY_SECONDS
        now = timezone.now()
        with transaction.atomic():
            attempt.save()
            held = Webhook.objects.filter(
                pk=self.pk, status=self.Status.PENDING, next_attempt_at=self.next_attempt_at
            )
            changes: dict[str, Any]
            if attempt.outcome == WebhookAttempt.Outcome.DELIVERED:
                changes = {"status": self.Status.DELIVERED, "delivered_at": now}
                changes["next_attempt_at"] = None
            elif self.failures < len(schedule):
                delay = timedelta(seconds=schedule[self.failures])
                changes = {"failures": self.failures + 1, "next_attempt_at": now + delay}
            else:
                changes = {"status": self.Status.FAILED, "failures": self.failures + 1}
                changes["next_attempt_at"] = None
            if held.update(**changes) == 1:
                for field, value in changes.items():
                    setattr(self, field, value)

    def resend(self) -> None:
        """Send it again now, same webhook-id; retried on the schedule from its start."""
        self.status, self.failures, self.next_attempt_at = self.Status.PENDING, 0, timezone.now()
        Webhook.objects.filter(pk=self.pk).update(
            status=self.status, failures=0, next_attempt_at=self.next_attempt_at
        )

    @property
    def gave_up(self) -> bool:
        return self.status == self.Status.FAILED


class WebhookAttempt(models.Model):
    """One POST of a webhook: when, what came back, how long it took."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered", "delivered (2xx)"
        HTTP_ERROR = "http_error", "answered, not 2xx"
        NO_ANSWER = "no_answer", "no answer"
        REFUSED = "refused", "host refused by policy"

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="attempts")
    started_at = models.DateTimeField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["started_at", "id"]

    def __str__(self) -> str:
        return f"{self.outcome} {self.status_code or ''}".strip()
