"""`run_execution_worker` as real processes: runs, kills, restarts, clean stops."""

from __future__ import annotations

import json as json_lib
import os
import signal
import subprocess
import threading
import time

import pytest
import redis as redis_lib
from django.db import connection, transaction

from aes_project import embedded_redis
from executions.models import Execution
from protocol import keys
from standins.peers import DevPeers, load_fixture
from tests.helpers import (
    agent_run,
    callbacks,
    consume,
    end,
    pid_alive,
    push,
    rq_worker_pids,
    start_service,
    tier_names,
    wait_for,
    work,
)

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def test_burst_runs_a_pushed_message_to_a_completed_callback(peers, llm):
    message = agent_run(message="ping")
    push(message)
    service = start_service("--burst", "--rq-workers", "1", OPENAI_BASE_URL=llm.url)
    try:
        assert service.wait(timeout=60) == 0
    finally:
        output = end(service)
    sent = callbacks()
    assert [c["data"]["status"] for c in sent] == ["completed"], output
    assert sent[0]["data"]["response"] == "(stand-in) You said: ping"
    assert Execution.objects.get(action_id=message["action_id"]).status == "completed"


def test_sigterm_stops_the_service_and_its_rq_workers(redis):
    service = start_service("--rq-workers", "2")
    try:
        pids = wait_for(
            lambda: len(rq_worker_pids(redis)) == 2 and rq_worker_pids(redis), what="two RQ workers"
        )
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=45) == 0
        wait_for(lambda: not any(pid_alive(pid) for pid in pids), what="workers to exit")
        assert redis.smembers(keys.CONSUMERS) == set()
    finally:
        end(service)


def test_a_dead_rq_worker_is_replaced(redis):
    service = start_service("--rq-workers", "1")
    try:
        (first,) = wait_for(lambda: rq_worker_pids(redis), what="an RQ worker")
        os.kill(first, signal.SIGKILL)
        replacement = wait_for(lambda: rq_worker_pids(redis) - {first}, what="a new worker")
        assert first not in replacement
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=45)
        end(service)


def _hold_execution_table_lock():
    """Start a transaction that keeps other processes from inserting executions."""
    atomic = transaction.atomic()
    atomic.__enter__()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("LOCK TABLE executions_execution IN EXCLUSIVE MODE")
        else:  # SQLite: any write takes the database's write lock.
            cursor.execute("UPDATE executions_execution SET status = status WHERE 1 = 0")
    return atomic


def test_consumer_killed_before_acknowledging_loses_nothing_and_runs_once(peers, llm, redis):
    message = agent_run()
    push(message)
    lock = _hold_execution_table_lock()
    service = start_service("--rq-workers", "0", AES_CONSUMER_HEARTBEAT_TTL="2")
    try:
        # The consumer took the message and is stuck recording it: kill it there.
        held = wait_for(lambda: redis.keys(keys.processing("*", "*")), what="a taken message")
        assert redis.llen(keys.actions("free")) == 0
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=10)
    finally:
        lock.__exit__(None, None, None)
        end(service)
    assert Execution.objects.count() == 0
    assert redis.llen(held[0]) == 1

    wait_for(lambda: not redis.keys(keys.consumer_alive("*")), what="heartbeat expiry")
    consume()  # a restarted consumer recovers the message and records it
    work()
    assert Execution.objects.filter(action_id=message["action_id"]).count() == 1
    assert [c["data"]["status"] for c in callbacks()] == ["completed"]
    assert redis.keys(keys.processing("*", "*")) == []


class PrivateRedis:
    """A Redis-compatible server of this test's own, restartable on its port."""

    def __init__(self, workdir: str) -> None:
        self.binary = embedded_redis._binary()
        self.port = embedded_redis._free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            embedded_redis.server_command(self.binary, self.port, self.workdir),
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: _pings(redis_lib.Redis.from_url(self.url)), what="the server")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _pings(client) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


def test_a_redis_restart_mid_run_loses_nothing_recorded(llm, tmp_path):
    server = PrivateRedis(str(tmp_path))
    server.start()
    client = redis_lib.Redis.from_url(server.url)
    peers = DevPeers(client, tier_names(), load_fixture())
    stop = threading.Event()
    peer_thread = threading.Thread(target=peers.serve, args=(stop,), daemon=True)
    peer_thread.start()
    llm.push_hang(3)  # the run is in its LLM call while Redis restarts
    message = agent_run()
    client.lpush(keys.actions("free"), json_lib.dumps(message))
    service = start_service("--rq-workers", "1", OPENAI_BASE_URL=llm.url, REDIS_URL=server.url)
    try:
        wait_for(lambda: llm.requests, what="the LLM call")
        server.stop()
        # The outage itself is under test: Redis stays away a moment, as in a restart.
        time.sleep(0.5)
        server.start()  # empty: this server keeps nothing, like the CI's
        raw = wait_for(
            lambda: _pings(client) and client.lpop("test:callbacks"), timeout=40, what="callback"
        )
        callback = json_lib.loads(raw)
        assert callback["data"]["status"] == "completed"
        # The callback is pushed, then its row marked sent.
        execution = wait_for(
            lambda: Execution.objects.filter(
                action_id=message["action_id"], callback_sent_at__isnull=False
            ).first(),
            what="the callback marked sent",
        )
        assert execution.status == "completed"
        assert execution.callback_sent_at is not None
        # A second callback cannot be waited for, only given time to show up.
        time.sleep(1)
        assert client.llen("test:callbacks") == 0  # one callback, not two
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=45)
        finally:
            end(service)
            stop.set()
            peer_thread.join(timeout=5)
            server.stop()
