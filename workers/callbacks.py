"""The one execution.callback of each run: built, recorded with the final status, pushed."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import redis
from django.utils import timezone

from executions.exceptions import RunError
from executions.models import Execution
from protocol import keys
from protocol.messages import EXECUTION_CALLBACK, ErrorInfo, ExecutionCallbackData, new_id, now_iso
from workers import metrics, redis_client

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
    event_id = new_id()
    return {
        "action_id": event_id,
        # Stable across re-sends, for receivers to deduplicate.
        "event_id": event_id,
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
        log.info(
            "execution %s ended %s%s",
            execution.id,
            outcome.status,
            f" ({outcome.error_code}: {outcome.error_message})" if outcome.error_code else "",
        )
        try:
            deliver(execution)
        except redis.RedisError as exc:
            # Recorded, not pushed: the reaper pushes it once Redis is back.
            log.warning("callback of %s not pushed yet: %s", execution.id, exc)
    return won


# The outbox's one step in Redis, atomic: count the run in the metrics and
# push its callback, each unless the run's outbox hash says it was done. A
# crash between the push and marking the row sent does not send it twice; a
# push that fails (the queue holds another type) leaves the run counted and
# the push to be tried again, since its LPUSH error aborts nothing before it.
# KEYS: outbox hash, metrics hash, metrics index[, callback queue].
# ARGV: hash TTL, callback JSON, then metric field and amount pairs.
_OUTBOX = """
if redis.call('HSETNX', KEYS[1], 'counted', '1') == 1 then
  redis.call('SADD', KEYS[3], KEYS[2])
  for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if not KEYS[4] or redis.call('HEXISTS', KEYS[1], 'pushed') == 1 then return 0 end
local pushed = redis.pcall('LPUSH', KEYS[4], ARGV[2])
if type(pushed) == 'table' and pushed.err then return redis.error_reply(pushed.err) end
redis.call('HSET', KEYS[1], 'pushed', '1')
return 1
"""
# Seconds the outbox hash of a run is kept until its row says sent (a crash
# in between leaves it for the reaper, however late it comes), and once it
# does: long enough to outlast any deliverer that read the row before it was
# marked (the reaper waits CALLBACK_GRACE_SECONDS, 10 s). At 100 runs/s,
# hashes kept a week would hold ~6 GB of Redis; an hour, 37 MB.
SENT_MARKER_TTL_SECONDS = 7 * 24 * 3600
SENT_MARKER_KEPT_SECONDS = 3600


def deliver(execution: Execution, *, again: bool = False) -> bool:
    """Count the ended run, push its recorded callback, and mark it sent.

    The outbox's second half: the callback was stored with the final status,
    so it can be pushed later by anyone (the reaper, an operator) exactly
    once; `again` re-sends it on purpose (same event_id, for receivers to
    deduplicate). A run without a callback queue is counted and marked sent.
    Return True when a message was pushed.
    """
    if execution.callback is None or (execution.callback_sent_at is not None and not again):
        return False
    marker = keys.outbox(str(execution.id))
    client = redis_client.shared()
    if again:
        client.hdel(marker, "pushed")
    metric_keys = [marker, keys.metrics(execution.tier, execution.tenant_id), keys.METRICS_INDEX]
    queue = [execution.callback_queue] if execution.callback_queue else []
    amounts = [part for pair in metrics.increments(execution) for part in pair]
    pushed = bool(
        client.eval(
            _OUTBOX,
            len(metric_keys) + len(queue),
            *metric_keys,
            *queue,
            SENT_MARKER_TTL_SECONDS,
            json.dumps(execution.callback),
            *amounts,
        )
    )
    execution.mark_callback_sent()
    try:
        client.expire(marker, SENT_MARKER_KEPT_SECONDS)
    except redis.RedisError as exc:
        # Pushed and recorded: a marker that keeps its week costs only memory.
        log.warning("callback marker of %s kept a week: %s", execution.id, exc)
    return pushed


def reject_unrecorded(queue: str, request: dict[str, Any], code: str, message: str) -> None:
    """Send an error callback for a message that never became an Execution."""
    data = ExecutionCallbackData(
        execution_id=None,
        status="rejected",
        agent_id=_text_or_none((request.get("data") or {}).get("agent_id"))
        if isinstance(request.get("data"), dict)
        else None,
        error=ErrorInfo(code=code, message=message),
    )
    tier = request.get("tenant_tier")
    callback = envelope(request=request, tier=tier if isinstance(tier, str) else None, data=data)
    redis_client.shared().lpush(queue, json.dumps(callback))


def _text_or_none(value: Any) -> str | None:
    # A refused message may hold anything where a string belongs.
    return value if isinstance(value, str) else None
