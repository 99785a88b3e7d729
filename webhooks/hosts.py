"""The hosts webhooks may reach: AES_WEBHOOK_ALLOWED_HOSTS, read by aes_project/outbound.py.

The same policy is applied when a run asks for a webhook (executions/admission.py,
both doors) and on every request of every delivery, redirects included.
"""

from __future__ import annotations

from django.conf import settings

from aes_project.outbound import HostPolicy


def policy() -> HostPolicy:
    """Return the policy of the setting in force (parsed once per value)."""
    return HostPolicy.from_setting(settings.AES_WEBHOOK_ALLOWED_HOSTS)


def check(url: str) -> None:
    """Raise outbound.RefusedURL unless a webhook may be sent to `url`."""
    policy().check(url)
