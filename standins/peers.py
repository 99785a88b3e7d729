"""DevPeers: stand-ins for AMS, CS, ES and QS speaking the Redis protocol of PROTOCOL.md.

Plain Python (no Django), so tests and scripts can run it in a thread.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from protocol import keys
from protocol.messages import (
    AMS_GET_AGENT_CONFIG,
    CONVERSATION,
    CS_GET_HISTORY,
    CS_SAVE_MESSAGE,
    EMBEDDING,
    EMBEDDING_CALLBACK,
    ES_REQUEST,
    MANAGEMENT,
    QS_REQUEST,
    QUERY,
    QUERY_CALLBACK,
)

logger = logging.getLogger("standins.peers")

SERVICES = (MANAGEMENT, CONVERSATION, EMBEDDING, QUERY)
DEFAULT_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "dev_peers.json"
EMBEDDING_MODEL = "stand-in-embedding"
_CALLBACKS = {EMBEDDING: EMBEDDING_CALLBACK, QUERY: QUERY_CALLBACK}
_ECHOED = ("task_id", "tenant_id", "tenant_tier", "session_id", "correlation_id")
_STOPWORDS = frozenset(
    "a an and are at be by can do does for from how i in is it me my of on or the to what "
    "when where which who why will with you your".split()
)
# Seeds a session's Redis list from the fixture only if the list does not exist yet,
# atomically, so several DevPeers processes sharing one Redis never seed it twice.
_SEED_SESSION = (
    "if redis.call('EXISTS', KEYS[1]) == 0 then "
    "for i = 1, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end end return 1"
)


class RequestError(Exception):
    """A request we understood but cannot serve; becomes an error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


# Placeholders of the fixture's tool URLs, and the variables that fill them
# (`run_local` sets them to the stand-in tool servers it starts).
URL_PLACEHOLDERS = {"{tools_url}": "AES_STANDIN_TOOLS_URL", "{mcp_url}": "AES_STANDIN_MCP_URL"}


def load_fixture(path: str | None = None) -> dict:
    """Read the agents/sessions/documents fixture (default: fixtures/dev_peers.json)."""
    with open(path or DEFAULT_FIXTURE, encoding="utf-8") as fh:
        text = fh.read()
    for placeholder, variable in URL_PLACEHOLDERS.items():
        if os.environ.get(variable):
            text = text.replace(placeholder, os.environ[variable].rstrip("/"))
    return json.loads(text)


def conversation_key(session_id: str) -> str:
    """The list where the stand-in CS keeps a session's messages."""
    return f"devpeers:conversation:{session_id}"


def _service(queue: str) -> str:
    """The service whose action list `queue` is."""
    return queue.split(":", 1)[0]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _words(text: str) -> set[str]:
    """Lower-cased content words with a naive plural strip, so 'refunds' finds 'refund'."""
    words = set(re.findall(r"[a-z0-9]+", text.lower())) - _STOPWORDS
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words}


def search_documents(documents: list[dict], query: str, top_k: int) -> list[tuple[float, dict]]:
    """Top `top_k` documents by the share of the query's words they contain (0 < score <= 1)."""
    wanted = _words(query)
    if not wanted:
        return []
    scored = [(len(wanted & _words(d.get("content", ""))) / len(wanted), d) for d in documents]
    # sorted() is stable, so fixture order breaks ties and results are deterministic.
    return sorted((s for s in scored if s[0] > 0), key=lambda s: s[0], reverse=True)[:top_k]


