"""Turns the measurements of bench.run into flat figures, a table and targets."""

from __future__ import annotations

import statistics
from typing import Any

from bench.common import merged, percentile
from bench.pipeline import Client
from bench.sampler import busy_share

AES_ROLES = ("consumer", "rqworker", "horse")


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def latencies(client: Client, ids: list[str], llm_latency: float, prefix: str) -> dict[str, Any]:
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
            figures[f"{prefix}_{name}_p{p}_ms"] = _ms(percentile(values, p))
    return figures


def phases(client: Client, ids: list[str], llm_latency: float, prefix: str) -> dict[str, Any]:
    """Where the runs' time went inside the AES, from their rows: p50, p95 and p99.

    `queue_wait`: recorded by the consumer (`queued_at`) to claimed by a
    worker (`started_at`); `to_step`: claimed to its last step recorded, the
    stand-in's time taken off; `step_to_end`: that step to the final status
    (`finished_at`). A run alone takes milliseconds for each; under load
    they say whether runs wait for a slot or, inside the process, for the
    interpreter and the database pool.
    """
    from django.db.models import Max

    from executions.models import Execution

    callbacks = [client.received[i][0].callback["data"] for i in ids]
    llm_calls = {data["execution_id"]: data.get("iterations") or 0 for data in callbacks}
    rows = (
        Execution.objects.filter(id__in=list(llm_calls))
        .annotate(last_step=Max("steps__created_at"))
        .values_list("id", "queued_at", "started_at", "last_step", "finished_at")
    )
    waits: dict[str, list[float]] = {"queue_wait": [], "to_step": [], "step_to_end": []}
    for execution_id, queued, started, step, finished in rows:
        if not (started and step and finished):
            continue
        llm = llm_calls[str(execution_id)] * llm_latency
        waits["queue_wait"].append((started - queued).total_seconds())
        waits["to_step"].append((step - started).total_seconds() - llm)
        waits["step_to_end"].append((finished - step).total_seconds())
    return {
        f"{prefix}_{name}_p{p}_ms": _ms(percentile(values, p))
        for name, values in waits.items()
        for p in (50, 95, 99)
    }


