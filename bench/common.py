"""What the bench and the soak share: environment, child processes, Redis and counters."""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import django
import redis
from django.core.management import call_command

from aes_project import embedded_redis, processes

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MANAGE = [PYTHON, str(ROOT / "manage.py")]
COUNTING = ROOT / "bench" / "counting"
# Seconds a child has to stop after SIGTERM (run_execution_worker shuts
# down warm: its runs in hand finish) before it is SIGKILLed.
STOP_SECONDS = 40.0


@dataclass
class Env:
    """Where the pipeline runs: database, Redis, counters and logs."""

    database_url: str
    redis_url: str
    workdir: Path
    count_dir: Path
    # The Tier table's names, the one served first first.
    tiers: list[str]
    children: list[subprocess.Popen] = field(default_factory=list)

    def tier(self, name: str | None) -> str:
        """`name` if the Tier table has it; with None, the tier served first."""
        if name is None:
            return self.tiers[0]
        if name not in self.tiers:
            raise SystemExit(f"no tier {name!r}; the Tier table has {', '.join(self.tiers)}")
        return name

    def child_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            AES_BENCH_COUNT_DIR=str(self.count_dir),
            PYTHONPATH=os.pathsep.join([str(COUNTING), str(ROOT)]),
            LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
            # As in production: with DEBUG on, Django also keeps a log of
            # every query in each connection, which costs CPU and memory.
            DEBUG=os.environ.get("DEBUG", "false"),
            SECRET_KEY=os.environ.get("SECRET_KEY", "bench-only-not-a-secret"),
        )
        env.update(extra)
        return env

    def start(self, command: list[str], log: str, **extra: str) -> subprocess.Popen:
        """Start a child with its output in `{workdir}/{log}.log`.

        The child dies with the thread that started it (aes_project.processes).
        """
        with open(self.workdir / f"{log}.log", "ab") as out:
            process = processes.start(
                command,
                cwd=ROOT,
                env=self.child_env(**extra),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.children.append(process)
        return process

    def stop_children(self) -> None:
        """Stop every child still running (SIGTERM, then SIGKILL after STOP_SECONDS)."""
        processes.stop_all(self.children, STOP_SECONDS)
        self.children.clear()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=60)


def prepare(database_url: str | None, redis_url: str | None, *, flush: bool) -> Env:
    """Resolve the database and Redis, migrate, and load Django in this process.

    With no database given, a private SQLite file is used (never the
    project's own db.sqlite3); with no Redis given, the embedded server.
    """
    workdir = Path(tempfile.mkdtemp(prefix="aes-bench-"))
    database_url = database_url or os.environ.get("DATABASE_URL")
    if not database_url:
        database_url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    redis_url = redis_url or os.environ.get("REDIS_URL")
    if not redis_url:
        redis_url = embedded_redis.start()
        flush = True  # a private server: nothing of anyone else's is there
    os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aes_project.settings")
    django.setup()
    call_command("migrate", verbosity=0)
    # Models can be imported only once Django is set up.
    from tiers import lookup

    tiers = [tier.name for tier in lookup.tiers_by_priority()]
    client = redis.Redis.from_url(redis_url)
    if client.dbsize() and not flush:
        raise SystemExit(
            f"{redact(redis_url)} is not empty: give the bench a Redis database of its own "
            "and pass --flush to empty it first"
        )
    client.flushdb()
    count_dir = workdir / "counts"
    count_dir.mkdir()
    return Env(database_url, redis_url, workdir, count_dir, tiers)


def redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(parsed.password, "***")
    return url


def wait_until(condition, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (commands inside Lua included)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}


def server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    keys = set(after) | set(before)
    changed = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    return {k: v for k, v in changed.items() if v}


def read_counts(count_dir: Path) -> dict[str, dict[str, dict[str, int]]]:
    """Sum what every instrumented process wrote: {role: {"sql"|"redis"|"trips": {name: n}}}."""
    total: dict[str, dict[str, dict[str, int]]] = {}
    for path in glob.glob(str(count_dir / "*.json")):
        for _attempt in range(3):
            try:
                body = json.loads(Path(path).read_bytes() or b"{}")
                break
            except ValueError:
                time.sleep(0.01)  # caught mid-write
        else:
            continue
        if not body:
            continue
        role = total.setdefault(body["role"], {"sql": {}, "redis": {}, "trips": {}})
        body["trips"] = {"roundtrips": body["redis_roundtrips"]}
        for kind in ("sql", "redis", "trips"):
            for name, n in body[kind].items():
                role[kind][name] = role[kind].get(name, 0) + n
    return total


def counts_diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """What each role did between two read_counts()."""
    empty = {"sql": {}, "redis": {}, "trips": {}}
    return {
        role: {kind: diff(values[kind], before.get(role, empty)[kind]) for kind in empty}
        for role, values in after.items()
    }


def merged(counts: dict[str, Any], kind: str, roles: tuple[str, ...]) -> dict[str, int]:
    """One kind of count, summed over `roles`."""
    total: dict[str, int] = {}
    for role in roles:
        for name, n in counts.get(role, {}).get(kind, {}).items():
            total[name] = total.get(name, 0) + n
    return total


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of `values`, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def other_clients_rate(client: redis.Redis, seconds: float = 3.0) -> float:
    """Commands per second the server runs for others while the bench runs nothing.

    INFO commandstats counts every client of the server: on a server shared
    with other work this is what the bench's server-side counts include
    beside the pipeline's. (The one INFO of the bench in between is left out.)
    """
    before = sum(commandstats(client).values())
    time.sleep(seconds)
    after = sum(commandstats(client).values())
    return max(0.0, (after - before - 1) / seconds)