def fake_embedding(text: str, dims: int = 8) -> list[float]:
    """Deterministic pseudo-embedding in [-1, 1] derived from sha256(text)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [round(digest[i] / 127.5 - 1.0, 6) for i in range(dims)]


class DevPeers:
    """Consumes `{service}:{tier}:actions` and answers like the real peer services.

    `fixture` is kept by reference, so tests may add agents or documents while serving.
    `handled` counts every message taken, by action type, before it is answered.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        tiers: list[str],
        fixture: dict,
        *,
        silent: frozenset[str] = frozenset(),
        delay_seconds: float = 0.0,
    ) -> None:
        unknown = set(silent) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services in silent: {sorted(unknown)}")
        self.redis = redis_client
        self.tiers = list(tiers)
        self.fixture = fixture
        self.silent = frozenset(silent)
        self.delay_seconds = delay_seconds
        self.handled: dict[str, int] = {}
        self.malformed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seed = self.redis.register_script(_SEED_SESSION)
        # Keyed by action type; a handler only answers on its own service's lists.
        self._handlers = {
            AMS_GET_AGENT_CONFIG: self._get_agent_config,
            CS_GET_HISTORY: self._get_history,
            CS_SAVE_MESSAGE: self._save_message,
            ES_REQUEST: self._embedding_request,
            QS_REQUEST: self._query_request,
        }

    @property
    def queues(self) -> list[str]:
        """Every list served, tiers in the order given (BRPOP favours earlier keys)."""
        return [keys.peer_actions(service, tier) for tier in self.tiers for service in SERVICES]

    def serve(self, stop: threading.Event) -> None:
        """Take messages until `stop` is set; each is handled in a small thread pool.

        Conversation messages are handled one at a time, in the order they
        arrived, as a real CS keeps a session's messages in order.
        """
        self._stop = stop
        with (
            ThreadPoolExecutor(max_workers=8, thread_name_prefix="devpeers") as pool,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="devpeers-cs") as ordered,
        ):
            while not stop.is_set():
                try:
                    item = self.redis.brpop(self.queues, timeout=1)
                except redis.RedisError as exc:
                    logger.warning("BRPOP failed (%s); retrying in 1 s", exc)
                    stop.wait(1)
                    continue
                if item is not None:
                    queue = _text(item[0])
                    runner = ordered if _service(queue) == CONVERSATION else pool
                    runner.submit(self._handle, queue, item[1])
            pool.shutdown(wait=True, cancel_futures=True)
            ordered.shutdown(wait=True, cancel_futures=True)

    def start_in_thread(self) -> tuple[threading.Thread, threading.Event]:
        """Convenience for tests: serve in a daemon thread; set the event, then join."""
        stop = threading.Event()
        thread = threading.Thread(target=self.serve, args=(stop,), daemon=True, name="devpeers")
        thread.start()
        return thread, stop

    def _handle(self, queue: str, raw: bytes | str) -> None:
        # Runs in a pool thread: any exception here would vanish silently, so log it all.
        try:
            message = json.loads(raw)
            if not isinstance(message, dict) or not isinstance(message.get("action_type"), str):
                raise ValueError("not a DomainAction object with an action_type")
        except (ValueError, UnicodeDecodeError) as exc:
            with self._lock:
                self.malformed += 1
            logger.warning("Skipping malformed message on %s: %s (%.200r)", queue, exc, raw)
            return
        action_type = message["action_type"]
        with self._lock:
            self.handled[action_type] = self.handled.get(action_type, 0) + 1
        service = _service(queue)
        if service in self.silent:
            return
        if self.delay_seconds > 0 and self._stop.wait(self.delay_seconds):
            return  # stopping: nobody should be waiting for this answer any more
        try:
            self._dispatch(service, message)
        except Exception:
            logger.exception("Failed to handle %s from %s", action_type, queue)

    def _dispatch(self, service: str, message: dict[str, Any]) -> None:
        action_type = message["action_type"]
        handler = self._handlers.get(action_type) if action_type.startswith(f"{service}.") else None
        data = message.get("data") if message.get("data") is not None else {}
        result, error = None, None
        try:
            if handler is None:
                raise RequestError("UNKNOWN_ACTION", f"{service} does not handle this action")
            if not isinstance(data, dict):
                raise RequestError("INVALID_REQUEST", "data must be an object")
            result = handler(message, data)
        except RequestError as exc:
            logger.info("%s answered with %s: %s", action_type, exc.code, exc.message)
            error = {"code": exc.code, "message": exc.message}
        if service in _CALLBACKS:
            # ES/QS answer on the shared callbacks list: always a callback envelope, never a
            # §2 reply, because a §2 reply would put a TTL on that shared list.
            self._callback(message, _CALLBACKS[service], result or {"error": error})
        elif result is not None or error is not None:
            self._reply(message, result, error)

    def _reply(self, request: dict[str, Any], data: dict | None, error: dict | None) -> None:
        """§2 reply: LPUSH + EXPIRE 300 in one MULTI; only when the request asks for one."""
        queue, correlation_id = request.get("callback_queue"), request.get("correlation_id")
        if not queue or not correlation_id:
            if error is not None:
                logger.warning("%s failed with no reply queue: %s", request["action_type"], error)
            return
        reply = {
            "action_id": str(uuid.uuid4()),
            "correlation_id": correlation_id,
            "task_id": request.get("task_id") or "",
            "success": error is None,
            "data": data if error is None else {},
            "error": error,
            "timestamp": _now(),
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(queue, json.dumps(reply))
        pipe.expire(queue, keys.REPLY_TTL_SECONDS)
        pipe.execute()

    def _callback(self, request: dict[str, Any], action_type: str, data: dict) -> None:
        """Async callback (§7): a DomainAction envelope, plain LPUSH, no TTL."""
        queue = request.get("callback_queue")
        if not queue:
            logger.warning("%s without callback_queue; result dropped", request["action_type"])
            return
        error = data.get("error")
        envelope = {
            "action_id": str(uuid.uuid4()),
            "action_type": action_type,
            **{key: request.get(key) for key in _ECHOED},
            "data": data,
            "metadata": request.get("metadata") or {},
            "success": error is None,
            "error": error,
            "timestamp": _now(),
        }
        self.redis.lpush(queue, json.dumps(envelope))

    def _get_agent_config(self, message: dict, data: dict) -> dict:
        agent_id, tenant_id = data.get("agent_id"), message.get("tenant_id")
        if not isinstance(agent_id, str):
            raise RequestError("INVALID_REQUEST", "agent_id must be a string")
        agents = self.fixture.get("agents", {})
        for scope in (tenant_id, "*"):
            agent = agents.get(scope, {}).get(agent_id) if isinstance(scope, str) else None
            if agent is not None:
                return {"agent": {"agent_id": agent_id, **copy.deepcopy(agent)}}
        raise RequestError("NOT_FOUND", f"agent {agent_id!r} not found for tenant {tenant_id!r}")

    def _session_key(self, session_id: Any) -> str:
        if not isinstance(session_id, str) or not session_id:
            raise RequestError("INVALID_REQUEST", "session_id must be a non-empty string")
        key = conversation_key(session_id)
        seed = self.fixture.get("sessions", {}).get(session_id) or []
        if seed:
            self._seed(keys=[key], args=[json.dumps(m) for m in seed])
        return key

    def _get_history(self, message: dict, data: dict) -> dict:
        key, limit = self._session_key(data.get("session_id")), data.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
            raise RequestError("INVALID_REQUEST", "limit must be an integer")
        if limit is not None and limit <= 0:
            return {"messages": []}
        stored = map(json.loads, self.redis.lrange(key, -limit if limit else 0, -1))
        return {
            "messages": [{k: m.get(k) for k in ("role", "content", "created_at")} for m in stored]
        }

    def _save_message(self, message: dict, data: dict) -> dict:
        key = self._session_key(data.get("session_id"))
        if not isinstance(data.get("role"), str) or not isinstance(data.get("content"), str):
            raise RequestError("INVALID_REQUEST", "role and content must be strings")
        message_id = str(uuid.uuid4())
        fields = ("role", "content", "message_type", "agent_id", "task_id", "metadata")
        record = {"message_id": message_id, "created_at": _now()}
        record.update({k: data.get(k) for k in fields})
        self.redis.rpush(key, json.dumps(record))
        return {"saved": True, "message_id": message_id}

    def _embedding_request(self, message: dict, data: dict) -> dict:
        texts = data.get("texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise RequestError("INVALID_REQUEST", "texts must be a list of strings")
        embeddings = [fake_embedding(t) for t in texts]
        return {"embeddings": embeddings, "model": data.get("model") or EMBEDDING_MODEL}

    def _query_request(self, message: dict, data: dict) -> dict:
        query, collections, top_k = data.get("query"), data.get("collection_ids"), data.get("top_k")
        if not isinstance(query, str) or not isinstance(collections or [], list):
            raise RequestError("INVALID_REQUEST", "query must be a string, collection_ids a list")
        if top_k is None:
            top_k = 3
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
            raise RequestError("INVALID_REQUEST", "top_k must be a non-negative integer")
        extra = {"used_embedding": True} if data.get("query_embedding") is not None else {}
        documents = [
            {**doc, "metadata": {**doc.get("metadata", {}), "collection_id": cid, **extra}}
            for cid in collections or []
            for doc in self.fixture.get("documents", {}).get(cid, [])
        ]
        fields = ("document_id", "content", "metadata")
        results = [
            {**{k: doc.get(k) for k in fields}, "score": round(score, 4)}
            for score, doc in search_documents(documents, query, top_k)
        ]
        return {"results": results}
