"""Clients for AMS and CS: pseudo-synchronous requests (§5) behind tier-TTL caches."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import redis
from django.conf import settings
from pydantic import ValidationError

from aes_project import redis_clients
from executions import turns
from executions.exceptions import AgentNotFound, UpstreamError, UpstreamTimeout
from protocol import keys
from protocol.messages import (
    AMS_GET_AGENT_CONFIG,
    CONVERSATION,
    CS_GET_HISTORY,
    CS_SAVE_MESSAGE,
    MANAGEMENT,
    AgentConfig,
    AgentConfigRequest,
    DomainAction,
    DomainActionResponse,
    Envelope,
    HistoryMessage,
    HistoryRequest,
    new_id,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who a request is made for: every request of a run carries these (§1)."""

    task_id: str
    tenant_id: str
    tier: str
    session_id: str | None

    def message(self, action_type: str, data: dict, **extra) -> dict:
        """Return a request of this run to a peer service, ready for the wire."""
        return Envelope(
            action_type=action_type,
            data=data,
            task_id=self.task_id,
            tenant_id=self.tenant_id,
            tenant_tier=self.tier,
            session_id=self.session_id,
            **extra,
        ).dump()


def wait_for(list_key: str, timeout: float) -> bytes | None:
    """Return the first message pushed to `list_key` within `timeout` seconds, or None.

    Waits in slices of BLOCK_SECONDS so the socket timeout stays above every
    single blocking read, however long the whole wait is.
    """
    client = redis_clients.shared_blocking()
    deadline = time.monotonic() + timeout
    with turns.waiting():
        while (remaining := deadline - time.monotonic()) > 0:
            got = client.blpop([list_key], timeout=min(remaining, keys.BLOCK_SECONDS))
            if got is not None:
                return got[1]
    return None


def request(caller: Caller, service: str, action_type: str, data: dict, timeout: float) -> dict:
    """Send one request to `service` and return the reply's data (§5).

    Raises UpstreamTimeout when no reply comes in `timeout` seconds and
    UpstreamError when the reply says success false or is malformed.
    """
    correlation_id = new_id()
    reply_list = keys.responses(correlation_id)
    message = caller.message(
        action_type, data, correlation_id=correlation_id, callback_queue=reply_list
    )
    redis_clients.shared().lpush(keys.peer_actions(service, caller.tier), json.dumps(message))
    raw = wait_for(reply_list, timeout)
    if raw is None:
        raise UpstreamTimeout(f"{action_type}: no reply within {timeout:.1f}s")
    try:
        reply = DomainActionResponse.model_validate_json(raw)
    except ValidationError as exc:
        raise UpstreamError(
            f"{action_type}: malformed reply ({exc.error_count()} errors)"
        ) from None
    if not reply.success:
        code = reply.error.code if reply.error else "UNKNOWN"
        detail = reply.error.message if reply.error else ""
        raise UpstreamError(f"{action_type} failed: {code} {detail}".strip(), code)
    return reply.data


def peer_timeout(deadline: float) -> float:
    """Return how long a request may wait: the configured timeout, cut by the run's deadline."""
    return max(0.0, min(settings.AES_PEER_TIMEOUT_SECONDS, deadline - time.monotonic()))


def get_agent_config(caller: Caller, agent_id: str, ttl: int, deadline: float) -> AgentConfig:
    """Return the agent's configuration from the cache, or from AMS (§5.1)."""
    key = keys.agent_config(caller.tenant_id, agent_id)
    cached = redis_clients.shared().get(key)
    if cached is not None:
        try:
            return AgentConfig.model_validate_json(cached)
        except ValidationError:
            log.warning("dropping malformed cached agent config %s", key)
    try:
        data = request(
            caller,
            MANAGEMENT,
            AMS_GET_AGENT_CONFIG,
            AgentConfigRequest(agent_id=agent_id).model_dump(),
            peer_timeout(deadline),
        )
    except UpstreamError as exc:
        if exc.upstream_code == "NOT_FOUND":
            raise AgentNotFound(f"agent {agent_id!r} not found") from None
        raise
    try:
        agent = AgentConfig.model_validate(data.get("agent"))
    except ValidationError:
        raise UpstreamError(f"AMS returned no valid agent for {agent_id!r}") from None
    redis_clients.shared().set(key, agent.model_dump_json(), ex=ttl)
    return agent


