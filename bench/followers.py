"""Many clients following runs over SSE on one web process, while the other API routes answer.

    python -m bench.followers --followers 200 \\
        --database-url postgres://postgres@127.0.0.1:5432/aesbench \\
        --redis-url redis://127.0.0.1:6379/9 --flush

Starts the LLM stand-in (streaming its answers a chunk every
`--chunk-seconds`, after `--llm-latency`), the dev peers,
`run_execution_worker` and ONE web process (uvicorn, the ASGI app, as
scripts/serve runs it). Then:

1. **Idle**: `--probes` sequential `GET /api/executions/?page_size=10` with a
   tenant token: their latency with nothing else going on.
2. **Followed**: `--followers` streamed runs pushed onto the tier's list, each
   followed by its own client on `GET /api/executions/{id}/events/` from its
   first event (it connects once its stream exists: a run pushed over Redis
   is its tenant's to follow once recorded) until its `done` event;
   meanwhile the same probes run again, one after the other, until the
   last follower has seen `done`.

Writes the probes' p50/p95 idle and under the followers, how many followers
saw `done`, their events, and the web process's CPU and memory
(`--json`, by default bench/results/followers.json). docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx2
import psutil
from redis import asyncio as redis_asyncio

from bench import figures
from bench.common import PYTHON, ROOT, Env, percentile, prepare
from bench.pipeline import Pipeline, agent_run

TENANT = "bench-followers"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.followers", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--followers", type=int, default=200, help="runs, one client each")
    parser.add_argument("--probes", type=int, default=200, help="API requests per phase")
    parser.add_argument("--llm-latency", type=float, default=5.0, help="seconds to first chunk")
    parser.add_argument("--chunk-seconds", type=float, default=0.1, help="between two chunks")
    parser.add_argument("--rq-workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the followers")
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--flush", action="store_true", help="empty the Redis database first")
    figures.add_json_option(parser, "followers")
    return parser.parse_args()


def start_web(env: Env) -> tuple[Any, str]:
    """One uvicorn process serving the ASGI app on a free port; return it and its base URL."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [PYTHON, "-m", "uvicorn", "aes_project.asgi:application"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    command += ["--app-dir", str(ROOT)]
    # The API's per-caller throttle would count the bench's one token against
    # the probes: lifted here.
    web = env.start(command, "web", DB_POOL_SIZE="4", AES_API_RATE="1000000/min")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"{base}/health", timeout=2).status_code == 200:
                return web, base
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the web process did not answer; see {env.workdir}/web.log")


async def probe(client: httpx2.AsyncClient, count: int, stop: asyncio.Event | None) -> list[float]:
    """Latencies (ms) of `count` list requests one after the other (until `stop`, if given)."""
    latencies = []
    while len(latencies) < count or (stop is not None and not stop.is_set()):
        began = time.perf_counter()
        response = await client.get("/api/executions/", params={"page_size": 10})
        response.raise_for_status()
        latencies.append((time.perf_counter() - began) * 1000)
        if stop is not None and stop.is_set() and len(latencies) >= count:
            break
    return latencies


async def follow(
    client: httpx2.AsyncClient, redis, execution_id: str, timeout: float
) -> dict[str, Any]:
    """Follow one run from its first event until `done`."""
    began, events, types = time.perf_counter(), 0, set()
    deadline = time.monotonic() + timeout
    # Pushed over Redis, the run is the tenant's only once recorded: until
    # its stream exists the route would answer 404.
    while not await redis.exists(f"execution:events:{execution_id}"):
        if time.monotonic() > deadline:
            return {"done": False, "events": 0, "seconds": None, "types": types}
        await asyncio.sleep(0.1)
    async with client.stream("GET", f"/api/executions/{execution_id}/events/") as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                events += 1
                types.add(event["type"])
                if event["type"] == "done":
                    seconds = time.perf_counter() - began
                    return {"done": True, "events": events, "seconds": seconds, "types": types}
    return {"done": False, "events": events, "seconds": None, "types": types}


