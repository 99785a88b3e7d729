"""What the AES accepts from either door, the action lists or the REST API: one set of checks.

A message that fails here is refused at once with a code and a message that
names the field: the consumer dead-letters it (no retries, nothing behind it
waits), the API answers 4xx. What passes can be stored as it is: every
string fits a PostgreSQL text or jsonb value, every number is finite, and
nothing is nested deeper than MAX_JSON_DEPTH.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from pydantic import ValidationError

from aes_project.outbound import RefusedURL
from protocol import keys
from protocol.messages import AgentRunData, DomainAction, describe
from protocol.storable import UNSTORABLE
from tiers import lookup
from tiers.models import Tier
from webhooks import hosts

# Levels of objects and arrays a message may nest (the envelope and `data`
# use three; the rest is room for `metadata` and `user_info`).
MAX_JSON_DEPTH = 32


class Refused(Exception):
    """The message cannot be accepted; `code`, `message` and `field` say why."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class AgentRun:
    """An execution.agent_run that passed every check."""

    action: DomainAction
    data: AgentRunData
    agent_id: str
    request: dict[str, Any]
    tier: Tier


def parse(raw: bytes) -> tuple[DomainAction, dict[str, Any]]:
    """Return the envelope of a message from an action list and its JSON, or raise Refused."""
    if len(raw) > settings.AES_MAX_MESSAGE_BYTES:
        raise Refused(
            "MESSAGE_TOO_LARGE",
            f"message of {len(raw)} bytes exceeds {settings.AES_MAX_MESSAGE_BYTES}",
        )
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise Refused("INVALID_ACTION", "the message is not valid JSON") from None
    if not isinstance(value, dict):
        raise Refused("INVALID_ACTION", "the message is not a JSON object")
    check_storable(value)
    try:
        action = DomainAction.model_validate(value)
    except ValidationError as exc:
        raise Refused("INVALID_ACTION", describe(exc), _first_field(exc)) from None
    queue = action.callback_queue
    if queue is not None and keys.is_reserved(queue):
        raise Refused(
            "INVALID_CALLBACK_QUEUE",
            f"callback_queue {queue!r} lies in a namespace reserved to the AES",
            "callback_queue",
        )
    return action, value


def agent_run(action: DomainAction, request: dict[str, Any]) -> AgentRun:
    """Return the checked run of an execution.agent_run envelope, or raise Refused."""
    try:
        data = AgentRunData.model_validate(action.data)
    except ValidationError as exc:
        field = _first_field(exc)
        raise Refused(
            "INVALID_ACTION", "data." + describe(exc), f"data.{field}" if field else "data"
        ) from None
    context = action.execution_context
    agent_id = data.agent_id or (context.primary_agent_id if context else None)
    if not agent_id:
        raise Refused(
            "INVALID_ACTION",
            "data.agent_id or execution_context.primary_agent_id is required",
            "data.agent_id",
        )
    tier = lookup.get_tier(action.tenant_tier)
    if tier is None:
        raise Refused(
            "INVALID_ACTION", f"unknown tenant_tier {action.tenant_tier!r}", "tenant_tier"
        )
    if data.webhook_url is not None:
        try:
            hosts.check(data.webhook_url)
        except RefusedURL as exc:
            raise Refused(
                "INVALID_ACTION", f"data.webhook_url: {exc}", "data.webhook_url"
            ) from None
    return AgentRun(action, data, agent_id, request, tier)


def check_tenant_queue(queue: str | None, tenant_id: str) -> None:
    """Refuse a callback queue outside the tenant's own `callbacks:{tenant_id}:` (§3)."""
    prefix = keys.tenant_callbacks_prefix(tenant_id)
    if queue is not None and not (queue.startswith(prefix) and len(queue) > len(prefix)):
        raise Refused(
            "INVALID_CALLBACK_QUEUE",
            f"a tenant's callback_queue must lie under {prefix!r}",
            "callback_queue",
        )


def check_storable(value: Any) -> None:
    """Raise Refused unless PostgreSQL can store `value` as it is, naming the first bad field.

    Iterative, so a hostile depth cannot exhaust the stack.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, float) and not math.isfinite(item):
            raise Refused("INVALID_ACTION", f"{where or 'message'}: not a finite number", where)
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise Refused(
                    "INVALID_ACTION",
                    f"{where or 'message'}: nested deeper than {MAX_JSON_DEPTH} levels",
                    where,
                )
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                path = f"{where}.{key}" if where else str(key)
                if isinstance(key, str):
                    _check_text(key, path)
                stack.append((child, path, depth + 1))


def _check_text(text: str, where: str) -> None:
    if found := UNSTORABLE.search(text):
        what = "NUL characters" if found.group() == "\x00" else "unpaired surrogates"
        raise Refused("INVALID_ACTION", f"{where or 'message'}: {what} are not allowed", where)


def _no_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity, which JSON itself and jsonb do not.
    raise ValueError(f"{name} is not JSON")


def _first_field(error: ValidationError) -> str | None:
    errors = error.errors()
    return ".".join(str(part) for part in errors[0]["loc"]) if errors else None
