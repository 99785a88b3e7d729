"""Profile what one run costs a worker: `python -m bench.profile_run --runs 20`.

    pip install -r bench/requirements.txt   # once: the service's pins plus psutil

Loads Django and the job module as ExecutionWorker does, records runs through
the consumer's handler, then for each one forks a child that runs
`executions.jobs.run_execution` under cProfile, as an RQ work-horse would; with
`--in-process`, runs them in this process instead, as a threaded worker's
slot does (connections and caches kept from one run to the next), and also
reports the CPU time per run. The LLM stand-in and the dev peers run in
threads of this process. Run from the project's root. Prints the wall time
per run and the functions with the most cumulative time, and writes them as
one flat JSON document (`--json`, by default bench/results/profile_run.json).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.db import connections
from rq.job import Job

from bench import figures
from bench.common import ROOT, prepare
from bench.pipeline import agent_run
from standins.llm import LLMStandin
from standins.peers import DevPeers, load_fixture


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile_run", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--agent", default="plain-bot")
    parser.add_argument("--tier", help="a tier of the Tier table (default: the one served first)")
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--flush", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--no-profile", action="store_true", help="time only, no cProfile")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="before forking, build the OpenAI client and read the tiers in the parent "
        "(what this bench suggests the worker class do), to measure the saving",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="no fork: run as a threaded worker's slot"
    )
    figures.add_json_option(parser, "profile_run")
    args = parser.parse_args()
    machine = figures.machine()
    env = prepare(args.database_url, args.redis_url, flush=args.flush)
    args.tier = env.tier(args.tier)
    # Importable only once Django is set up; the RQ worker's module is what
    # the RQ worker process loads before it forks.
    from aes_project import redis_clients
    from executions import jobs
    from executions.models import execution_id_for
    from workers import handlers
    from workers.rq_worker import warm

    llm = LLMStandin()
    settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY = llm.start(), "bench"
    peers = DevPeers(redis_clients.shared(), [args.tier], load_fixture())
    _thread, stop = peers.start_in_thread()
    if args.warm:
        warm()
    out = Path(tempfile.mkdtemp(prefix="aes-profile-"))
    walls, cpus = [], []
    profiler = cProfile.Profile()
    for i in range(args.runs):
        run = agent_run(tier=args.tier, agent_id=args.agent)
        handlers.handle(args.tier, json.dumps(run).encode())
        execution_id = str(execution_id_for(run["tenant_id"], run["action_id"]))
        redis_clients.shared().delete(Job.key_for(execution_id))  # run it here, not in RQ
        if args.in_process:
            start, cpu = time.monotonic(), time.process_time()
            if args.no_profile:
                jobs.run_execution(execution_id)
            else:
                profiler.runcall(jobs.run_execution, execution_id)
            walls.append(time.monotonic() - start)
            cpus.append(time.process_time() - cpu)
            continue
        connections.close_all()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0 and args.no_profile:
            jobs.run_execution(execution_id)
            os._exit(0)
        if pid == 0:
            profiler = cProfile.Profile()
            profiler.runcall(jobs.run_execution, execution_id)
            profiler.dump_stats(str(out / f"{i}.prof"))
            os._exit(0)
        os.waitpid(pid, 0)
        walls.append(time.monotonic() - start)
    stop.set()
    llm.stop()
    walls.sort()
    mode = "in process" if args.in_process else "fork to exit"
    measured: dict = {
        "mode": mode,
        "profiled": not args.no_profile,
        "runs": len(walls),
        "wall_ms_per_run_median": round(walls[len(walls) // 2] * 1000, 2),
        "wall_ms_per_run_min": round(walls[0] * 1000, 2),
        "wall_ms_per_run_max": round(walls[-1] * 1000, 2),
    }
    print(
        f"wall per run ({mode}): median {measured['wall_ms_per_run_median']:.1f} ms, "
        f"min {measured['wall_ms_per_run_min']:.1f} ms, "
        f"max {measured['wall_ms_per_run_max']:.1f} ms"
    )
    if cpus:
        cpus.sort()
        measured["cpu_ms_per_run_median"] = round(cpus[len(cpus) // 2] * 1000, 2)
        print(
            "CPU per run (this process, all threads): "
            f"median {measured['cpu_ms_per_run_median']:.1f} ms"
        )
    if not args.no_profile:
        if args.in_process:
            stats = pstats.Stats(profiler)
        else:
            stats = pstats.Stats(*[str(p) for p in sorted(out.glob("*.prof"))])
        stats.sort_stats("cumulative").print_stats(args.top)
        measured.update(_cumulative(stats, args.top, len(walls)))
    figures.write(args.json, figures.document("profile_run", args, machine, measured))


def _cumulative(stats: pstats.Stats, top: int, runs: int) -> dict[str, float]:
    """`profile_cumulative_ms_per_run.{file}:{line}({function})` of the `top` functions.

    A file is named from the project's root, or from site-packages for a library.
    """
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][3])[:top]
    out = {}
    for (path, line, function), (_cc, _nc, _tt, cumulative, _callers) in rows:
        where = path.rpartition("site-packages/")[2]
        if where == path and Path(path).is_relative_to(ROOT):
            where = str(Path(path).relative_to(ROOT))
        key = f"profile_cumulative_ms_per_run.{where}:{line}({function})"
        out[key] = round(cumulative * 1000 / runs, 3)
    return out


if __name__ == "__main__":
    main()
