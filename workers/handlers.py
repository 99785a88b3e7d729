"""What the consumer does with one message: validate, record, enqueue, or dead-letter.

`handle` never raises for bad input: anything it cannot accept goes to the
dead-letter list with its reason, and gets an INVALID_ACTION callback when a
callback queue can be read from it.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from django.conf import settings
from django.db import DataError
from pydantic import ValidationError

from aes_project import redis_clients
from executions import admission, lifecycle, outbox
from executions.admission import Refused
from executions.agent import peers
from executions.models import Execution
from protocol import keys
from protocol.messages import (
    AGENT_RUN,
    CANCEL,
    EMBEDDING_CALLBACK,
    QUERY_CALLBACK,
    CancelData,
    DomainAction,
    ErrorInfo,
    describe,
    now_iso,
)
from workers import proxy

log = logging.getLogger(__name__)

# Characters of a refused message kept in its dead-letter entry.
DEAD_LETTER_RAW_CHARS = 64 * 1024


def handle(tier: str, raw: bytes) -> None:
    """Handle one message taken from `execution:{tier}:actions`."""
    try:
        action, request = admission.parse(raw)
        handler = HANDLERS.get(action.action_type)
        if handler is None:
            raise Refused(
                "INVALID_ACTION", f"unknown action_type {action.action_type!r}", "action_type"
            )
        try:
            handler(tier, action, request)
        except DataError:
            # Input the checks let through and the database still refused: bad
            # input, not a failure of ours, so it is not tried again.
            log.warning("the database refused action %s", action.action_id, exc_info=True)
            raise Refused(
                "INVALID_ACTION", "the message holds a value the database cannot store"
            ) from None
    except Refused as refusal:
        dead_letter(keys.actions(tier), raw, refusal.code, refusal.message)


def handle_peer_callback(tier: str, raw: bytes) -> None:
    """Hand an ES or QS callback to the run waiting for it, or drop it (§7)."""
    source = keys.callbacks(tier)
    if len(raw) > settings.AES_MAX_MESSAGE_BYTES:
        dead_letter(source, raw, "MESSAGE_TOO_LARGE", f"callback of {len(raw)} bytes")
        return
    try:
        callback = DomainAction.model_validate_json(raw)
    except ValidationError as exc:
        dead_letter(source, raw, "INVALID_ACTION", describe(exc))
        return
    if callback.action_type not in (EMBEDDING_CALLBACK, QUERY_CALLBACK):
        dead_letter(source, raw, "INVALID_ACTION", f"unexpected {callback.action_type!r}")
        return
    routed = peers.route_peer_callback(callback, raw) if callback.correlation_id else 0
    if routed == 0:
        log.info(
            "dropped %s for %s: no run waits for correlation_id %s",
            callback.action_type,
            callback.task_id,
            callback.correlation_id,
        )
    elif routed < 0:
        log.warning(
            "dropped %s for correlation_id %s: it names tenant %r and task %r, "
            "not those of the run waiting for it",
            callback.action_type,
            callback.correlation_id,
            callback.tenant_id,
            callback.task_id,
        )


def dead_letter(queue: str, raw: bytes, code: str, message: str) -> None:
    """Record a refused message for operators and tell its sender, if we can.

    The sender hears of it on its callback queue, unless that queue is the
    very reason (or reserved): then nothing is pushed anywhere. A message
    refused for a failure of ours (HANDLER_FAILED) gets INTERNAL, without
    the failure's text.
    """
    text = raw.decode("utf-8", errors="replace")
    entry = {
        "raw": text[:DEAD_LETTER_RAW_CHARS],
        "truncated": len(text) > DEAD_LETTER_RAW_CHARS,
        "error": {"code": code, "message": message},
        "queue": queue,
        "received_at": now_iso(),
    }
    redis_clients.shared().lpush(keys.DEAD_LETTER, json.dumps(entry))
    log.warning("dead-lettered a message from %s: %s %s", queue, code, message)
    request = _readable_object(raw)
    callback_queue = request.get("callback_queue") if request else None
    if (
        not isinstance(callback_queue, str)
        or not callback_queue
        or keys.is_reserved(callback_queue)
    ):
        return
    if code == "HANDLER_FAILED":
        code, message = "INTERNAL", "the AES could not record the message"
    else:
        code = "INVALID_ACTION"
    outbox.reject(callback_queue, request, code, message)


def _readable_object(raw: bytes) -> dict[str, Any] | None:
    if len(raw) > settings.AES_MAX_MESSAGE_BYTES:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _agent_run(tier: str, action: DomainAction, request: dict[str, Any]) -> None:
    run = admission.agent_run(action, request)
    if action.tenant_tier != tier:
        log.warning(
            "action %s says tier %s but came from %s; processing it as %s",
            action.action_id,
            action.tenant_tier,
            keys.actions(tier),
            tier,
        )
    lifecycle.accept(run, tier)


def _cancel(tier: str, action: DomainAction, request: dict[str, Any]) -> None:
    try:
        data = CancelData.model_validate(action.data)
    except ValidationError as exc:
        raise Refused("INVALID_ACTION", "data." + describe(exc)) from None
    # A tenant can only ever cancel its own runs.
    runs = Execution.objects.filter(tenant_id=action.tenant_id)
    if data.execution_id:
        runs = runs.filter(pk=data.execution_id) if _is_uuid(data.execution_id) else runs.none()
    if data.task_id:
        runs = runs.filter(task_id=data.task_id)
    found = list(runs)
    cancelled = [str(e.id) for e in found if lifecycle.cancel(e)]
    if not (action.correlation_id and action.callback_queue):
        return
    if cancelled:
        proxy.reply(action, data={"execution_ids": cancelled})
    elif found:
        proxy.reply(action, error=ErrorInfo(code="ALREADY_FINISHED", message="the run has ended"))
    else:
        proxy.reply(action, error=ErrorInfo(code="NOT_FOUND", message="no such run"))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _proxy(tier: str, action: DomainAction, request: dict[str, Any]) -> None:
    if not (action.correlation_id and action.callback_queue):
        raise Refused(
            "INVALID_ACTION", f"{action.action_type} needs correlation_id and callback_queue"
        )
    proxy.submit(tier, action)


HANDLERS = {
    AGENT_RUN: _agent_run,
    CANCEL: _cancel,
    **{action_type: _proxy for action_type in proxy.ANSWERS},
}
