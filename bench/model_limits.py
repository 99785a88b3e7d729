"""What a model's shared rpm/tpm window costs a call: python -m bench.model_limits.

Each LLM call on a model with a limit makes two Redis scripts (reserve,
settle; llm_models/limits.py), a waiting one a look per wake-up. This
measures them against the REDIS_URL given (or a private server), on keys of
a model of its own, deleted after:

- per call, with an empty window and with one holding `--held` recent calls,
  from `--threads` threads at once, as a threaded worker's runs would;
- a refused call's look, which walks the window to say how long to wait.

Prints one JSON object; the figures are medians of `--repeats` rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aes_project.settings")
django.setup()

from aes_project import redis_clients  # noqa: E402
from llm_models import limits  # noqa: E402
from llm_models.lookup import Route  # noqa: E402
from protocol import keys  # noqa: E402

NAME = "bench-model-limits"


def _route(rpm: int | None, tpm: int | None) -> Route:
    return Route(
        name=NAME,
        base_url=None,
        api_key=None,
        model=NAME,
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
    )


def _clear() -> None:
    redis_clients.shared().delete(
        keys.model_calls(NAME),
        keys.model_tokens(NAME),
        keys.model_line(NAME),
        keys.model_line_expiry(NAME),
    )


def _calls(route: Route, calls: int, threads: int) -> float:
    """Return µs per reserved-and-settled call, `threads` threads sharing `calls`."""

    def work(count: int) -> None:
        for _ in range(count):
            call = limits.acquire(route, 300, time.monotonic() + 30)
            limits.settle(route, call, 250)

    share = [calls // threads] * threads
    workers = [threading.Thread(target=work, args=(n,)) for n in share]
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - began) / sum(share) * 1e6 * threads


def _refused_look(held: int) -> float:
    """Return µs for one look at a full window of `held` calls (the wait is computed)."""
    route = _route(held, None)
    for _ in range(held):
        limits.settle(route, os.urandom(8).hex(), 100)
    client = redis_clients.shared()
    began, looks = time.perf_counter(), 200
    for _ in range(looks):
        wait = client.eval(
            limits._ADMIT,
            4,
            keys.model_calls(NAME),
            keys.model_tokens(NAME),
            keys.model_line(NAME),
            keys.model_line_expiry(NAME),
            limits.WINDOW_MS,
            held,
            -1,
            "refused",
            1,
            limits.LINE_GRACE_MS,
            limits.BEHIND_POLL_MS,
        )
        assert wait > 0
    return (time.perf_counter() - began) / looks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--held", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rounds: dict[str, list[float]] = {"empty_us": [], "held_us": [], "refused_look_us": []}
    generous = _route(10**9, 10**12)
    try:
        for _ in range(args.repeats):
            _clear()
            rounds["empty_us"].append(_calls(generous, args.calls, args.threads))
            _clear()
            for _ in range(args.held):
                limits.settle(generous, os.urandom(8).hex(), 100)
            rounds["held_us"].append(_calls(generous, args.calls, args.threads))
            _clear()
            rounds["refused_look_us"].append(_refused_look(args.held))
    finally:
        _clear()
    print(
        json.dumps(
            {
                "calls": args.calls,
                "threads": args.threads,
                "held": args.held,
                "redis_scripts_per_call": 2,
                **{name: round(statistics.median(values)) for name, values in rounds.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
