"""Runs started through the REST API take the same path as Redis producers'."""

from __future__ import annotations

import json
import uuid
from typing import Any

from executions.models import execution_id_for
from protocol import keys
from protocol.messages import AGENT_RUN, now_iso
from workers import admission, redis_client

RUN_DATA_FIELDS = (
    "agent_id",
    "message",
    "message_type",
    "user_info",
    "conversation_id",
    "max_iterations",
    "timeout",
)


def submit_agent_run(
    fields: dict[str, Any],
    *,
    tenant_id: str,
    tier: str,
    action_id: str | None = None,
    own_queues_only: bool,
) -> tuple[str, uuid.UUID]:
    """Push an execution.agent_run onto the tier's list; return (action_id, execution id).

    The message passes the consumer's own checks (workers/admission.py)
    first, so what the API accepts the consumer records; `own_queues_only`
    (a tenant's run) keeps its callback queue under the tenant's prefix.
    Raises admission.Refused.
    """
    action_id = action_id or str(uuid.uuid4())
    message = {
        "action_id": action_id,
        "action_type": AGENT_RUN,
        "task_id": fields.get("task_id") or action_id,
        "tenant_id": tenant_id,
        "tenant_tier": tier,
        "session_id": fields.get("session_id"),
        "correlation_id": None,
        "callback_queue": fields.get("callback_queue"),
        "data": {name: fields[name] for name in RUN_DATA_FIELDS if name in fields},
        "metadata": fields.get("metadata") or {},
        "timestamp": now_iso(),
    }
    raw = json.dumps(message).encode()
    action, request = admission.parse(raw)
    admission.agent_run(action, request)
    if own_queues_only:
        admission.check_tenant_queue(action.callback_queue, tenant_id)
    redis_client.shared().lpush(keys.actions(tier), raw)
    return action_id, execution_id_for(tenant_id, action_id)
