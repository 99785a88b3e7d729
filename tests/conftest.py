"""Fixtures: a real Redis (flushed around each test), a real database, peers and an LLM.

Only the network edges are doubles: the peer services speak the protocol over
Redis from threads (standins.peers), and the LLM is a local HTTP server
speaking Chat Completions (standins.llm) reached through the real openai client.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import django_rq
import pytest
from django.conf import settings
from django.db import connection
from rq import SimpleWorker

from aes_project import redis_clients
from standins.llm import LLMStandin
from standins.peers import DevPeers, load_fixture
from tiers import lookup
from workers.consumer import Consumer

TIERS = ["enterprise", "professional", "advance", "free"]


@pytest.fixture(autouse=True)
def fast_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def redis() -> Iterator[Any]:
    """The real Redis of settings.REDIS_URL, flushed before and after each test."""
    client = redis_clients.shared()
    client.flushdb()
    lookup.clear()
    yield client
    client.flushdb()


@pytest.fixture(scope="session")
def llm_server() -> Iterator[LLMStandin]:
    server = LLMStandin()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def llm(llm_server: LLMStandin, settings) -> LLMStandin:
    """The LLM stand-in with an empty script and no recorded requests."""
    llm_server.script.clear()
    llm_server.requests.clear()
    llm_server.latency_seconds = 0.0
    settings.OPENAI_BASE_URL = llm_server.url
    settings.OPENAI_API_KEY = "test-key"
    return llm_server


class PeersHandle:
    """Runs the dev peers in a thread; `silent` services never answer."""

    def __init__(self, silent: frozenset[str] = frozenset(), delay_seconds: float = 0.0) -> None:
        self.fixture = load_fixture()
        self.peers = DevPeers(
            redis_clients.shared(), TIERS, self.fixture, silent=silent, delay_seconds=delay_seconds
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.peers.serve, args=(self._stop,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def peers() -> Iterator[PeersHandle]:
    handle = PeersHandle()
    yield handle
    handle.stop()


@pytest.fixture
def start_peers() -> Iterator[Any]:
    """Start peers with options: start_peers(silent={"management"}, delay_seconds=1)."""
    started: list[PeersHandle] = []

    def start(silent: set[str] | frozenset[str] = frozenset(), delay_seconds=0.0) -> PeersHandle:
        handle = PeersHandle(frozenset(silent), delay_seconds)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


def agent_run(
    *,
    tier: str = "free",
    agent_id: str = "plain-bot",
    message: str = "Hello there",
    session_id: str | None = None,
    callback_queue: str | None = "test:callbacks",
    **data: Any,
) -> dict[str, Any]:
    """Return a valid execution.agent_run DomainAction."""
    return {
        "action_id": str(uuid.uuid4()),
        "action_type": "execution.agent_run",
        "task_id": f"task-{uuid.uuid4().hex[:8]}",
        "tenant_id": "tenant-a",
        "tenant_tier": tier,
        "session_id": session_id,
        "correlation_id": str(uuid.uuid4()),
        "callback_queue": callback_queue,
        "data": {"agent_id": agent_id, "message": message, **data},
        "metadata": {"origin": "tests"},
    }


def run_one(message: dict[str, Any], tier: str | None = None) -> Any:
    """Push one run, consume it, run its job; return its Execution, reloaded."""
    from executions.models import Execution

    push(message, tier or message["tenant_tier"])
    consume()
    work()
    return Execution.objects.get(action_id=message["action_id"])


def push(message: dict[str, Any] | bytes | str, tier: str = "free") -> None:
    raw = json.dumps(message) if isinstance(message, dict) else message
    redis_clients.shared().lpush(f"execution:{tier}:actions", raw)


def consume() -> Consumer:
    """Run a consumer in this process until every action list is empty."""
    consumer = Consumer(TIERS)
    consumer.run(burst=True)
    return consumer


def work() -> None:
    """Run every queued RQ job in this process, tiers in priority order.

    A consumer runs beside it in a thread to route the ES and QS callbacks
    the jobs wait for, as `run_execution_worker` does in production.
    """
    router = Consumer(TIERS)

    def route() -> None:
        try:
            router.run()
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=route, name="callback-router", daemon=True)
    thread.start()
    try:
        queues = [django_rq.get_queue(tier) for tier in TIERS]
        worker = SimpleWorker(
            queues, connection=queues[0].connection, serializer=queues[0].serializer
        )
        worker.work(burst=True)
    finally:
        router.stop()
        thread.join(timeout=15)


def callbacks(queue: str = "test:callbacks") -> list[dict[str, Any]]:
    """Return every callback pushed to `queue`, oldest first."""
    return [json.loads(raw) for raw in reversed(redis_clients.shared().lrange(queue, 0, -1))]


def dead_letters() -> list[dict[str, Any]]:
    return [
        json.loads(raw)
        for raw in reversed(redis_clients.shared().lrange("execution:dead_letter", 0, -1))
    ]


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child `manage.py` that shares this test's Redis and database."""
    env = dict(os.environ)
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        env["DATABASE_URL"] = f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    env["REDIS_URL"] = settings.REDIS_URL
    env.update(extra)
    return env


def wait_for(condition, timeout: float = 10.0) -> None:
    """Wait until `condition()` is true, failing the test after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)
