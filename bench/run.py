"""Benchmark the AES pipeline against the fair floor: a run's irreducible work on bare RQ.

    pip install -r bench/requirements.txt   # once: the service's pins plus psutil
    python -m bench.run --runs 2000 --llm-latency 0 \\
        --database-url postgres://postgres@127.0.0.1:5432/aesbench \\
        --redis-url redis://127.0.0.1:6379/9 --flush

Run from the project's root. Starts the LLM stand-in, the dev peers and
`run_execution_worker` as child processes, warms up, measures sequential
runs (low load) then `--runs` runs pushed at once (or `--in-flight K` at a
time). Then stops the service and measures the fair floor the same way, in
the same command: RQ jobs that each insert a row, update it twice, make one
chat completion against the same LLM stand-in and LPUSH a callback, on as
many worker processes of the AES's class (bench/floor.py); and a bare
LPUSH/BRPOP round trip. Prints a summary and the targets it measured, and
writes the raw figures as one flat JSON document (`--json`, by default
bench/results/run.json). Method and figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json

from bench import figures, floor, load, report
from bench.common import Env, other_clients_rate, prepare, redact
from bench.pipeline import Client, Pipeline, agent_run
from standins.peers import conversation_key


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=2000, help="runs measured under load")
    parser.add_argument("--rq-workers", type=int, default=2)
    parser.add_argument(
        "--runs-per-worker",
        type=int,
        help="1: forking workers; more: threads (default: the service's AES_RUNS_PER_WORKER)",
    )
    parser.add_argument("--llm-latency", type=float, default=0.0, help="seconds per LLM answer")
    parser.add_argument("--in-flight", type=int, default=0, help="keep K runs in flight")
    parser.add_argument("--agent", default="plain-bot", help="plain-bot, or support-bot (tool)")
    parser.add_argument("--tier", help="a tier of the Tier table (default: the one served first)")
    parser.add_argument("--sessions", type=int, default=0, help="spread runs over S sessions")
    parser.add_argument("--history", type=int, default=0, help="messages already in each session")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--latency-runs", type=int, default=None, help="sequential runs")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the load phase")
    parser.add_argument("--no-floor", action="store_true", help="measure the AES only")
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--flush", action="store_true", help="empty the Redis database first")
    figures.add_json_option(parser, "run")
    args = parser.parse_args()
    if args.latency_runs is None:
        args.latency_runs = 100 if args.llm_latency == 0 else 20
    return args


def seed_sessions(env: Env, sessions: int, history: int) -> list[str]:
    """Give each session `history` messages in the CS stand-in's store."""
    ids = [f"bench-session-{i}" for i in range(sessions)]
    client = env.client()
    for session in ids:
        for n in range(history):
            role = "user" if n % 2 == 0 else "assistant"
            text = f"{role} message {n} of the bench's conversation, about forty characters."
            client.rpush(
                conversation_key(session),
                json.dumps(
                    {"role": role, "content": text, "created_at": "2025-01-01T00:00:00+00:00"}
                ),
            )
    return ids


def main() -> None:
    args = parse()
    machine = figures.machine()
    env = prepare(args.database_url, args.redis_url, flush=args.flush)
    from django.conf import settings  # read once prepare() has set the environment up

    if args.runs_per_worker is None:
        args.runs_per_worker = settings.AES_RUNS_PER_WORKER
    args.tier = env.tier(args.tier)
    print(f"database {redact(env.database_url)}, Redis {redact(env.redis_url)}, logs {env.workdir}")
    sessions = seed_sessions(env, args.sessions, args.history)

    def make(i: int) -> dict:
        session = sessions[i % len(sessions)] if sessions else None
        return agent_run(
            tier=args.tier,
            agent_id=args.agent,
            session_id=session,
            message=f"Hello, how do refunds work? ({i})",
        )

    pipeline = Pipeline(
        env,
        rq_workers=args.rq_workers,
        runs_per_worker=args.runs_per_worker,
        llm_args=["--latency", str(args.llm_latency)],
    )
    # On a shared server INFO commandstats also counts other clients' commands.
    others = [other_clients_rate(env.client())]
    client = Client(env.redis_url)
    measured: dict = {
        "low_load_runs": args.latency_runs,
        "service_default_runs_per_worker": settings.AES_RUNS_PER_WORKER,
    }
    try:
        pipeline.start()
        print(
            f"service up: {args.rq_workers} RQ workers x {args.runs_per_worker} runs; warming up",
            flush=True,
        )
        load.sequential(client, make, args.warmup, args.tier, timeout=120)
        ids = load.sequential(client, make, args.latency_runs, args.tier, timeout=120)
        measured.update(report.latencies(client, ids, args.llm_latency, "low_load"))
        print(f"low load: overhead p50 {measured['low_load_overhead_p50_ms']} ms", flush=True)
        phase = load.under_load(
            env,
            pipeline,
            client,
            make,
            runs=args.runs,
            tier=args.tier,
            in_flight=args.in_flight,
            timeout=args.timeout,
        )
        measured.update(report.load_figures(phase, client, args.llm_latency))
        print(f"under load: {measured['runs_per_second']} runs/s", flush=True)
    finally:
        client.close()
        pipeline.stop(keep_llm=not args.no_floor)
    if not args.no_floor:
        print("fair floor: the same load on bare RQ jobs", flush=True)
        try:
            measured.update(
                floor.fair_floor(
                    env,
                    llm_url=pipeline.llm_url,
                    llm_pid=pipeline.llm.pid if pipeline.llm else None,
                    tier=args.tier,
                    workers=args.rq_workers,
                    runs_per_worker=args.runs_per_worker,
                    make=make,
                    runs=args.runs,
                    in_flight=args.in_flight,
                    warmup=args.warmup,
                    latency_runs=args.latency_runs,
                    llm_latency=args.llm_latency,
                    timeout=args.timeout,
                )
            )
        finally:
            pipeline.stop_llm()
        print(f"fair floor: {measured['fair_floor_jobs_per_second']} jobs/s", flush=True)
        measured.update(floor.lpush_brpop(env))
    env.stop_children()
    others.append(other_clients_rate(env.client()))
    measured.update(report.compared(measured))
    measured.update(report.other_clients(sum(others) / len(others)))
    body = figures.document("run", args, machine, measured)
    body.update(report.target_figures(body))
    print(report.table(body))
    figures.write(args.json, body)


if __name__ == "__main__":
    main()
