"""What the tests share: messages, the intake and the jobs run in-process, child processes, waiting.

The fixtures are in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import django_rq
from django.conf import settings
from django.db import connection
from django.utils import timezone
from rq import SimpleWorker
from rq.worker import Worker

from aes_project import redis_clients
from executions.models import Execution, Status
from protocol import keys
from protocol.messages import AGENT_RUN
from standins.peers import DevPeers, load_fixture
from tiers import lookup
from workers.consumer import Consumer

PROJECT = Path(__file__).resolve().parent.parent
# Seconds a child `python` or `manage.py` may take before the test gives up on it.
CHILD_TIMEOUT = 60
POLL_SECONDS = 0.05

T = TypeVar("T")


# --- Waiting ---------------------------------------------------------------------


def wait_for(condition: Callable[[], T], timeout: float = 60.0, what: str = "") -> T:
    """Return `condition()`'s first truthy value, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(POLL_SECONDS)


# --- Messages and the intake, in this process --------------------------------------


def tier_names() -> list[str]:
    """The tiers of the Tier table, the one served first first (reads the database)."""
    return [tier.name for tier in lookup.tiers_by_priority()]


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
        "action_type": AGENT_RUN,
        "task_id": f"task-{uuid.uuid4().hex[:8]}",
        "tenant_id": "tenant-a",
        "tenant_tier": tier,
        "session_id": session_id,
        "correlation_id": str(uuid.uuid4()),
        "callback_queue": callback_queue,
        "data": {"agent_id": agent_id, "message": message, **data},
        "metadata": {"origin": "tests"},
    }


def push(message: dict[str, Any] | bytes | str, tier: str = "free") -> None:
    """LPUSH `message` onto the tier's action list, as a client of the AES does."""
    raw = json.dumps(message) if isinstance(message, dict) else message
    redis_clients.shared().lpush(keys.actions(tier), raw)


def consume() -> Consumer:
    """Run a consumer in this process until every action list is empty."""
    consumer = Consumer(tier_names())
    consumer.run(burst=True)
    return consumer


def work() -> None:
    """Run every queued RQ job in this process, tiers in priority order.

    A consumer runs beside it in a thread to route the ES and QS callbacks
    the jobs wait for, as `run_execution_worker` does in production.
    """
    tiers = tier_names()
    router = Consumer(tiers)

    def route() -> None:
        try:
            router.run()
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=route, name="callback-router", daemon=True)
    thread.start()
    try:
        queues = [django_rq.get_queue(tier) for tier in tiers]
        worker = SimpleWorker(
            queues, connection=queues[0].connection, serializer=queues[0].serializer
        )
        worker.work(burst=True)
    finally:
        router.stop()
        thread.join(timeout=15)


def run_one(message: dict[str, Any], tier: str | None = None) -> Execution:
    """Push one run, consume it, run its job; return its Execution, reloaded."""
    push(message, tier or message["tenant_tier"])
    consume()
    work()
    return Execution.objects.get(action_id=message["action_id"])


def callbacks(queue: str = "test:callbacks") -> list[dict[str, Any]]:
    """Return every callback pushed to `queue`, oldest first."""
    return [json.loads(raw) for raw in reversed(redis_clients.shared().lrange(queue, 0, -1))]


def dead_letters() -> list[dict[str, Any]]:
    """Return every dead letter, oldest first."""
    return [
        json.loads(raw) for raw in reversed(redis_clients.shared().lrange(keys.DEAD_LETTER, 0, -1))
    ]


def make_execution(**fields: Any) -> Execution:
    """Record one execution as the consumer would, with overridable fields."""
    action_id = fields.pop("action_id", f"action-{uuid.uuid4().hex}")
    values: dict[str, Any] = {
        "task_id": f"task-{uuid.uuid4().hex[:8]}",
        "tenant_id": "tenant-a",
        "tier": "free",
        "agent_id": "plain-bot",
        "message": "Hello there",
        "request": {},
        "status": Status.QUEUED,
        "queued_at": timezone.now(),
    }
    values.update(fields)
    tenant_id = values.pop("tenant_id")
    execution, created = Execution.record(tenant_id, action_id, **values)
    assert created
    return execution


class PeersHandle:
    """Runs the dev peers in a thread; `silent` services never answer."""

    def __init__(self, silent: frozenset[str] = frozenset(), delay_seconds: float = 0.0) -> None:
        self.fixture = load_fixture()
        self.peers = DevPeers(
            redis_clients.shared(),
            tier_names(),
            self.fixture,
            silent=silent,
            delay_seconds=delay_seconds,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.peers.serve, args=(self._stop,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- Child processes -----------------------------------------------------------------


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


def child_env(**changes: str | None) -> dict[str, str]:
    """This process's environment with `changes`; None removes a variable.

    For children that only read the settings: the database is not this test's.
    """
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "aes_project.settings"
    # A child that got past the settings must not start a server of its own.
    env["REDIS_URL"] = settings.REDIS_URL
    for name in ("AES_ENV", "DEBUG", "SECRET_KEY"):
        env.pop(name, None)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `manage.py *args` in a child with `env`; return what it did."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `code` in a child Python with `env`; return what it did."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )


def start_service(*args: str, **env: str) -> subprocess.Popen:
    """Start `run_execution_worker *args` on this test's Redis and database."""
    return subprocess.Popen(
        [sys.executable, str(PROJECT / "manage.py"), "run_execution_worker", *args],
        cwd=PROJECT,
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def end(process: subprocess.Popen) -> str:
    """Kill `process` by its PID if it still runs; return its output."""
    if process.poll() is None:
        process.kill()
    output, _ = process.communicate(timeout=30)
    return output


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    """The PIDs of the children of process `pid`."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(child) for child in text.split()]


def rq_worker_pids(redis) -> set[int]:
    """The PIDs of the live processes of the RQ workers registered in `redis`."""
    pids = set()
    for key in redis.smembers(Worker.redis_workers_keys):
        pid = redis.hget(key, "pid")
        if pid:
            pids.add(int(pid))
    return {pid for pid in pids if pid_alive(pid)}
