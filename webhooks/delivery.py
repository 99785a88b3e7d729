"""One webhook attempt: the callback, signed as Standard Webhooks asks, POSTed within the policy.

Headers: `webhook-id` (the callback's event_id, the same on every attempt,
for receivers to deduplicate), `webhook-timestamp` (Unix seconds of this
attempt) and `webhook-signature` (`v1,<base64 HMAC-SHA256>` by each secret
the tenant signs with now, space-separated; webhooks/models.py,
SigningSecret). The body is the callback's JSON, the bytes that were signed.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

import httpx2
from django.conf import settings
from standardwebhooks import Webhook as Signer

from aes_project.outbound import RefusedURL
from webhooks import hosts, metrics
from webhooks.models import SigningSecret, Webhook, WebhookAttempt

log = logging.getLogger(__name__)

USER_AGENT = "AES-Webhooks/1"
# Redirects followed per attempt, each checked by the host policy.
MAX_REDIRECTS = 3
# Redirects that keep the method and the body. A 301, 302 or 303 would turn
# the POST into a GET without the callback: it is an answer that is not 2xx.
_SAME_METHOD = {307, 308}


def client() -> httpx2.Client:
    """Return an HTTP client whose every request, redirects too, the webhook host policy checks."""
    return hosts.policy().client(
        timeout=settings.AES_WEBHOOK_TIMEOUT_SECONDS,
        follow_redirects=False,
        headers={"user-agent": USER_AGENT},
    )


def hold_seconds() -> float:
    """Seconds a sender holds a delivery it claimed: longer than any one attempt takes."""
    return settings.AES_WEBHOOK_TIMEOUT_SECONDS * 2 * (MAX_REDIRECTS + 1) + 30


def signed_headers(webhook: Webhook, body: str, at: datetime) -> dict[str, str]:
    """Return the Standard Webhooks headers of `body` sent at `at`."""
    signatures = [
        Signer(secret).sign(webhook.event_id, at, body)
        for secret in SigningSecret.signing(webhook.tenant_id)
    ]
    return {
        "content-type": "application/json",
        "webhook-id": webhook.event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(signatures),
    }


def attempt(webhook: Webhook, http: httpx2.Client) -> WebhookAttempt:
    """POST the webhook once, record the attempt and settle the webhook; return the attempt."""
    body = json.dumps(webhook.payload)
    at = datetime.now(UTC)
    headers = signed_headers(webhook, body, at)
    started = time.monotonic()
    record = WebhookAttempt(webhook=webhook, started_at=at)
    try:
        record.status_code = _post(http, webhook.url, body, headers)
        ok = 200 <= record.status_code < 300
        record.outcome = (
            WebhookAttempt.Outcome.DELIVERED if ok else WebhookAttempt.Outcome.HTTP_ERROR
        )
        if not ok:
            record.error = f"answered HTTP {record.status_code}"
    except RefusedURL as exc:
        record.outcome, record.error = WebhookAttempt.Outcome.REFUSED, str(exc)
    except httpx2.TimeoutException:
        record.outcome = WebhookAttempt.Outcome.NO_ANSWER
        record.error = f"no answer within {settings.AES_WEBHOOK_TIMEOUT_SECONDS:g}s"
    except httpx2.HTTPError as exc:
        refused = _refusal(exc)
        if refused is not None:
            record.outcome, record.error = WebhookAttempt.Outcome.REFUSED, str(refused)
        else:
            record.outcome = WebhookAttempt.Outcome.NO_ANSWER
            record.error = f"{type(exc).__name__}: {exc}"[:500]
    record.duration_ms = int((time.monotonic() - started) * 1000)
    webhook.settle(record)
    metrics.count(record.outcome, gave_up=webhook.gave_up)
    level = logging.INFO if record.outcome == WebhookAttempt.Outcome.DELIVERED else logging.WARNING
    log.log(
        level,
        "webhook %s of execution %s: %s%s",
        webhook.event_id,
        webhook.execution_id,
        record.outcome,
        f" ({record.error})" if record.error else "",
    )
    return record


def _post(http: httpx2.Client, url: str, body: str, headers: dict[str, str]) -> int:
    """POST `body`, following method-keeping redirects; return the last status code."""
    for _ in range(MAX_REDIRECTS + 1):
        # The answer's body is never read: only its status counts.
        request = http.build_request("POST", url, content=body.encode(), headers=headers)
        response = http.send(request, stream=True)
        response.close()
        location = response.headers.get("location")
        if response.status_code not in _SAME_METHOD or not location:
            return response.status_code
        url = str(httpx2.URL(url).join(location))
    return response.status_code


def _refusal(exc: BaseException) -> RefusedURL | None:
    """Return the RefusedURL an httpx error was raised from, if it was."""
    seen: BaseException | None = exc
    for _ in range(10):  # a chain of causes is short; never follow one for ever
        if seen is None or isinstance(seen, RefusedURL):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
