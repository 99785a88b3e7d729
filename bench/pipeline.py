"""The real pipeline as child processes, and the client side: pushing runs, taking callbacks."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis
from rq import Worker

from aes_project import processes
from bench.common import MANAGE, PYTHON, STOP_SECONDS, Env, wait_until
from protocol import keys

CALLBACKS = "bench:callbacks"


class CountingRedis(redis.Redis):
    """A client that counts the commands it sends, to subtract the bench's own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.sent[name] = self.sent.get(name, 0) + n

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.count(str(args[0]).lower())
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        counter, execute = self, pipe.execute

        def counted(*args: Any, **kwargs: Any) -> Any:
            for command, _options in pipe.command_stack:
                counter.count(str(command[0]).lower())
            if pipe.transaction and pipe.command_stack:
                counter.count("multi")
                counter.count("exec")
            return execute(*args, **kwargs)

        pipe.execute = counted
        return pipe


def counting_client(url: str) -> CountingRedis:
    return CountingRedis.from_url(url, socket_timeout=60)


def agent_run(
    *,
    tier: str,
    agent_id: str,
    message: str = "Hello there",
    tenant_id: str = "bench-tenant",
    session_id: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    """A valid execution.agent_run DomainAction whose correlation_id is its action_id."""
    action_id = str(uuid.uuid4())
    return {
        "action_id": action_id,
        "action_type": "execution.agent_run",
        "task_id": f"bench-{action_id[:8]}",
        "tenant_id": tenant_id,
        "tenant_tier": tier,
        "session_id": session_id,
        "correlation_id": action_id,
        "callback_queue": CALLBACKS,
        "data": {"agent_id": agent_id, "message": message, **data},
        "metadata": {"origin": "bench"},
    }


@dataclass
class Received:
    at: float
    callback: dict[str, Any]


@dataclass
class Client:
    """Pushes runs and collects their callbacks from one shared callback queue."""

    url: str
    pushed_at: dict[str, float] = field(default_factory=dict)
    received: dict[str, list[Received]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.push_client = counting_client(self.url)
        self.take_client = counting_client(self.url)
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="collector", daemon=True)
        self._thread.start()

    def sent(self) -> dict[str, int]:
        """Commands the bench itself sent so far, by name."""
        total = dict(self.push_client.sent)
        for name, n in self.take_client.sent.items():
            total[name] = total.get(name, 0) + n
        return total

    def push(self, runs: list[dict[str, Any]], tier: str, batch: int = 100) -> None:
        key = keys.actions(tier)
        for start in range(0, len(runs), batch):
            chunk = runs[start : start + batch]
            with self.push_client.pipeline(transaction=False) as pipe:
                for run in chunk:
                    pipe.lpush(key, json.dumps(run))
                now = time.monotonic()
                for run in chunk:
                    self.pushed_at[run["correlation_id"]] = now
                pipe.execute()

    def _collect(self) -> None:
        while not self._stop.is_set():
            got = self.take_client.brpop([CALLBACKS], timeout=1)
            if got is None:
                continue
            raws = [got[1]]
            # Drain what else is there in one round trip.
            more = self.take_client.rpop(CALLBACKS, 200)
            raws.extend(more or [])
            now = time.monotonic()
            with self.changed:
                for raw in raws:
                    callback = json.loads(raw)
                    self.received.setdefault(callback.get("correlation_id"), []).append(
                        Received(now, callback)
                    )
                self.changed.notify_all()

    def wait_for(self, ids: list[str], timeout: float) -> bool:
        """Wait until each of `ids` has a callback; False on timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not all(i in self.received for i in ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 1.0))
        return True

    def latency(self, run_id: str) -> float:
        return self.received[run_id][0].at - self.pushed_at[run_id]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Pipeline:
    """The LLM stand-in, the dev peers and run_execution_worker, as child processes."""

    def __init__(
        self,
        env: Env,
        *,
        rq_workers: int,
        llm_args: list[str],
        runs_per_worker: int = 1,
        service_env: dict[str, str] | None = None,
    ) -> None:
        self.env = env
        self.rq_workers = rq_workers
        self.runs_per_worker = runs_per_worker
        self.llm_args = llm_args
        self.service_env = service_env or {}
        self.llm_url = ""
        self.llm: subprocess.Popen | None = None
        self.peers: subprocess.Popen | None = None
        self.service: subprocess.Popen | None = None

    def start(self) -> None:
        self.llm = self.env.start([PYTHON, "-m", "bench.llm_server", *self.llm_args], "llm")
        log = Path(self.env.workdir / "llm.log")
        line = wait_until(
            lambda: next((x for x in log.read_text().splitlines() if x.startswith("LLM_URL")), ""),
            30,
            "the LLM stand-in",
        )
        self.llm_url = line.split()[1]
        self.peers = self.env.start([*MANAGE, "run_dev_peers"], "peers")
        self.start_service()

    def start_service(self) -> None:
        self.service = self.env.start(
            [
                *MANAGE,
                "run_execution_worker",
                "--rq-workers",
                str(self.rq_workers),
                "--runs-per-worker",
                str(self.runs_per_worker),
            ],
            "service",
            OPENAI_BASE_URL=self.llm_url,
            OPENAI_API_KEY="bench",
            **self.service_env,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until the consumer beats and every RQ worker is registered and idle."""
        client = self.env.client()

        def ready() -> bool:
            if self.service is None or self.service.poll() is not None:
                raise RuntimeError(f"run_execution_worker exited; see {self.env.workdir}")
            if not client.keys(keys.consumer_alive("*")):
                return False
            mine = [c for c in self._rq_workers(client) if c["parent"] == self.service.pid]
            return len(mine) >= self.rq_workers * self.runs_per_worker

        wait_until(ready, timeout, "run_execution_worker and its RQ workers", interval=0.25)

    def _rq_workers(self, client: redis.Redis) -> list[dict[str, Any]]:
        """The RQ workers registered in Redis, with their parent's pid."""
        found = []
        for worker in Worker.all(connection=client):
            if not worker.pid:
                continue  # a worker registering or gone
            try:
                parent = psutil.Process(worker.pid).ppid()
            except psutil.Error:
                continue
            found.append({"pid": worker.pid, "parent": parent})
        return found

    def kill_service(self) -> None:
        """SIGKILL run_execution_worker (its RQ workers get SIGTERM from the kernel)."""
        if self.service is not None and self.service.poll() is None:
            self.service.kill()
            self.service.wait(timeout=10)

    def stop(self, *, keep_llm: bool = False) -> None:
        """Stop the service (warm: its runs in hand finish), then the stand-ins.

        With `keep_llm` the LLM stand-in goes on serving (the fair floor calls
        it next); stop_llm() stops it.
        """
        if self.service is not None:
            processes.stop(self.service, STOP_SECONDS)
        standins = [p for p in (self.peers, None if keep_llm else self.llm) if p is not None]
        processes.stop_all(standins, STOP_SECONDS)

    def stop_llm(self) -> None:
        if self.llm is not None:
            processes.stop(self.llm, STOP_SECONDS)
