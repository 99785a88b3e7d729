"""The fair floor: a run's irreducible work as bare RQ jobs, on the AES's worker class and count.

bench.run measures it after the AES, in the same command, against the same
LLM stand-in (still running), Redis and database: the floor's job
(bench/floor_work.py: 1 INSERT, 2 UPDATEs, 1 chat completion, 1 LPUSH of a
callback) on as many worker processes as the AES had, of the AES's class:
ThreadedHost slots for threaded workers (`python -m bench.floor_worker`),
ExecutionWorker's forking work-horses for forking ones. The phases are the
AES's: warm-up and low load one job at a time, then the load, all at once or
`in_flight` at a time; a job's callback is collected as a run's is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import psutil
import redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from aes_project import processes
from bench import load, report
from bench.common import (
    MANAGE,
    PYTHON,
    STOP_SECONDS,
    Env,
    commandstats,
    counts_diff,
    diff,
    merged,
    read_counts,
    server_cpu,
    wait_until,
)
from bench.pipeline import CALLBACKS, Client, counting_client
from bench.sampler import busy_share, machine_busy_seconds, process_cpu_seconds

# The sitecustomize role of the floor's processes (their forked horses: floor-child).
ROLES = ("floor", "floor-child")
# The floor job's own Redis commands: its callback's LPUSH. The rest is RQ's.
JOB_OWN_REDIS_COMMANDS = 1


@dataclass
class FloorClient(Client):
    """Enqueues floor jobs, one per run that `make` gives, and collects their callbacks."""

    job_timeout: int = 0
    result_ttl: int = 0
    failure_ttl: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        # Not a counting client: enqueueing is RQ's work, as the consumer's is the AES's.
        self.enqueuer = redis.Redis.from_url(self.url, socket_timeout=60)

    def sent(self) -> dict[str, int]:
        """Commands the bench itself sent: taking the callbacks (the enqueues are RQ's)."""
        return dict(self.take_client.sent)

    def push(self, runs: list[dict[str, Any]], tier: str, batch: int = 100) -> None:
        """Enqueue one floor job per run, one enqueue_call each, as the AES's consumer does."""
        from bench.floor_work import JOB  # a string; the module needs Django

        queue = Queue(tier, connection=self.enqueuer, serializer=JSONSerializer)
        for run in runs:
            job_id = run["correlation_id"]
            self.pushed_at[job_id] = time.monotonic()
            queue.enqueue_call(
                JOB,
                args=(job_id, run["data"]["message"], CALLBACKS),
                job_id=job_id,
                timeout=self.job_timeout,
                result_ttl=self.result_ttl,
                failure_ttl=self.failure_ttl,
            )


def _cpu_seconds(pids: list[int]) -> float:
    """CPU of each process, the children it reaped (forked horses) and those still alive."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
            total += sum(process_cpu_seconds(c.pid) for c in process.children(recursive=True))
        except psutil.Error:
            continue
    return total


def fair_floor(
    env: Env,
    *,
    llm_url: str,
    llm_pid: int | None,
    tier: str,
    workers: int,
    runs_per_worker: int,
    make: load.MakeRun,
    runs: int,
    in_flight: int,
    warmup: int,
    latency_runs: int,
    llm_latency: float,
    timeout: float,
) -> dict[str, Any]:
    """Measure the fair floor; return its flat figures (`fair_floor_*`)."""
    # Importable only once Django is set up.
    from bench import floor_work
    from executions import queues
    from tiers import lookup
    from workers.supervisor import THREADED_POOL_SIZE

    floor_work.create_table()
    job_timeout = lookup.get_tier(tier).timeout_seconds + queues.JOB_TIMEOUT_MARGIN_SECONDS
    extra = {"OPENAI_BASE_URL": llm_url, "OPENAI_API_KEY": "bench", "AES_BENCH_ROLE": "floor"}
    if runs_per_worker == 1:
        # As the supervisor starts the AES's forking workers (workers/supervisor.py).
        command = [*MANAGE, "rqworker", "--verbosity", "0"]
        command += ["--worker-class", "bench.floor_work.ForkingFloorWorker", tier]
        worker_class = "bench.floor_work.ForkingFloorWorker (workers.rq_worker.ExecutionWorker)"
    else:
        command = [PYTHON, "-m", "bench.floor_worker", "--slots", str(runs_per_worker), tier]
        # The pool run_execution_worker gives a threaded worker (workers/supervisor.py).
        extra["DB_POOL_SIZE"] = os.environ.get(
            "DB_POOL_SIZE", str(min(runs_per_worker, THREADED_POOL_SIZE))
        )
        worker_class = "bench.floor_work.FloorSlot (workers.threaded.ThreadedHost)"
    started = [env.start(command, "floor-workers", **extra) for _ in range(workers)]
    plain = redis.Redis.from_url(env.redis_url)
    client = FloorClient(
        env.redis_url,
        job_timeout=job_timeout,
        result_ttl=queues.RESULT_TTL_SECONDS,
        failure_ttl=queues.FAILURE_TTL_SECONDS,
    )
    pids = [p.pid for p in started]
    try:

        def ready() -> bool:
            for process in started:
                if process.poll() is not None:
                    raise RuntimeError(f"a floor worker exited; see {env.workdir}")
            mine = [w for w in Worker.all(connection=plain) if w.pid in pids]
            return len(mine) >= workers * runs_per_worker

        wait_until(ready, 120, "the floor workers", interval=0.25)
        load.sequential(client, make, warmup, tier, timeout=120)
        ids = load.sequential(client, make, latency_runs, tier, timeout=120)
        figures: dict[str, Any] = {
            "fair_floor_worker_class": worker_class,
            "fair_floor_worker_processes": workers,
            "fair_floor_runs_per_worker": runs_per_worker,
        }
        low = report.latencies(client, ids, llm_latency, "fair_floor_low_load")
        figures.update(low)
        batch = [make(i) for i in range(runs)]
        batch_ids = [r["correlation_id"] for r in batch]
        poller = counting_client(env.redis_url)  # its INFO calls are the bench's
        before = {
            "calls": commandstats(poller),
            "counts": read_counts(env.count_dir),
            "sent": client.sent(),
            "cpu": _cpu_seconds(pids),
            "llm_cpu": process_cpu_seconds(llm_pid) if llm_pid else 0.0,
            "redis_cpu": server_cpu(poller),
            "machine_busy": machine_busy_seconds(),
        }
        began = time.monotonic()
        deadline = began + timeout
        if in_flight:
            load.closed_loop(client, batch, tier, in_flight, deadline)
        else:
            client.push(batch, tier)
        complete = client.wait_for(batch_ids, max(0.0, deadline - time.monotonic()))
        cpu = _cpu_seconds(pids)
        machine_busy = machine_busy_seconds() - before["machine_busy"]
        wall = time.monotonic() - began
        time.sleep(0.5)  # the instrumented processes flush their counters every 0.2 s
        own = dict(poller.sent)
        calls = diff(commandstats(poller), before["calls"])
        for name, n in [*diff(client.sent(), before["sent"]).items(), *own.items()]:
            calls[name] = calls.get(name, 0) - n
        counts = counts_diff(read_counts(env.count_dir), before["counts"])
        done = [i for i in batch_ids if i in client.received]
        times = sorted(client.received[i][0].at for i in done)
        seconds = times[-1] - min(client.pushed_at[i] for i in batch_ids) if times else None
        n = len(done) or 1
        total = sum(calls.values())
        figures.update(
            {
                "fair_floor_jobs": runs,
                "fair_floor_callbacks": len(done),
                "fair_floor_all_answered": complete,
                "fair_floor_seconds": round(seconds, 2) if seconds else None,
                "fair_floor_jobs_per_second": round(n / seconds, 1) if seconds else None,
                "fair_floor_steady_jobs_per_second": load.steady_rate(times, runs, in_flight),
                "fair_floor_cpu_ms_per_job": round((cpu - before["cpu"]) * 1000 / n, 2),
                "fair_floor_cpu_share_of_machine_during_load": busy_share(
                    cpu - before["cpu"], wall
                ),
                "machine_cpu_busy_share_during_fair_floor": busy_share(machine_busy, wall),
                "fair_floor_llm_standin_cpu_ms_per_job": round(
                    (process_cpu_seconds(llm_pid) - before["llm_cpu"]) * 1000 / n, 2
                )
                if llm_pid
                else None,
                "fair_floor_redis_server_cpu_ms_per_job": round(
                    (server_cpu(poller) - before["redis_cpu"]) * 1000 / n, 2
                ),
                "fair_floor_redis_commands_per_job": round(total / n, 2),
                "rq_redis_commands_per_job": round(total / n - JOB_OWN_REDIS_COMMANDS, 2),
                "fair_floor_sql_statements_per_job": round(
                    sum(merged(counts, "sql", ROLES).values()) / n, 2
                ),
                "fair_floor_redis_roundtrips_per_job": round(
                    sum(merged(counts, "trips", ROLES).values()) / n, 2
                ),
            }
        )
        figures.update(report.per(calls, n, "fair_floor_redis_commands_per_job"))
        figures.update(report.latencies(client, done, llm_latency, "fair_floor_load"))
        return figures
    finally:
        client.close()
        processes.stop_all(started, STOP_SECONDS)
        env.children = [c for c in env.children if c not in started]


def lpush_brpop(env: Env, pairs: int = 5000) -> dict[str, Any]:
    """One client, LPUSH then BRPOP of the same list, back to back: round trips/s."""
    client = redis.Redis.from_url(env.redis_url)
    key = "bench:roundtrip"
    client.delete(key)
    start = time.monotonic()
    for _ in range(pairs):
        client.lpush(key, "x")
        client.brpop([key], timeout=1)
    seconds = time.monotonic() - start
    return {
        "lpush_brpop_pairs": pairs,
        "lpush_brpop_seconds": round(seconds, 3),
        "lpush_brpop_pairs_per_second": round(pairs / seconds, 1),
    }
