"""Samples memory and CPU of run_execution_worker's process tree every 0.2 s."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil

MIB = 1024 * 1024


@dataclass
class Peaks:
    """The largest figures seen, in MiB, and what the tree looked like then."""

    rss_total: float = 0.0
    uss_total: float = 0.0
    pss_total: float = 0.0
    # PSS of one run slot: (tree - consumer) / (worker processes x runs per
    # worker); with forking workers a slot is a worker and its work-horse.
    # USS cannot say this: after fork the worker and its horse share most pages,
    # which then count as private to neither.
    pss_per_slot: list[float] = field(default_factory=list)
    uss_by_role: dict[str, float] = field(default_factory=dict)
    horses_max: int = 0
    # (tree USS, work-horses alive) at each sample, to relate memory to load.
    samples: list[tuple[float, int]] = field(default_factory=list)
    # Private memory of single processes, per role (for per-slot figures).
    uss_each: dict[str, list[float]] = field(default_factory=dict)


def _role(depth: int) -> str:
    return {0: "consumer", 1: "rqworker"}.get(depth, "horse")


class TreeSampler(threading.Thread):
    """Walks the tree under `root_pid` until stopped; the root may be replaced."""

    def __init__(self, root_pid: int, interval: float = 0.2, runs_per_worker: int = 1) -> None:
        super().__init__(name="tree-sampler", daemon=True)
        self.runs_per_worker = runs_per_worker
        self.root_pid = root_pid
        self.interval = interval
        self.peaks = Peaks()
        self._halt = threading.Event()

    def stop(self) -> Peaks:
        self._halt.set()
        self.join(timeout=5)
        return self.peaks

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self._sample()
            except psutil.Error:
                continue  # a process ended mid-walk

    def _walk(self) -> list[tuple[int, psutil.Process]]:
        root = psutil.Process(self.root_pid)
        found = [(0, root)]
        for child in root.children():
            found.append((1, child))
            found.extend((2, horse) for horse in child.children(recursive=True))
        return found

    def _sample(self) -> None:
        rss = uss = pss = consumer_pss = 0.0
        by_role: dict[str, float] = {}
        horses = workers = 0
        for depth, process in self._walk():
            try:
                info = process.memory_full_info()
            except psutil.Error:
                continue
            role = _role(depth)
            horses += role == "horse"
            workers += role == "rqworker"
            rss += info.rss / MIB
            uss += info.uss / MIB
            pss += info.pss / MIB
            if role == "consumer":
                consumer_pss = info.pss / MIB
            by_role[role] = by_role.get(role, 0.0) + info.uss / MIB
            self.peaks.uss_each.setdefault(role, []).append(info.uss / MIB)
        peaks = self.peaks
        peaks.rss_total = max(peaks.rss_total, rss)
        peaks.uss_total = max(peaks.uss_total, uss)
        peaks.pss_total = max(peaks.pss_total, pss)
        if workers:
            peaks.pss_per_slot.append((pss - consumer_pss) / (workers * self.runs_per_worker))
        for role, value in by_role.items():
            peaks.uss_by_role[role] = max(peaks.uss_by_role.get(role, 0.0), value)
        peaks.horses_max = max(peaks.horses_max, horses)
        peaks.samples.append((uss, horses))


def tree_cpu_by_role(root_pid: int) -> dict[str, float]:
    """CPU time of the tree, by role: the consumer (the root) and the RQ workers.

    Each live process and the children it has reaped: RQ workers reap their
    work-horses, so the horses' CPU is counted, with their worker's, once
    they have ended. A worker that died takes its CPU out of the count.
    """
    total = {"consumer": 0.0, "rqworker": 0.0}
    try:
        root = psutil.Process(root_pid)
        times = root.cpu_times()
        total["consumer"] = times.user + times.system
        for process in root.children():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total["rqworker"] += sum(
                (times.user, times.system, times.children_user, times.children_system)
            )
    except psutil.Error:
        pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, every process)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def busy_share(busy_seconds: float, wall_seconds: float) -> float | None:
    """How much of the machine's cores `busy_seconds` of CPU took over `wall_seconds`."""
    cores = psutil.cpu_count() or 1
    return round(busy_seconds / (wall_seconds * cores), 3) if wall_seconds > 0 else None


def process_cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def now() -> float:
    return time.monotonic()
