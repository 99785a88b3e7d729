"""The one execution.callback of each run: built, recorded with the final status, pushed."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from executions.exceptions import RunError
from executions.models import Execution
from workers import metrics, redis_client
from workers.protocol import EXECUTION_CALLBACK, ErrorInfo, ExecutionCallbackData, new_id, now_iso

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How a run ended: everything its callback and its row need."""

    status: str
    response: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    iterations: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    agent_id: str | None = None

    @classmethod
    def from_error(cls, error: RunError, **partial: Any) -> Outcome:
        return cls(
            status=error.status, error_code=error.code, error_message=error.message, **partial
        )


def envelope(
    *,
    request: dict[str, Any],
    tier: str | None,
    data: ExecutionCallbackData,
) -> dict[str, Any]:
    """Return the execution.callback DomainAction answering `request` (§4)."""
    return {
        "action_id": new_id(),
        "action_type": EXECUTION_CALLBACK,
        "task_id": request.get("task_id"),
        "tenant_id": request.get("tenant_id"),
        "tenant_tier": tier,
        "session_id": request.get("session_id"),
        "correlation_id": request.get("correlation_id"),
        "callback_queue": None,
        "data": data.model_dump(mode="json"),
        "metadata": request.get("metadata") or {},
        "timestamp": now_iso(),
    }


def conclude(execution: Execution, outcome: Outcome) -> bool:
    """Record the outcome as the final status and send its callback; False if already ended."""
    started = execution.started_at or execution.queued_at
    data = ExecutionCallbackData(
        execution_id=str(execution.id),
        status=outcome.status,
        agent_id=outcome.agent_id or execution.agent_id,
        conversation_id=execution.conversation_id,
        response=outcome.response,
        tool_calls=outcome.tool_calls,
        sources=outcome.sources,
        iterations=outcome.iterations,
        usage=outcome.usage,
        execution_time_ms=int((timezone.now() - started).total_seconds() * 1000),
        error=(
            ErrorInfo(code=outcome.error_code, message=outcome.error_message or "")
            if outcome.error_code
            else None
        ),
    )
    callback = envelope(request=execution.request, tier=execution.tier, data=data)
    won = execution.finish(
        outcome.status,
        callback,
        response=outcome.response,
        error_code=outcome.error_code,
        error_message=outcome.error_message,
        iterations=outcome.iterations,
        usage=outcome.usage,
    )
    if won:
        deliver(execution)
        metrics.record(execution)
    return won


def deliver(execution: Execution) -> None:
    """Push the recorded callback to the run's callback queue and mark it sent."""
    if execution.callback is None or execution.callback_sent_at is not None:
        return
    if execution.callback_queue:
        redis_client.shared().lpush(execution.callback_queue, json.dumps(execution.callback))
    execution.mark_callback_sent()


def reject_unrecorded(queue: str, request: dict[str, Any], code: str, message: str) -> None:
    """Send an error callback for a message that never became an Execution."""
    data = ExecutionCallbackData(
        execution_id=None,
        status="rejected",
        agent_id=(request.get("data") or {}).get("agent_id")
        if isinstance(request.get("data"), dict)
        else None,
        error=ErrorInfo(code=code, message=message),
    )
    tier = request.get("tenant_tier")
    callback = envelope(request=request, tier=tier if isinstance(tier, str) else None, data=data)
    redis_client.shared().lpush(queue, json.dumps(callback))
