"""Soak the real pipeline with faults and check that every run ends once, no step twice.

    pip install -r bench/requirements.txt   # once: the service's pins plus psutil
    python -m bench.soak --runs 300 \\
        --database-url postgres://postgres@127.0.0.1:5432/aesbench \\
        --redis-url redis://127.0.0.1:6379/9 --flush

Run from the project's root. Pushes `--runs` runs (`--in-flight` at a time)
on the service's default shape (`--rq-workers 2`, AES_RUNS_PER_WORKER runs
per threaded worker; `--runs-per-worker 1` forks a work-horse per run) while
the LLM stand-in answers HTTP 500 at random and hangs on some runs past their
`data.timeout`, and processes are SIGKILLed: a random work-horse every few
seconds (forking workers), now and then a whole RQ worker with its horse or
its threaded runs (its supervisor resumes them), run_execution_worker alone
(its workers stop warm; it is started again), and now and then
run_execution_worker with all its workers at once, as if its machine were
lost (only the lapsed leases tell; the next service resumes those runs).
Then, after a bounded wait, checks the database, the callbacks and the
stand-in's request log: every pushed action_id has exactly one Execution,
every Execution is final, every run got exactly one callback, and no LLM or
tool call was made again for a step a run had completed (bench/repeats.py).
Prints `lost=N duplicated=N stuck=N resumed=N repeated_steps=N` and exits 1
unless lost, duplicated, stuck and repeated_steps are all 0; writes the
figures as one flat JSON document (`--json`, by default
bench/results/soak.json).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

from bench import figures, repeats
from bench.common import children_of, prepare, redact
from bench.load import closed_loop
from bench.pipeline import Client, Pipeline, agent_run
from protocol import keys

# Recovery within seconds rather than the production defaults' minutes.
QUICK_RECOVERY = {
    "AES_CONSUMER_HEARTBEAT_TTL": "3",
    "AES_REAPER_GRACE_SECONDS": "5",
    "AES_REAPER_INTERVAL_SECONDS": "2",
    # A lost machine's leases lapse in 6 s (renewed every 2 s), not 15.
    "AES_RUN_HEARTBEAT_TTL": "6",
}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--rq-workers", type=int, default=2)
    parser.add_argument(
        "--runs-per-worker",
        type=int,
        help="1: forking workers; more: threads (default: the service's AES_RUNS_PER_WORKER)",
    )
    parser.add_argument("--llm-latency", type=float, default=0.5, help="seconds per LLM answer")
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
        "--worker-kill-every",
        type=float,
        default=30.0,
        help="seconds; an RQ worker with its horse or its threaded runs",
    )
    parser.add_argument(
        "--machine-kill-every",
        type=float,
        default=45.0,
        help="seconds; run_execution_worker and all its workers at once (0: never)",
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
    """SIGKILLs a random work-horse, now and then a whole RQ worker with its horse or
    its threaded runs, the service alone (then starts it again), and the service
    with all its workers at once (a lost machine: only the leases tell)."""

    def __init__(
        self,
        pipeline: Pipeline,
        horse_every: float,
        worker_every: float,
        service_every: float,
        machine_every: float,
    ) -> None:
        super().__init__(name="chaos", daemon=True)
        self.pipeline = pipeline
        self.horse_every = horse_every
        self.worker_every = worker_every
        self.service_every = service_every
        self.machine_every = machine_every
        self.halt = threading.Event()
        self.horses_killed = 0
        self.workers_killed = 0
        self.service_kills = 0
        self.machines_lost = 0
        self.errors = 0
        self.rng = random.Random(2)

    def run(self) -> None:
        now = time.monotonic()
        next_service_kill = now + self.service_every
        next_worker_kill = now + self.worker_every
        next_machine_loss = now + self.machine_every if self.machine_every else float("inf")
        while not self.halt.wait(self.horse_every):
            # A fault that cannot be injected this time is tried again later:
            # the soak must not go on quietly without its faults.
            try:
                self._kill_a_horse()
                if time.monotonic() >= next_worker_kill:
                    self._kill_a_worker()
                    next_worker_kill = time.monotonic() + self.worker_every
                if time.monotonic() >= next_machine_loss:
                    self._lose_the_machine()
                    next_machine_loss = time.monotonic() + self.machine_every
                    next_service_kill = max(next_service_kill, time.monotonic() + 5)
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

    def _lose_the_machine(self) -> None:
        """SIGKILL run_execution_worker, its RQ workers and their horses together."""
        service = self.pipeline.service
        if service is None or service.poll() is not None:
            return
        workers = children_of(service.pid)
        for pid in [service.pid, *workers, *(h for w in workers for h in children_of(w))]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        service.wait(timeout=10)
        self.machines_lost += 1
        self.pipeline.start_service()

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
            "action_id", "id", "status", "error_code", "resumes"
        ):
            rows[row["action_id"]] = row
    by_status: dict[str, int] = {}
    missing = no_callback = duplicated = same_event = stuck = resumed = resumes = 0
    for action_id in ids:
        row = rows.get(action_id)
        if row is None:
            missing += 1
            continue
        key = row["status"] + (f":{row['error_code']}" if row["error_code"] else "")
        by_status[key] = by_status.get(key, 0) + 1
        if row["status"] not in FINAL_STATUSES:
            stuck += 1
        resumed += row["resumes"] > 0
        resumes += row["resumes"]
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
        "resumed": resumed,
        "resumes_total": resumes,
        "callbacks_without_execution": strays,
        "by_status": dict(sorted(by_status.items(), key=lambda kv: -kv[1])),
    }


def steps_made_twice(runs: list[dict], log_path: Path) -> tuple[dict, dict]:
    """Count the steps made twice (bench/repeats.py), then check that the count can fail.

    The check plants three repeats in the real data: a copy of a completed
    run's LLM step (same llm_call_N), a copy of another's tool step (same
    tool_call_id), and a request log line re-sending a third run's recorded
    prompt. The planted rows are deleted again. Return (figures, self-check).
    """
    from executions.models import Execution, ExecutionStep

    ids = [r["action_id"] for r in runs]
    by_message: dict[str, str] = {}
    for start in range(0, len(ids), 1000):
        for row in Execution.objects.filter(action_id__in=ids[start : start + 1000]).values(
            "id", "message"
        ):
            by_message[row["message"]] = str(row["id"])
    executions = list(by_message.values())
    fields = ("id", "execution_id", "kind", "name", "input", "replay", "created_at", "attempt")

    def steps() -> list[dict]:
        found = []
        for start in range(0, len(executions), 1000):
            chunk = executions[start : start + 1000]
            found.extend(ExecutionStep.objects.filter(execution_id__in=chunk).values(*fields))
        return found

    requests = repeats.read_log(log_path)
    journal = steps()
    found = repeats.repeated_steps(requests, journal, by_message)

    # The self-check, on three runs of their own.
    llm_steps = [s for s in journal if s["kind"] == "llm" and s["replay"]]
    tool_steps = [s for s in journal if s["kind"] == "tool" and s["replay"]]
    recorded = {(str(s["execution_id"]), (s["input"] or {}).get("messages")) for s in llm_steps}
    check: dict = {"planted": 3}
    used: set[str] = set()
    planted_rows = []
    try:
        for source in (llm_steps, tool_steps):
            step = next(s for s in source if str(s["execution_id"]) not in used)
            used.add(str(step["execution_id"]))
            copy = {k: v for k, v in step.items() if k not in ("id", "execution_id")}
            copy["attempt"] += 1
            planted_rows.append(
                ExecutionStep.objects.create(execution_id=step["execution_id"], **copy).pk
            )
        resend = next(
            r
            for r in requests
            if r["status"] == 200
            and by_message.get(r["run"]) not in used | {None}
            and (by_message[r["run"]], r["messages"]) in recorded
        )
        now = time.time()
        planted_log = [*requests, {**resend, "arrived": now, "answered": now}]
        again = repeats.repeated_steps(planted_log, steps(), by_message)
        check["counted"] = again["repeated_steps"] - found["repeated_steps"]
    except StopIteration:
        check["counted"] = None  # too few runs with steps to plant in
    finally:
        ExecutionStep.objects.filter(pk__in=planted_rows).delete()
    check["passed"] = check["counted"] == check["planted"]
    return found, check


def main() -> None:
    args = parse()
    machine = figures.machine()
    env = prepare(args.database_url, args.redis_url, flush=args.flush)
    from django.conf import settings  # read once prepare() has set the environment up

    if args.runs_per_worker is None:
        args.runs_per_worker = settings.AES_RUNS_PER_WORKER
    args.tier = env.tier(args.tier)
    print(f"database {redact(env.database_url)}, Redis {redact(env.redis_url)}, logs {env.workdir}")
    runs = make_runs(args)
    request_log = env.workdir / "llm-requests.jsonl"
    llm_args = ["--error-rate", str(args.error_rate), "--hang-seconds", "6"]
    llm_args += ["--latency", str(args.llm_latency), "--request-log", str(request_log)]
    pipeline = Pipeline(
        env,
        rq_workers=args.rq_workers,
        runs_per_worker=args.runs_per_worker,
        llm_args=llm_args,
        service_env=QUICK_RECOVERY,
    )
    client = Client(env.redis_url)
    chaos = Chaos(
        pipeline,
        args.horse_kill_every,
        args.worker_kill_every,
        args.service_kill_every,
        args.machine_kill_every,
    )
    started = time.monotonic()
    try:
        pipeline.start()
        print(f"service up: {args.rq_workers} RQ workers x {args.runs_per_worker} runs", flush=True)
        chaos.start()
        closed_loop(client, runs, args.tier, args.in_flight, started + args.timeout)
        chaos.halt.set()
        chaos.join(timeout=180)
        push_seconds = time.monotonic() - started
        print(
            f"pushed {len(client.pushed_at)} runs in {push_seconds:.0f}s; "
            f"killed {chaos.horses_killed} work-horses, {chaos.workers_killed} RQ workers "
            f"with their horse or runs, {chaos.service_kills} services alone, "
            f"{chaos.machines_lost} services with all their workers "
            f"({chaos.errors} chaos errors)",
            flush=True,
        )
        # Those --timeout left unpushed are no one's to answer.
        pushed = [r for r in runs if r["correlation_id"] in client.pushed_at]
        client.wait_for([r["correlation_id"] for r in pushed], args.final_wait)
        time.sleep(5)  # a duplicate would come late: give it the chance
        result = check(client, pushed)
        dead = env.client().llen(keys.DEAD_LETTER)
    finally:
        chaos.halt.set()
        client.close()
        pipeline.stop()
        env.stop_children()
    twice, self_check = steps_made_twice(pushed, request_log)
    seconds = time.monotonic() - started
    print(f"runs={args.runs} seconds={seconds:.0f} dead_letters={dead}")
    print(f"by status: {result['by_status']}")
    print(", ".join(f"{k}={v}" for k, v in result.items() if k != "by_status"))
    print(", ".join(f"{k}={v}" for k, v in twice.items()))
    print(
        f"repeated-steps self-check: {self_check['counted']} of {self_check['planted']} planted "
        f"repeats counted: {'passed' if self_check['passed'] else 'FAILED'}"
    )
    print(
        f"lost={result['lost']} duplicated={result['duplicated']} stuck={result['stuck']} "
        f"resumed={result['resumed']} repeated_steps={twice['repeated_steps']}"
    )
    measured = {
        "runs_pushed": len(client.pushed_at),
        "push_seconds": round(push_seconds, 1),
        "soak_seconds": round(seconds, 1),
        "service_default_runs_per_worker": settings.AES_RUNS_PER_WORKER,
        "work_horses_killed": chaos.horses_killed,
        "rq_workers_killed": chaos.workers_killed,
        "services_killed": chaos.service_kills,
        "services_killed_with_their_workers": chaos.machines_lost,
        "fault_injection_errors": chaos.errors,
        "dead_letters": dead,
        **{
            (k if k.startswith("callbacks") else f"runs_{k}"): v
            for k, v in result.items()
            if k != "by_status"
        },
        **twice,
        "repeated_steps_self_check_planted": self_check["planted"],
        "repeated_steps_self_check_counted": self_check["counted"],
        "repeated_steps_self_check_passed": self_check["passed"],
        **figures.flat("runs_by_status", result["by_status"]),
    }
    figures.write(args.json, figures.document("soak", args, machine, measured))
    ok = result["lost"] == result["duplicated"] == result["stuck"] == twice["repeated_steps"] == 0
    sys.exit(0 if ok and self_check["passed"] else 1)


if __name__ == "__main__":
    main()
