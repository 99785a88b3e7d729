"""Proxy actions (§6): answer other services' reads of agents and history from the cache.

They run in a small thread pool beside the consumer, so a cache miss that
waits on AMS or CS never holds up the runs behind it. A proxy read is
acknowledged once handed to the pool: it changes nothing, and if the answer
is lost with a crashed consumer the caller's own timeout covers it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from django.conf import settings
from django.db import close_old_connections
from pydantic import ValidationError

from aes_project import redis_clients
from executions.agent import peers
from executions.exceptions import RunError
from protocol import keys
from protocol.messages import (
    GET_AGENT_CONFIG,
    GET_CONTEXT,
    GET_HISTORY,
    AgentConfigRequest,
    ContextRequest,
    DomainAction,
    DomainActionResponse,
    ErrorInfo,
    HistoryRequest,
    describe,
)
from tiers import lookup
from tiers.models import Tier

log = logging.getLogger(__name__)

POOL_THREADS = 4
_pool: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="proxy")
    return _pool


def shutdown() -> None:
    """Finish the answers in hand (the consumer calls this when it stops)."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None


# A §2 reply: the EXPIRE only together with a successful LPUSH, atomically, so
# a reply aimed at a key of another type neither fails half-way nor sets a
# TTL on whatever that key holds.
_REPLY = """
local pushed = redis.pcall('LPUSH', KEYS[1], ARGV[1])
if type(pushed) == 'table' and pushed.err then return redis.error_reply(pushed.err) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return pushed
"""


def reply(request: DomainAction, *, data: dict | None = None, error: ErrorInfo | None = None):
    """Push a §2 reply to the request's callback queue, with its 300 s expiry."""
    queue = request.callback_queue
    if not queue or keys.is_reserved(queue):
        # The handlers refuse such requests before they get here.
        log.error("no reply to %s: callback queue %r is reserved", request.action_type, queue)
        return
    response = DomainActionResponse(
        correlation_id=request.correlation_id,
        task_id=request.task_id,
        success=error is None,
        data=data if error is None else {},
        error=error,
    )
    redis_clients.shared().eval(
        _REPLY, 1, queue, response.model_dump_json(), keys.REPLY_TTL_SECONDS
    )


def submit(tier: str, request: DomainAction) -> None:
    """Answer a proxy action in the pool."""
    pool().submit(_answer, tier, request)


def _answer(tier_name: str, request: DomainAction) -> None:
    close_old_connections()
    try:
        tier = lookup.get_tier(tier_name)
        caller = peers.Caller(request.task_id, request.tenant_id, tier_name, request.session_id)
        deadline = time.monotonic() + settings.AES_PEER_TIMEOUT_SECONDS
        data, error = ANSWERS[request.action_type](caller, tier, request.data, deadline), None
    except ValidationError as exc:
        data, error = None, ErrorInfo(code="INVALID_ACTION", message="data." + describe(exc))
    except RunError as exc:
        data, error = None, ErrorInfo(code=exc.code, message=exc.message)
    except Exception:
        log.exception("proxy action %s failed", request.action_type)
        data, error = None, ErrorInfo(code="INTERNAL", message="the answer could not be made")
    finally:
        close_old_connections()
    try:
        reply(request, data=data, error=error)
    except redis.RedisError as exc:
        # The caller's own timeout covers a reply that cannot be pushed.
        log.warning(
            "reply to %s on %r not pushed: %s", request.action_type, request.callback_queue, exc
        )


def _agent(caller: peers.Caller, tier: Tier, agent_id: str, deadline: float) -> dict:
    agent = peers.get_agent_config(caller, agent_id, tier.agent_config_cache_ttl, deadline)
    return agent.model_dump()


def _messages(
    caller: peers.Caller, tier: Tier, session_id: str, limit: int | None, deadline: float
) -> list[dict]:
    limit = min(limit or tier.max_history_messages, tier.max_history_messages)
    history = peers.get_history(caller, session_id, limit, tier.history_cache_ttl, deadline)
    return [message.model_dump() for message in history]


def _get_agent_config(caller, tier, data, deadline) -> dict[str, Any]:
    request = AgentConfigRequest.model_validate(data)
    return {"agent": _agent(caller, tier, request.agent_id, deadline)}


def _get_history(caller, tier, data, deadline) -> dict[str, Any]:
    request = HistoryRequest.model_validate(data)
    return {"messages": _messages(caller, tier, request.session_id, request.limit, deadline)}


def _get_context(caller, tier, data, deadline) -> dict[str, Any]:
    request = ContextRequest.model_validate(data)
    return {
        "agent": _agent(caller, tier, request.agent_id, deadline),
        "messages": _messages(caller, tier, request.session_id, request.limit, deadline),
    }


ANSWERS: dict[str, Callable[..., dict[str, Any]]] = {
    GET_AGENT_CONFIG: _get_agent_config,
    GET_HISTORY: _get_history,
    GET_CONTEXT: _get_context,
}
