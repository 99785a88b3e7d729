"""Turns the measurements of bench.run into figures, a table and targets."""

from __future__ import annotations

import statistics
from typing import Any

from bench.common import merged, percentile
from bench.pipeline import Client

AES_ROLES = ("consumer", "rqworker", "horse")


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def latencies(client: Client, ids: list[str], llm_latency: float) -> dict[str, Any]:
    """Push→callback latency, and the same minus the stand-in's time (AES overhead)."""
    total, overhead = [], []
    for run_id in ids:
        seconds = client.latency(run_id)
        calls = client.received[run_id][0].callback["data"].get("iterations") or 0
        total.append(seconds)
        overhead.append(seconds - calls * llm_latency)
    figures = {}
    for name, values in (("latency", total), ("overhead", overhead)):
        for p in (50, 95, 99):
            figures[f"{name}_p{p}_ms"] = _ms(percentile(values, p))
    return figures


def statuses(client: Client, ids: list[str]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for run_id in ids:
        data = client.received[run_id][0].callback["data"]
        key = data["status"] + (f":{data['error']['code']}" if data.get("error") else "")
        counted[key] = counted.get(key, 0) + 1
    return counted


def top(calls: dict[str, int], runs: int, n: int = 12) -> dict[str, float]:
    ranked = sorted(calls.items(), key=lambda item: -item[1])[:n]
    return {name: round(count / runs, 2) for name, count in ranked}


def load_figures(load: dict[str, Any], client: Client, llm_latency: float) -> dict[str, Any]:
    runs = load["completed_callbacks"] or 1
    counts = load["counts"]
    sql = merged(counts, "sql", AES_ROLES)
    aes_redis = merged(counts, "redis", AES_ROLES)
    peaks = load["peaks"]
    slot = {
        role: round(statistics.median(values), 1)
        for role, values in peaks.uss_each.items()
        if values
    }
    figures: dict[str, Any] = {
        "runs": load["runs"],
        "callbacks": load["completed_callbacks"],
        "seconds": round(load["seconds"], 2) if load["seconds"] else None,
        "runs_per_second": round(runs / load["seconds"], 1) if load["seconds"] else None,
        "statuses": statuses(client, load["ids"]),
        **latencies(client, load["ids"], llm_latency),
        "redis_commands_per_run": round(sum(load["redis_calls"].values()) / runs, 1),
        "top_redis_commands_per_run": top(load["redis_calls"], runs),
        "redis_commands_per_run_all": top(load["redis_calls"], runs, 100),
        "redis_commands_sent_per_run_by_role_all": {
            role: top(counts.get(role, {}).get("redis", {}), runs, 100) for role in AES_ROLES
        },
        "aes_redis_commands_sent_per_run": round(sum(aes_redis.values()) / runs, 1),
        "aes_redis_roundtrips_per_run": round(
            sum(merged(counts, "trips", AES_ROLES).values()) / runs, 1
        ),
        "redis_commands_sent_per_run_by_role": {
            role: round(sum(counts.get(role, {}).get("redis", {}).values()) / runs, 1)
            for role in AES_ROLES
        },
        "sql_per_run": round(sum(sql.values()) / runs, 2),
        "sql_per_run_by_role": {
            role: round(sum(counts.get(role, {}).get("sql", {}).values()) / runs, 2)
            for role in AES_ROLES
        },
        "top_sql_per_run": top(sql, runs, 20),
        "aes_cpu_ms_per_run": round(load["tree_cpu_seconds"] * 1000 / runs, 1),
        "standins_cpu_ms_per_run": round(load["standins_cpu_seconds"] * 1000 / runs, 1),
        "redis_server_cpu_ms_per_run": round(load["redis_cpu_seconds"] * 1000 / runs, 2),
        "peak_rss_mib": round(peaks.rss_total, 1),
        "peak_uss_mib": round(peaks.uss_total, 1),
        "peak_pss_mib": round(peaks.pss_total, 1),
        "pss_mib_per_worker_slot_median": _median(peaks.pss_per_slot),
        "pss_mib_per_worker_slot_max": round(max(peaks.pss_per_slot, default=0), 1),
        "peak_uss_mib_by_role": {k: round(v, 1) for k, v in peaks.uss_by_role.items()},
        "median_uss_mib_per_process": slot,
        "max_work_horses": peaks.horses_max,
    }
    if peaks.horses_max:
        figures["peak_uss_mib_per_executing_run"] = round(peaks.uss_total / peaks.horses_max, 1)
    return figures


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def targets(result: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(target, wanted, measured, met) for the issue's targets that this run measured."""
    rows: list[tuple[str, str, str, bool | None]] = []
    load, low, floor = result["load"], result.get("low_load"), result.get("floor")
    instant = result["config"]["llm_latency"] == 0
    if instant and floor:
        share = load["runs_per_second"] / floor["jobs_per_second"]
        rows.append(("throughput vs bare RQ", ">= 50%", f"{share:.0%}", share >= 0.5))
        extra = load["redis_commands_per_run"] - floor["redis_commands_per_job"]
        rows.append(("Redis commands beyond RQ's", "<= 20", f"{extra:.1f}", extra <= 20))
    if instant and low:
        p50 = low["overhead_p50_ms"]
        rows.append(("overhead p50, low load", "<= 30 ms", f"{p50} ms", p50 <= 30))
    rows.append(("SQL per run", "<= 8", f"{load['sql_per_run']}", load["sql_per_run"] <= 8))
    if result["config"]["in_flight"]:
        rate, errors = (
            load["runs_per_second"],
            sum(n for k, n in load["statuses"].items() if k != "completed"),
        )
        rows.append(
            (
                f"{result['config']['in_flight']} in flight",
                ">= 90 runs/s, 0 errors",
                f"{rate} runs/s, {errors} errors",
                rate >= 90 and errors == 0,
            )
        )
        per_run = load.get("pss_mib_per_worker_slot_max")
        if per_run is not None:
            rows.append(("PSS MiB per executing run", "<= 25", f"{per_run}", per_run <= 25))
    return rows


def table(result: dict[str, Any]) -> str:
    load, low, floor, rt = (result.get(k) for k in ("load", "low_load", "floor", "roundtrip"))
    lines = [f"{'figure':44} {'AES':>12} {'floor':>12} {'AES/floor':>10}"]

    def row(name: str, aes: Any, base: Any = None) -> None:
        ratio = f"{aes / base:.2f}" if isinstance(aes, int | float) and base else ""
        lines.append(f"{name:44} {aes!s:>12} {'' if base is None else base!s:>12} {ratio:>10}")

    row(
        "throughput (runs/s | no-op jobs/s)",
        load["runs_per_second"],
        floor and round(floor["jobs_per_second"], 1),
    )
    row(
        "Redis commands per run (server) | per job",
        load["redis_commands_per_run"],
        floor and round(floor["redis_commands_per_job"], 1),
    )
    row("Redis commands sent by the AES per run", load["aes_redis_commands_sent_per_run"])
    row("Redis round trips of the AES per run", load["aes_redis_roundtrips_per_run"])
    row("SQL statements per run", load["sql_per_run"])
    if low:
        for p in (50, 95, 99):
            row(f"low load: AES overhead p{p} (ms)", low[f"overhead_p{p}_ms"])
        floor_latency = (floor or {}).get("low_load_latency_ms", {})
        for p in (50, 95, 99):
            row(
                f"low load: latency p{p} (ms) | job p{p}",
                low[f"latency_p{p}_ms"],
                floor_latency.get(f"p{p}"),
            )
    for p in (50, 95, 99):
        row(f"under load: latency p{p} (ms)", load[f"latency_p{p}_ms"])
    row("AES CPU per run (ms)", load["aes_cpu_ms_per_run"])
    row("stand-ins CPU per run (ms)", load["standins_cpu_ms_per_run"])
    row("Redis server CPU per run (ms)", load["redis_server_cpu_ms_per_run"])
    row("peak RSS of the worker tree (MiB)", load["peak_rss_mib"])
    row("peak USS of the worker tree (MiB)", load["peak_uss_mib"])
    row("peak PSS of the worker tree (MiB)", load["peak_pss_mib"])
    row("PSS per run slot, median (MiB)", load["pss_mib_per_worker_slot_median"])
    row("PSS per run slot, max (MiB)", load["pss_mib_per_worker_slot_max"])
    if rt:
        row("bare LPUSH+BRPOP pairs/s (one client)", "", round(rt["pairs_per_second"]))
    lines.append(f"statuses: {load['statuses']}")
    lines.append("")
    lines.append(f"{'target':34} {'wanted':>24} {'measured':>24}  met")
    for name, wanted, measured, met in targets(result):
        lines.append(f"{name:34} {wanted:>24} {measured:>24}  {'yes' if met else 'NO'}")
    return "\n".join(lines)