async def measure(args: argparse.Namespace, env: Env, base: str, token: str, web) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx2.Limits(max_connections=args.followers + 10)
    timeout = httpx2.Timeout(60, read=None)
    async with (
        httpx2.AsyncClient(base_url=base, headers=headers, timeout=timeout) as prober,
        httpx2.AsyncClient(
            base_url=base, headers=headers, limits=limits, timeout=timeout
        ) as followers,
    ):
        await probe(prober, 20, None)  # warm
        idle = await probe(prober, args.probes, None)

        from executions.models import execution_id_for

        tier = env.tiers[0]
        runs = [
            agent_run(tier=tier, agent_id="plain-bot", tenant_id=TENANT, stream=True)
            for _ in range(args.followers)
        ]
        ids = [str(execution_id_for(TENANT, run["action_id"])) for run in runs]
        process = psutil.Process(web.pid)
        cpu_before = process.cpu_times()
        redis = redis_asyncio.Redis.from_url(env.redis_url)
        tasks = [asyncio.create_task(follow(followers, redis, i, args.timeout)) for i in ids]
        client = env.client()
        for run in runs:
            client.lpush(f"execution:{tier}:actions", json.dumps(run))
        stop = asyncio.Event()
        began = time.perf_counter()
        prober_task = asyncio.create_task(probe(prober, args.probes, stop))
        peak_rss, peak_connections = 0, 0
        while not all(task.done() for task in tasks):
            peak_rss = max(peak_rss, process.memory_info().rss)
            peak_connections = max(peak_connections, len(process.net_connections(kind="tcp")))
            await asyncio.sleep(0.5)
        stop.set()
        loaded = await prober_task
        wall = time.perf_counter() - began
        cpu_after = process.cpu_times()
        results = [task.result() for task in tasks]
    done = [r for r in results if r["done"]]
    cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    return {
        "followers": args.followers,
        "followers_that_saw_done": len(done),
        "followers_that_saw_delta_events": sum("delta" in r["types"] for r in done),
        "events_per_follower_median": percentile([r["events"] for r in done], 50),
        "follow_seconds_p50": percentile([r["seconds"] for r in done], 50),
        "follow_seconds_p95": percentile([r["seconds"] for r in done], 95),
        "followed_phase_seconds": round(wall, 2),
        "api_probe_ms_idle_p50": percentile(idle, 50),
        "api_probe_ms_idle_p95": percentile(idle, 95),
        "api_probe_ms_followed_p50": percentile(loaded, 50),
        "api_probe_ms_followed_p95": percentile(loaded, 95),
        "api_probes_idle": len(idle),
        "api_probes_followed": len(loaded),
        "web_cpu_seconds_followed_phase": round(cpu, 2),
        "web_peak_rss_mib": round(peak_rss / 2**20, 1),
        "web_peak_tcp_connections": peak_connections,
        "web_threads_at_end": process.num_threads(),
    }


def main() -> None:
    args = parse()
    env = prepare(args.database_url, args.redis_url, flush=args.flush)
    machine = figures.machine()
    from tokens.models import ApiToken

    token = ApiToken.issue(TENANT, env.tiers[0])[1]
    pipeline = Pipeline(
        env,
        rq_workers=args.rq_workers,
        llm_args=["--latency", str(args.llm_latency), "--chunk-seconds", str(args.chunk_seconds)],
        runs_per_worker=500,
    )
    try:
        pipeline.start()
        web, base = start_web(env)
        measured = asyncio.run(measure(args, env, base, token, web))
    finally:
        pipeline.stop()
        env.stop_children()
    for name, value in measured.items():
        print(f"{name:45} {value}")
    figures.write(args.json, figures.document("followers", args, machine, measured))


if __name__ == "__main__":
    main()