def statuses(client: Client, ids: list[str]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for run_id in ids:
        data = client.received[run_id][0].callback["data"]
        key = data["status"] + (f":{data['error']['code']}" if data.get("error") else "")
        counted[key] = counted.get(key, 0) + 1
    return counted


def per(calls: dict[str, int], runs: int, prefix: str, digits: int = 2) -> dict[str, float]:
    """`{prefix}.{name}`: each name's count per run, the most frequent first."""
    ranked = sorted(calls.items(), key=lambda item: -item[1])
    return {f"{prefix}.{name}": round(count / runs, digits) for name, count in ranked if count}


def load_figures(load: dict[str, Any], client: Client, llm_latency: float) -> dict[str, Any]:
    runs = load["completed_callbacks"] or 1
    counts = load["counts"]
    sql = merged(counts, "sql", AES_ROLES)
    aes_redis = merged(counts, "redis", AES_ROLES)
    peaks = load["peaks"]
    seconds = load["seconds"]
    figures: dict[str, Any] = {
        "load_runs": load["runs"],
        "load_callbacks": load["completed_callbacks"],
        "load_all_answered": load["all_answered"],
        "load_seconds": round(seconds, 2) if seconds else None,
        "runs_per_second": round(runs / seconds, 1) if seconds else None,
        "steady_runs_per_second": load["steady_runs_per_second"],
    }
    for status, n in sorted(statuses(client, load["ids"]).items()):
        figures[f"callbacks_by_status.{status}"] = n
    figures.update(latencies(client, load["ids"], llm_latency, "load"))
    figures.update(phases(client, load["ids"], llm_latency, "load"))
    figures["redis_commands_per_run"] = round(sum(load["redis_calls"].values()) / runs, 1)
    figures.update(per(load["redis_calls"], runs, "redis_commands_per_run"))
    figures["aes_redis_commands_sent_per_run"] = round(sum(aes_redis.values()) / runs, 1)
    figures["aes_redis_roundtrips_per_run"] = round(
        sum(merged(counts, "trips", AES_ROLES).values()) / runs, 1
    )
    for role in AES_ROLES:
        sent = counts.get(role, {}).get("redis", {})
        figures[f"aes_redis_commands_sent_per_run_by_role.{role}"] = round(
            sum(sent.values()) / runs, 1
        )
        figures.update(per(sent, runs, f"aes_redis_commands_sent_per_run_by_command.{role}"))
    figures["sql_statements_per_run"] = round(sum(sql.values()) / runs, 2)
    for role in AES_ROLES:
        statements = counts.get(role, {}).get("sql", {})
        figures[f"sql_statements_per_run_by_role.{role}"] = round(
            sum(statements.values()) / runs, 2
        )
    figures.update(per(sql, runs, "sql_statements_per_run_by_shape"))
    figures["aes_cpu_ms_per_run"] = round(load["tree_cpu_seconds"] * 1000 / runs, 1)
    for role, seconds in load["tree_cpu_seconds_by_role"].items():
        figures[f"aes_cpu_ms_per_run_by_role.{role}"] = round(seconds * 1000 / runs, 1)
    # What share of the machine's cores the AES took, and every process together:
    # the difference is the stand-ins, Redis, PostgreSQL, the bench and other work.
    figures["aes_cpu_share_of_machine_during_load"] = busy_share(
        load["tree_cpu_seconds"], load["wall_seconds"]
    )
    figures["machine_cpu_busy_share_during_load"] = busy_share(
        load["machine_busy_seconds"], load["wall_seconds"]
    )
    figures["standins_cpu_ms_per_run"] = round(load["standins_cpu_seconds"] * 1000 / runs, 1)
    figures["redis_server_cpu_ms_per_run"] = round(load["redis_cpu_seconds"] * 1000 / runs, 2)
    figures["worker_tree_peak_rss_mib"] = round(peaks.rss_total, 1)
    figures["worker_tree_peak_uss_mib"] = round(peaks.uss_total, 1)
    figures["worker_tree_peak_pss_mib"] = round(peaks.pss_total, 1)
    figures["pss_mib_per_run_slot_median"] = _median(peaks.pss_per_slot)
    figures["pss_mib_per_run_slot_max"] = round(max(peaks.pss_per_slot, default=0), 1)
    for role, value in peaks.uss_by_role.items():
        figures[f"peak_uss_mib_by_role.{role}"] = round(value, 1)
    for role, values in peaks.uss_each.items():
        if values:
            figures[f"median_uss_mib_per_process.{role}"] = round(statistics.median(values), 1)
    figures["work_horses_max"] = peaks.horses_max
    if peaks.horses_max:
        figures["peak_uss_mib_per_executing_run"] = round(peaks.uss_total / peaks.horses_max, 1)
    return figures


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def compared(figures: dict[str, Any]) -> dict[str, Any]:
    """The AES against the fair floor, when both were measured."""
    out: dict[str, Any] = {}
    if figures.get("fair_floor_jobs_per_second") and figures.get("runs_per_second"):
        out["throughput_share_of_fair_floor"] = round(
            figures["runs_per_second"] / figures["fair_floor_jobs_per_second"], 3
        )
    if figures.get("fair_floor_cpu_ms_per_job") and figures.get("aes_cpu_ms_per_run"):
        out["cpu_multiple_of_fair_floor"] = round(
            figures["aes_cpu_ms_per_run"] / figures["fair_floor_cpu_ms_per_job"], 2
        )
    if "rq_redis_commands_per_job" in figures and "redis_commands_per_run" in figures:
        out["redis_commands_beyond_rq_per_run"] = round(
            figures["redis_commands_per_run"] - figures["rq_redis_commands_per_job"], 1
        )
    return out


def other_clients(rate: float) -> dict[str, Any]:
    """What other clients of a shared Redis server sent while nothing of the bench ran.

    INFO commandstats counts every client of the server, so the server-side
    counts are the pipeline's alone only when this is 0 (a server of the
    bench's own). Others' load comes in bursts: it is reported, not subtracted.
    """
    return {
        "redis_other_clients_commands_per_second": round(rate, 1),
        "redis_server_counts_include_other_clients": rate > 0,
    }


def errors(figures: dict[str, Any]) -> int:
    """Callbacks of the load phase that did not say `completed`."""
    return sum(
        n
        for k, n in figures.items()
        if k.startswith("callbacks_by_status.") and k != "callbacks_by_status.completed"
    )


def targets(figures: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(name, wanted, measured, met) for the targets that this command measured.

    The throughput, CPU and Redis targets hold for instant-LLM commands; the
    throughput and memory ones under a slow LLM for the service's default
    shape (`--rq-workers 2`, AES_RUNS_PER_WORKER runs per worker).
    """
    rows: list[tuple[str, str, str, bool]] = []
    f = figures.get
    instant = f("option_llm_latency") == 0
    defaults = f("option_rq_workers") == 2 and f("option_runs_per_worker") == f(
        "service_default_runs_per_worker"
    )
    in_flight, latency = f("option_in_flight"), f("option_llm_latency")
    rate = f("runs_per_second") or 0
    if instant and f("throughput_share_of_fair_floor") is not None:
        share = f("throughput_share_of_fair_floor")
        rows.append(("throughput_share_of_fair_floor", ">= 0.60", f"{share:.3f}", share >= 0.6))
    if instant and f("cpu_multiple_of_fair_floor") is not None:
        multiple = f("cpu_multiple_of_fair_floor")
        rows.append(("cpu_multiple_of_fair_floor", "<= 1.6", f"{multiple:.2f}", multiple <= 1.6))
    if (
        instant
        and f("redis_commands_beyond_rq_per_run") is not None
        and f("redis_server_counts_include_other_clients") is False
        and errors(figures) == 0
    ):
        extra = f("redis_commands_beyond_rq_per_run")
        rows.append(("redis_commands_beyond_rq_per_run", "<= 20", f"{extra}", extra <= 20))
    sql = f("sql_statements_per_run")
    rows.append(("sql_statements_per_run", "<= 8", f"{sql}", sql <= 8))
    # "N in flight" holds while the closed loop keeps N outstanding: the
    # steady rate, not the window that also fills and drains the slots.
    steady = f("steady_runs_per_second") or 0
    if defaults and latency == 1 and in_flight == 100:
        rows.append(("runs_per_second_100_in_flight_1s_llm", ">= 85", f"{steady}", steady >= 85))
    if defaults and latency == 10 and in_flight == 1000:
        rows.append(("runs_per_second_1000_in_flight_10s_llm", ">= 85", f"{steady}", steady >= 85))
    if defaults and latency == 1 and not in_flight:
        wrong = errors(figures)
        rows.append(
            (
                "runs_per_second_without_errors_1s_llm",
                ">= 15, 0 errors",
                f"{rate}, {wrong} errors",
                rate >= 15 and wrong == 0,
            )
        )
        rss = f("worker_tree_peak_rss_mib")
        rows.append(("worker_tree_peak_rss_mib_1s_llm", "<= 600", f"{rss}", rss <= 600))
    return rows


def target_figures(figures: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, wanted, measured, met in targets(figures):
        out[f"target_wanted.{name}"] = wanted
        out[f"target_measured.{name}"] = measured
        out[f"target_met.{name}"] = met
    return out


def table(figures: dict[str, Any]) -> str:
    """The human summary of a bench.run document."""
    f = figures.get
    lines = [f"{'figure':46} {'AES':>12} {'fair floor':>12} {'AES/floor':>10}"]

    def row(name: str, aes: Any, base: Any = None) -> None:
        ratio = f"{aes / base:.2f}" if isinstance(aes, int | float) and base else ""
        lines.append(f"{name:46} {aes!s:>12} {'' if base is None else base!s:>12} {ratio:>10}")

    row("throughput (runs/s | floor jobs/s)", f("runs_per_second"), f("fair_floor_jobs_per_second"))
    row(
        "throughput while in flight held (steady)",
        f("steady_runs_per_second"),
        f("fair_floor_steady_jobs_per_second"),
    )
    row("CPU per run (ms) | per floor job", f("aes_cpu_ms_per_run"), f("fair_floor_cpu_ms_per_job"))
    row(
        "Redis commands per run (server) | per job",
        f("redis_commands_per_run"),
        f("fair_floor_redis_commands_per_job"),
    )
    row("RQ's own Redis commands per job", "", f("rq_redis_commands_per_job"))
    row("Redis commands sent by the AES per run", f("aes_redis_commands_sent_per_run"))
    row(
        "Redis round trips per run | per job",
        f("aes_redis_roundtrips_per_run"),
        f("fair_floor_redis_roundtrips_per_job"),
    )
    row(
        "SQL statements per run | per job",
        f("sql_statements_per_run"),
        f("fair_floor_sql_statements_per_job"),
    )
    if "low_load_latency_p50_ms" in figures:
        for p in (50, 95, 99):
            row(
                f"low load: latency p{p} (ms)",
                f(f"low_load_latency_p{p}_ms"),
                f(f"fair_floor_low_load_latency_p{p}_ms"),
            )
        row(
            "low load: overhead p50 (ms, LLM time off)",
            f("low_load_overhead_p50_ms"),
            f("fair_floor_low_load_overhead_p50_ms"),
        )
    for p in (50, 95, 99):
        row(
            f"under load: latency p{p} (ms)",
            f(f"load_latency_p{p}_ms"),
            f(f"fair_floor_load_latency_p{p}_ms"),
        )
    for name, what in (
        ("queue_wait", "queued to started"),
        ("to_step", "started to step, LLM off"),
        ("step_to_end", "step to final status"),
    ):
        for p in (50, 95):
            row(f"under load: {what} p{p} (ms)", f(f"load_{name}_p{p}_ms"))
    row(
        "share of the cores it used under load",
        f("aes_cpu_share_of_machine_during_load"),
        f("fair_floor_cpu_share_of_machine_during_load"),
    )
    row(
        "share of the cores busy (every process)",
        f("machine_cpu_busy_share_during_load"),
        f("machine_cpu_busy_share_during_fair_floor"),
    )
    row("stand-ins CPU per run (ms)", f("standins_cpu_ms_per_run"))
    row(
        "Redis server CPU per run | per job (ms)",
        f("redis_server_cpu_ms_per_run"),
        f("fair_floor_redis_server_cpu_ms_per_job"),
    )
    row("peak RSS of the worker tree (MiB)", f("worker_tree_peak_rss_mib"))
    row("peak USS of the worker tree (MiB)", f("worker_tree_peak_uss_mib"))
    row("peak PSS of the worker tree (MiB)", f("worker_tree_peak_pss_mib"))
    row("PSS per run slot, median (MiB)", f("pss_mib_per_run_slot_median"))
    row("PSS per run slot, max (MiB)", f("pss_mib_per_run_slot_max"))
    if "lpush_brpop_pairs_per_second" in figures:
        row("bare LPUSH+BRPOP pairs/s (one client)", "", f("lpush_brpop_pairs_per_second"))
    by_status = {
        k.removeprefix("callbacks_by_status."): v
        for k, v in figures.items()
        if k.startswith("callbacks_by_status.")
    }
    lines.append(f"callbacks by status: {by_status}")
    if f("redis_server_counts_include_other_clients"):
        rate = f("redis_other_clients_commands_per_second")
        lines.append(
            f"the Redis server is shared: other clients sent {rate} commands/s while the bench "
            "ran nothing, and the server-side counts include theirs"
        )
    lines.append("")
    lines.append(f"{'target':40} {'wanted':>18} {'measured':>20}  met")
    for name, wanted, measured, met in targets(figures):
        lines.append(f"{name:40} {wanted:>18} {measured:>20}  {'yes' if met else 'NO'}")
    return "\n".join(lines)
