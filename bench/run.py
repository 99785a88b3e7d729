"""Benchmark the AES pipeline against the floor of bare RQ and Redis.

    pip install -r bench/requirements.txt   # once: the service's pins plus psutil
    python -m bench.run --runs 2000 --rq-workers 2 --llm-latency 0 \\
        --database-url postgres://postgres@127.0.0.1:5432/aesbench \\
        --redis-url redis://127.0.0.1:6379/9 --flush --json /tmp/bench.json

Run from the project's root. Starts the LLM stand-in, the dev peers and
`run_execution_worker` as child processes, warms up, measures sequential
runs (low load) then `--runs` runs pushed at once (or `--in-flight K` at a
time), then stops the service and measures bare RQ no-op jobs with as many
workers, and a bare LPUSH/BRPOP round trip. Method and figures:
docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench import floor, load, report
from bench.common import prepare, redact
from bench.pipeline import Client, Pipeline, agent_run


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs measured under load")
    parser.add_argument("--rq-workers", type=int, default=2)
    parser.add_argument(
        "--runs-per-worker", type=int, default=1, help="1: forking workers; more: threads"
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
    parser.add_argument("--floor-class", choices=sorted(floor.WORKER_CLASSES), default="fork")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--flush", action="store_true", help="empty the Redis database first")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.latency_runs is None:
        args.latency_runs = 100 if args.llm_latency == 0 else 20
    return args


def seed_sessions(env, sessions: int, history: int) -> list[str]:
    """Give each session `history` messages in the CS stand-in's store."""
    ids = [f"bench-session-{i}" for i in range(sessions)]
    client = env.client()
    for session in ids:
        for n in range(history):
            role = "user" if n % 2 == 0 else "assistant"
            text = f"{role} message {n} of the bench's conversation, about forty characters."
            client.rpush(
                f"devpeers:conversation:{session}",
                json.dumps(
                    {"role": role, "content": text, "created_at": "2025-01-01T00:00:00+00:00"}
                ),
            )
    return ids


def main() -> None:
    args = parse()
    env = prepare(args.database_url, args.redis_url, flush=args.flush)
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
    client = Client(env.redis_url)
    # URLs stay out of the JSON: they may carry passwords.
    hidden = {"database_url", "redis_url"}
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result: dict = {"config": {k: v for k, v in config.items() if k not in hidden}}
    # The machine is shared: the load average tells how much else was running.
    result["loadavg_at_start"] = os.getloadavg()
    try:
        pipeline.start()
        print(f"service up: {args.rq_workers} RQ workers; warming up", flush=True)
        load.sequential(client, make, args.warmup, args.tier, timeout=120)
        ids = load.sequential(client, make, args.latency_runs, args.tier, timeout=120)
        result["low_load"] = report.latencies(client, ids, args.llm_latency)
        print(f"low load: {result['low_load']}", flush=True)
        measured = load.under_load(
            env,
            pipeline,
            client,
            make,
            runs=args.runs,
            tier=args.tier,
            in_flight=args.in_flight,
            timeout=args.timeout,
        )
        result["load"] = report.load_figures(measured, client, args.llm_latency)
        print(f"under load: {result['load']['runs_per_second']} runs/s", flush=True)
    finally:
        client.close()
        pipeline.stop()
    if not args.no_floor:
        time.sleep(1)
        threaded = args.runs_per_worker > 1
        result["floor"] = floor.rq_noop(
            env,
            tier=args.tier,
            workers=args.rq_workers,
            jobs=args.runs,
            worker_class="threads" if threaded else args.floor_class,
            slots=args.runs_per_worker,
        )
        result["roundtrip"] = floor.lpush_brpop(env)
    env.stop_children()
    result["loadavg_at_end"] = os.getloadavg()
    print(report.table(result))
    print(f"load average at start {result['loadavg_at_start']}, at end {result['loadavg_at_end']}")
    result["targets"] = [
        {"target": t, "wanted": w, "measured": m, "met": ok}
        for t, w, m, ok in report.targets(result)
    ]
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