def get_history(
    caller: Caller, session_id: str, limit: int, ttl: int, deadline: float
) -> list[HistoryMessage]:
    """Return the session's last `limit` messages, oldest first, cached (§5.2)."""
    key = keys.history(caller.tenant_id, session_id)
    cached = redis_clients.shared().get(key)
    if cached is not None:
        return [HistoryMessage.model_validate(item) for item in json.loads(cached)][-limit:]
    data = request(
        caller,
        CONVERSATION,
        CS_GET_HISTORY,
        HistoryRequest(session_id=session_id, limit=limit).model_dump(),
        peer_timeout(deadline),
    )
    try:
        messages = [HistoryMessage.model_validate(item) for item in data.get("messages", [])]
    except (ValidationError, TypeError):
        raise UpstreamError("CS returned malformed history") from None
    messages = messages[-limit:]
    redis_clients.shared().set(
        key, json.dumps([m.model_dump(exclude_none=True) for m in messages]), ex=ttl
    )
    return messages


def append_to_history(caller: Caller, session_id: str, messages: list[dict], limit: int) -> None:
    """Append saved messages to the cached history, if cached, keeping its TTL.

    An optimistic transaction (WATCH) so a concurrent refresh is never
    overwritten with a stale copy; on a clash the cache is dropped instead.
    """
    key = keys.history(caller.tenant_id, session_id)
    with redis_clients.shared().pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)
            cached = pipe.get(key)
            if cached is None:
                return
            history = (json.loads(cached) + messages)[-limit:]
            pipe.multi()
            pipe.set(key, json.dumps(history), keepttl=True)
            pipe.execute()
        except redis.WatchError:
            redis_clients.shared().delete(key)


def save_message(caller: Caller, message: dict, *, wait: bool, deadline: float) -> None:
    """Save one message to CS: waiting for its confirmation when `wait` is set (§5.2)."""
    if wait:
        request(caller, CONVERSATION, CS_SAVE_MESSAGE, message, peer_timeout(deadline))
        return
    redis_clients.shared().lpush(
        keys.peer_actions(CONVERSATION, caller.tier),
        json.dumps(caller.message(CS_SAVE_MESSAGE, message)),
    )


# Routes a callback to the run waiting for it, only while one waits and only
# when it names that run's tenant and task: a late, unmatched or forged
# callback creates no key. Returns 1 routed, 0 nobody waits, -1 mismatch.
_ROUTE = """
local expected = redis.call('GET', KEYS[1])
if not expected then return 0 end
if expected ~= ARGV[3] then return -1 end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


def _owner(tenant_id: str | None, task_id: str | None) -> str:
    """Return what a callback must name to reach a waiting run: its tenant and task."""
    return json.dumps([tenant_id, task_id])


def route_peer_callback(callback: DomainAction, raw: bytes) -> int:
    """Hand an ES or QS callback to the run waiting on its correlation_id (§7).

    Return 1 when routed, 0 when no run waits for it, -1 when a run waits
    but the callback names another tenant or task (it is dropped).
    """
    assert callback.correlation_id
    return int(
        redis_clients.shared().eval(
            _ROUTE,
            2,
            keys.waiting(callback.correlation_id),
            keys.responses(callback.correlation_id),
            raw,
            keys.REPLY_TTL_SECONDS,
            _owner(callback.tenant_id, callback.task_id),
        )
    )


def call_async(caller: Caller, service: str, action_type: str, data: dict, timeout: float) -> dict:
    """Send a request answered on the shared callbacks list (§7); return its data.

    The consumer takes the callback from `execution:{tier}:callbacks` and
    routes it here through Redis by correlation id, so the waiting job may
    be in any process on any machine.
    """
    if timeout <= 0:
        raise UpstreamTimeout(f"{action_type}: no time left to wait for an answer")
    correlation_id = new_id()
    waiting = keys.waiting(correlation_id)
    client = redis_clients.shared()
    message = caller.message(
        action_type,
        data,
        correlation_id=correlation_id,
        callback_queue=keys.callbacks(caller.tier),
    )
    with client.pipeline(transaction=False) as pipe:
        pipe.set(
            waiting,
            _owner(caller.tenant_id, caller.task_id),
            ex=max(1, int(timeout) + keys.SOCKET_MARGIN_SECONDS),
        )
        pipe.lpush(keys.peer_actions(service, caller.tier), json.dumps(message))
        pipe.execute()
    try:
        raw = wait_for(keys.responses(correlation_id), timeout)
    finally:
        client.delete(waiting, keys.responses(correlation_id))
    if raw is None:
        raise UpstreamTimeout(f"{action_type}: no callback within {timeout:.1f}s")
    try:
        callback = DomainAction.model_validate_json(raw)
    except ValidationError:
        raise UpstreamError(f"{action_type}: malformed callback") from None
    error = callback.data.get("error") or (callback.error.model_dump() if callback.error else None)
    if callback.success is False or error:
        code = error.get("code", "UNKNOWN") if isinstance(error, dict) else "UNKNOWN"
        detail = error.get("message", "") if isinstance(error, dict) else ""
        raise UpstreamError(f"{action_type} failed: {code} {detail}".strip(), code)
    return callback.data
