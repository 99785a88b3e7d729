"""Counts SQL statements and Redis commands in every process of the pipeline.

Python imports `sitecustomize` at start-up from the first folder on sys.path
that has one; the bench puts this folder first on PYTHONPATH of the processes
it starts (run_execution_worker, its RQ workers and their forked work-horses,
the dev peers). Nothing happens unless AES_BENCH_COUNT_DIR is set.

Each process writes its counts as JSON to `{dir}/{role}-{pid}.json`:
SQL statements by verb and table (every `cursor.execute` Django sends,
counted through `connection.execute_wrappers`), Redis commands by name and
client round trips (a pipeline is one). Long-lived processes flush from a
thread every 0.2 s; a forked work-horse ends with `os._exit`, so that is
wrapped to flush first.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import sys
import threading

_DIR = os.environ.get("AES_BENCH_COUNT_DIR")
_SQL_SHAPE = re.compile(
    r"^\s*(SELECT|INSERT INTO|UPDATE|DELETE FROM|SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT)"
    r'(?:.*?\bFROM\s+|\s+)"?(\w+)?',
    re.IGNORECASE | re.DOTALL,
)


class _Counts:
    def __init__(self, role: str) -> None:
        self.role = role
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.sql: dict[str, int] = {}
        self.redis: dict[str, int] = {}
        self.roundtrips = 0
        self.dirty = False
        self.fd: int | None = None
        self.written = 0

    def add_sql(self, sql: str) -> None:
        match = _SQL_SHAPE.match(sql[:2000])  # a SELECT that names every column is long
        shape = f"{match.group(1).upper()} {match.group(2) or ''}".strip() if match else "OTHER"
        with self.lock:
            self.sql[shape] = self.sql.get(shape, 0) + 1
            self.dirty = True

    def add_redis(self, names: list[str]) -> None:
        with self.lock:
            for name in names:
                self.redis[name] = self.redis.get(name, 0) + 1
            self.roundtrips += 1
            self.dirty = True

    def flush(self) -> None:
        with self.lock:
            if not self.dirty:
                return
            body = {"role": self.role, "pid": os.getpid(), "sql": self.sql, "redis": self.redis}
            body["redis_roundtrips"] = self.roundtrips
            data = json.dumps(body).encode()
            if self.fd is None:
                path = os.path.join(_DIR, f"{self.role}-{os.getpid()}.json")
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            # Padded with spaces, which JSON ignores, so a shorter write never
            # leaves the tail of a longer one behind.
            os.pwrite(self.fd, data.ljust(self.written), 0)
            self.written = max(self.written, len(data))
            self.dirty = False


def _role() -> str:
    # The bench names the processes whose argv says nothing (python -m ...).
    if os.environ.get("AES_BENCH_ROLE"):
        return os.environ["AES_BENCH_ROLE"]
    for name, role in (
        ("run_execution_worker", "consumer"),
        ("rqworker", "rqworker"),
        ("rqworker_threads", "rqworker"),
        ("run_dev_peers", "peers"),
    ):
        if name in sys.argv:
            return role
    return "other"


def _install() -> None:
    counts = _Counts(_role())

    def after_fork() -> None:
        # Threads do not survive fork: the child flushes at os._exit.
        counts.lock = threading.Lock()
        counts.reset()
        counts.role = "horse" if counts.role == "rqworker" else counts.role + "-child"

    os.register_at_fork(after_in_child=after_fork)
    real_exit = os._exit

    def exit_after_flush(code: int) -> None:
        try:
            counts.flush()
        finally:
            real_exit(code)

    os._exit = exit_after_flush
    atexit.register(counts.flush)

    def flusher() -> None:
        while True:
            threading.Event().wait(0.2)
            counts.flush()

    threading.Thread(target=flusher, name="bench-counts", daemon=True).start()
    _hook_django(counts)
    _hook_redis(counts)


def _hook_django(counts: _Counts) -> None:
    try:
        from django.db.backends.signals import connection_created
    except ImportError:
        return

    def wrapper(execute, sql, params, many, context):
        counts.add_sql(sql)
        return execute(sql, params, many, context)

    def on_connect(sender, connection, **kwargs) -> None:
        if wrapper not in connection.execute_wrappers:
            connection.execute_wrappers.append(wrapper)

    connection_created.connect(on_connect, weak=False)


def _hook_redis(counts: _Counts) -> None:
    try:
        import redis.client
    except ImportError:
        return
    plain = redis.client.Redis.execute_command
    immediate = redis.client.Pipeline.immediate_execute_command
    execute = redis.client.Pipeline.execute

    def execute_command(self, *args, **options):
        counts.add_redis([str(args[0]).upper()])
        return plain(self, *args, **options)

    def immediate_execute_command(self, *args, **options):
        counts.add_redis([str(args[0]).upper()])
        return immediate(self, *args, **options)

    def pipeline_execute(self, *args, **kwargs):
        names = [str(command[0][0]).upper() for command in self.command_stack]
        if names:
            if self.transaction:
                names = ["MULTI", *names, "EXEC"]
            counts.add_redis(names)
        return execute(self, *args, **kwargs)

    redis.client.Redis.execute_command = execute_command
    redis.client.Pipeline.immediate_execute_command = immediate_execute_command
    redis.client.Pipeline.execute = pipeline_execute


if _DIR:
    _install()
