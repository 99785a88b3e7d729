"""The measured phases of bench.run: sequential runs, and runs under load."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.common import Env, commandstats, counts_diff, diff, merged, read_counts, server_cpu
from bench.pipeline import Client, Pipeline, counting_client
from bench.sampler import (
    TreeSampler,
    machine_busy_seconds,
    process_cpu_seconds,
    tree_cpu_by_role,
)

MakeRun = Callable[[int], dict[str, Any]]


def sequential(client: Client, make: MakeRun, runs: int, tier: str, timeout: float) -> list[str]:
    """Push runs one at a time, each after the previous one's callback (low load)."""
    ids = []
    for i in range(runs):
        run = make(i)
        client.push([run], tier)
        if not client.wait_for([run["correlation_id"]], timeout):
            raise TimeoutError(f"no callback for {run['correlation_id']} within {timeout}s")
        ids.append(run["correlation_id"])
    return ids


def closed_loop(
    client: Client, runs: list[dict[str, Any]], tier: str, in_flight: int, deadline: float
) -> None:
    """Keep `in_flight` runs outstanding: push one more for every callback."""
    answered_before = len(client.received)
    pushed = min(in_flight, len(runs))
    client.push(runs[:pushed], tier)
    while True:
        with client.changed:
            # Every callback on the bench's queue answers one of these runs.
            done = len(client.received) - answered_before
            if done >= len(runs) or time.monotonic() > deadline:
                return
            want = min(len(runs), done + in_flight)
            if want <= pushed:
                client.changed.wait(1.0)
                continue
        client.push(runs[pushed:want], tier)
        pushed = want


def steady_rate(times: list[float], runs: int, in_flight: int) -> float | None:
    """Callbacks a second while `closed_loop` held `in_flight` runs outstanding.

    That is from the first callback (every slot filled by then) to the one
    that let the last run be pushed; after it, fewer remain in flight. None
    for runs pushed at once, or a window of under two callbacks.
    """
    last = runs - in_flight - 1  # the callback after which the last run was pushed
    if not in_flight or last < 1 or len(times) <= last or times[last] <= times[0]:
        return None
    return round(last / (times[last] - times[0]), 1)


def under_load(
    env: Env,
    pipeline: Pipeline,
    client: Client,
    make: MakeRun,
    *,
    runs: int,
    tier: str,
    in_flight: int,
    timeout: float,
) -> dict[str, Any]:
    """Push `runs` runs (all at once, or `in_flight` at a time) and measure the window."""
    batch = [make(i) for i in range(runs)]
    ids = [r["correlation_id"] for r in batch]
    redis = counting_client(env.redis_url)  # its INFO calls are the bench's, not the AES's
    service_pid = pipeline.service.pid
    side = [pipeline.llm.pid, pipeline.peers.pid]
    before = {
        "calls": commandstats(redis),
        "counts": read_counts(env.count_dir),
        "sent": client.sent(),
        "tree_cpu": tree_cpu_by_role(service_pid),
        "side_cpu": sum(process_cpu_seconds(p) for p in side),
        "redis_cpu": server_cpu(redis),
        "machine_busy": machine_busy_seconds(),
    }
    sampler = TreeSampler(service_pid, runs_per_worker=pipeline.runs_per_worker)
    sampler.start()
    started = time.monotonic()
    deadline = started + timeout
    if in_flight:
        closed_loop(client, batch, tier, in_flight, deadline)
    else:
        client.push(batch, tier)
    complete = client.wait_for(ids, max(0.0, deadline - time.monotonic()))
    tree_cpu = tree_cpu_by_role(service_pid)
    machine_busy = machine_busy_seconds() - before["machine_busy"]
    wall = time.monotonic() - started
    time.sleep(0.5)  # the instrumented processes flush their counters every 0.2 s
    peaks = sampler.stop()
    own = dict(redis.sent)  # the INFO about to be sent is not in its own figures
    calls = diff(commandstats(redis), before["calls"])
    counts = counts_diff(read_counts(env.count_dir), before["counts"])
    for name, n in [*diff(client.sent(), before["sent"]).items(), *own.items()]:
        calls[name] = calls.get(name, 0) - n
    # The dev peers stand in for other services: their commands are not the AES's.
    for name, n in merged(counts, "redis", ("peers",)).items():
        calls[name.lower()] = calls.get(name.lower(), 0) - n
    done = [i for i in ids if i in client.received]
    times = sorted(client.received[i][0].at for i in done)
    first_push = min(client.pushed_at[i] for i in ids)
    return {
        "runs": runs,
        "completed_callbacks": len(done),
        "all_answered": complete,
        "ids": done,
        "seconds": (times[-1] - first_push) if times else None,
        "steady_runs_per_second": steady_rate(times, runs, in_flight),
        "callback_times": times,
        "redis_calls": calls,
        "counts": counts,
        "tree_cpu_seconds": sum(tree_cpu.values()) - sum(before["tree_cpu"].values()),
        "tree_cpu_seconds_by_role": {k: v - before["tree_cpu"][k] for k, v in tree_cpu.items()},
        "wall_seconds": wall,
        "machine_busy_seconds": machine_busy,
        "standins_cpu_seconds": sum(process_cpu_seconds(p) for p in side) - before["side_cpu"],
        "redis_cpu_seconds": server_cpu(redis) - before["redis_cpu"],
        "peaks": peaks,
    }
