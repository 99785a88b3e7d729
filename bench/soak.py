"""Soak the real pipeline with faults and check that every run ends once.

    pip install -r bench/requirements.txt   # once: the service's pins plus psutil
    python -m bench.soak --runs 300 \\
        --database-url postgres://postgres@127.0.0.1:5432/aesbench \\
        --redis-url redis://127.0.0.1:6379/9 --flush

Run from the project's root. Pushes `--runs` runs (`--in-flight` at a time)
while the LLM stand-in answers HTTP 500 at random and hangs on some runs
past their `data.timeout`, a random RQ work-horse is SIGKILLed every few
seconds, now and then a whole RQ worker with its horse (as if its machine
were lost), and run_execution_worker itself is SIGKILLed and restarted
periodically. With `--runs-per-worker K` the workers are threaded: there are
no horses, and a whole worker killed takes up to K runs with it. Then, after
a bounded wait, checks the database and the callbacks: every pushed
action_id has exactly one Execution, every Execution is final, every run got
exactly one callback. Prints `lost=N duplicated=N stuck=N` and exits 1
unless all three are 0; writes the figures as one flat JSON document
(`--json`, by default bench/results/soak.json).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time

from bench import figures
from bench.common import children_of, prepare, redact
from bench.load import closed_loop
from bench.pipeline import Client, Pipeline, agent_run
from protocol import keys

# Recovery within seconds rather than the production defaults' minutes.
QUICK_RECOVERY = {
    "AES_CONSUMER_HEARTBEAT_TTL": "3",
    "AES_REAPER_GRACE_SECONDS": "5",
    "AES_REAPER_INTERVAL_SECONDS": "2",
}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--rq-workers", type=int, default=4)
    parser.add_argument(
        "--runs-per-worker", type=int, default=1, help="more than 1: threaded workers"
    )
    parser.add_argument("--in-flight", type=int, default=40)
    parser.add_argument("--tier", help="a tier of the Tier table (default: the one served first)")
    parser.add_argument("--error-rate", type=float, default=0.05, help="LLM answers 500")
    parser.add_argument("--hang-share", type=float, default=0.03, help="runs whose LLM hangs")
    parser.add_argument(
        "--fail-share", type=float, default=0.02, help="runs whose LLM always fails"
    )
    parser.add_argument("--tool-share", type=float, default=0.3, help="runs of support-bot")
    parser.add_argument("--session-share", type=float, default=0.2, help="runs in a session")
    parser.add_argument("--horse-kill-every", type=float, default=2.0, help="seconds")
    parser.add_argument("--service-kill-every", type=float, default=20.0, help="seconds")
    parser.add_argument(
        "--worker-kill-every", type=float, default=30.0, help="seconds; an RQ worker and its horse"
    )
    parser.add_argument("--final-wait", type=float, default=240.0, help="seconds after pushing")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for pushing")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--flush", action="store_true")
    figures.add_json_option(parser, "soak")
    return parser.parse_args()


def make_runs(args: argparse.Namespace) -> list[dict]:
    rng = random.Random(args.seed)
    runs = []
    for i in range(args.runs):
        kind = rng.random()
        if kind < args.hang_share:
            message, timeout = f"bench-hang {i}", 2
        elif kind < args.hang_share + args.fail_share:
            message, timeout = f"bench-fail {i}", 15
        else:
            message, timeout = f"How do refunds work? ({i})", 15
        session = f"soak-session-{rng.randrange(20)}" if rng.random() < args.session_share else None
        runs.append(
            agent_run(
                tier=args.tier,
                agent_id="support-bot" if rng.random() < args.tool_share else "plain-bot",
                tenant_id=f"soak-tenant-{rng.randrange(5)}",
                session_id=session,
                message=message,
                timeout=timeout,
            )
        )
    return runs


class Chaos(threading.Thread):
    """SIGKILLs a random work-horse, now and then a whole RQ worker with its horse
    (a lost machine: only the reaper can end its run), and the whole service
    (then restarts it)."""

    def __init__(
        self, pipeline: Pipeline, horse_every: float, worker_every: float, service_every: float
    ) -> None:
        super().__init__(name="chaos", daemon=True)
        self.pipeline = pipeline
        self.horse_every = horse_every
        self.worker_every = worker_every
        self.service_every = service_every
        self.halt = threading.Event()
        self.horses_killed = 0
        self.workers_killed = 0
        self.service_kills = 0
        self.errors = 0
        self.rng = random.Random(2)

    def run(self) -> None:
        next_service_kill = time.monotonic() + self.service_every
        next_worker_kill = time.monotonic() + self.worker_every
        while not self.halt.wait(self.horse_every):
            # A fault that cannot be injected this time is tried again later:
            # the soak must not go on quietly without its faults.
            try:
                self._kill_a_horse()
                if time.monotonic() >= next_worker_kill:
                    self._kill_a_worker()
                    next_worker_kill = time.monotonic() + self.worker_every
                if time.monotonic() >= next_service_kill:
                    self.pipeline.kill_service()
                    self.service_kills += 1
                    next_service_kill = time.monotonic() + self.service_every
                    self.pipeline.start_service()
            except Exception as exc:
                self.errors += 1
                print(f"chaos: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    def _kill_a_worker(self) -> None:
        service = self.pipeline.service
        workers = children_of(service.pid) if service and service.poll() is None else []
        # A threaded worker has no horses: its runs are its threads.
        threaded = self.pipeline.runs_per_worker > 1
        busy = [w for w in workers if threaded or children_of(w)]
        if not busy:
            return
        worker = self.rng.choice(busy)
        for pid in [worker, *children_of(worker)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.workers_killed += 1

    def _kill_a_horse(self) -> None:
        service = self.pipeline.service
        if service is None or service.poll() is not None:
            return
        horses = [h for w in children_of(service.pid) for h in children_of(w)]
        if horses:
            try:
                os.kill(self.rng.choice(horses), signal.SIGKILL)
                self.horses_killed += 1
            except ProcessLookupError:
                pass  # it had just finished


def check(client: Client, runs: list[dict]) -> dict:
    """Compare what was pushed with the database and the callbacks received."""
    from executions.models import FINAL_STATUSES, Execution

    ids = [r["action_id"] for r in runs]
    rows = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        for row in Execution.objects.filter(action_id__in=chunk).values(
            "action_id", "id", "status", "error_code"
        ):
            rows[row["action_id"]] = row
    by_status: dict[str, int] = {}
    missing = no_callback = duplicated = same_event = stuck = 0
    for action_id in ids:
        row = rows.get(action_id)
        if row is None:
            missing += 1
            continue
        key = row["status"] + (f":{row['error_code']}" if row["error_code"] else "")
        by_status[key] = by_status.get(key, 0) + 1
        if row["status"] not in FINAL_STATUSES:
            stuck += 1
        got = [
            r.callback
            for r in client.received.get(action_id, [])
            if r.callback["data"].get("execution_id") == str(row["id"])
        ]
        if not got and row["status"] in FINAL_STATUSES:
            no_callback += 1
        if len(got) > 1:
            duplicated += 1
            same_event += len({c.get("event_id") for c in got}) == 1
    strays = sum(
        1
        for rs in client.received.values()
        for r in rs
        if not r.callback["data"].get("execution_id")
    )
    return {
        "lost": missing + no_callback,
        "missing_rows": missing,
        "final_without_callback": no_callback,
        "duplicated": duplicated,
        "duplicated_same_event_id": same_event,
        "stuck": stuck,
        "callbacks_without_execution": strays,
        "by_status": dict(sorted(by_status.items(), key=lambda kv: -kv[1])),
    }


def main() -> None:
    args = parse()
    machine = figures.machine()
    env = prepare(args.database_url, args.redis_url, flush=args.flush)
    args.tier = env.tier(args.tier)
    print(f"database {redact(env.database_url)}, Redis {redact(env.redis_url)}, logs {env.workdir}")
    runs = make_runs(args)
    llm_args = ["--error-rate", str(args.error_rate), "--hang-seconds", "6"]
    pipeline = Pipeline(
        env,
        rq_workers=args.rq_workers,
        runs_per_worker=args.runs_per_worker,
        llm_args=llm_args,
        service_env=QUICK_RECOVERY,
    )
    client = Client(env.redis_url)
    chaos = Chaos(pipeline, args.horse_kill_every, args.worker_kill_every, args.service_kill_every)
    started = time.monotonic()
    try:
        pipeline.start()
        chaos.start()
        closed_loop(client, runs, args.tier, args.in_flight, started + args.timeout)
        chaos.halt.set()
        chaos.join(timeout=180)
        push_seconds = time.monotonic() - started
        print(
            f"pushed {len(client.pushed_at)} runs in {push_seconds:.0f}s; "
            f"killed {chaos.horses_killed} work-horses, {chaos.workers_killed} RQ workers "
            f"with their horse or runs, {chaos.service_kills} services "
            f"({chaos.errors} chaos errors)",
            flush=True,
        )
        client.wait_for([r["correlation_id"] for r in runs], args.final_wait)
        time.sleep(5)  # a duplicate would come late: give it the chance
        result = check(client, runs)
        dead = env.client().llen(keys.DEAD_LETTER)
    finally:
        chaos.halt.set()
        client.close()
        pipeline.stop()
        env.stop_children()
    seconds = time.monotonic() - started
    print(f"runs={args.runs} seconds={seconds:.0f} dead_letters={dead}")
    print(f"by status: {result['by_status']}")
    print(", ".join(f"{k}={v}" for k, v in result.items() if k != "by_status"))
    print(f"lost={result['lost']} duplicated={result['duplicated']} stuck={result['stuck']}")
    measured = {
        "runs_pushed": len(client.pushed_at),
        "push_seconds": round(push_seconds, 1),
        "soak_seconds": round(seconds, 1),
        "work_horses_killed": chaos.horses_killed,
        "rq_workers_killed": chaos.workers_killed,
        "services_killed": chaos.service_kills,
        "fault_injection_errors": chaos.errors,
        "dead_letters": dead,
        **{
            (k if k.startswith("callbacks") else f"runs_{k}"): v
            for k, v in result.items()
            if k != "by_status"
        },
        **figures.flat("runs_by_status", result["by_status"]),
    }
    figures.write(args.json, figures.document("soak", args, machine, measured))
    sys.exit(0 if result["lost"] == result["duplicated"] == result["stuck"] == 0 else 1)


if __name__ == "__main__":
    main()
