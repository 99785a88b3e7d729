"""The LLM stand-in for the bench, with faults: `python -m bench.llm_server`.

Serves standins.llm.LLMStandin's default answers in its own process (so its
threads do not share the bench's interpreter) and can misbehave:

- `--error-rate P`: answer HTTP 500 to a random share P of the requests;
- a request whose last user message starts with `bench-fail` always gets 500;
- a request whose last user message starts with `bench-hang` sleeps
  `--hang-seconds` first (longer than the run's `data.timeout`).

With `--request-log PATH` it appends one JSON line per request (which run,
how many messages, their digest, when it arrived and was answered, the
status): bench.soak finds steps made twice in it (bench/repeats.py).

Prints `LLM_URL <url>` once it listens, then serves until SIGTERM/SIGINT.
The bench starts it; by hand: `pip install -r bench/requirements.txt` once,
then `python -m bench.llm_server --latency 1` from the project's root.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aes_project import processes
from bench.repeats import RequestLog
from standins.llm import LLMStandin, _content_text, _error_body


class FaultyLLM(LLMStandin):
    def __init__(
        self,
        *,
        error_rate: float,
        hang_seconds: float,
        request_log: RequestLog | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.error_rate = error_rate
        self.hang_seconds = hang_seconds
        self.request_log = request_log

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        arrived = time.time()
        answer = self._answer(body)
        if self.request_log is not None:
            messages = body.get("messages") or []
            self.request_log.write(messages, arrived, time.time(), answer[0])
        return answer

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
        last = _content_text(users[-1].get("content")) if users else ""
        if last.startswith("bench-hang"):
            self._sleep(self.hang_seconds)
        if last.startswith("bench-fail") or random.random() < self.error_rate:
            self._sleep(self.latency_seconds)
            return 500, _error_body("bench: injected server error", 500), {}
        return super().answer(body)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.llm_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--chunk-seconds", type=float, default=0.0, help="between streamed chunks")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--hang-seconds", type=float, default=30.0)
    parser.add_argument("--request-log", type=Path, help="one JSON line per request, appended")
    args = parser.parse_args()
    log = RequestLog(args.request_log) if args.request_log else None
    server = FaultyLLM(
        port=args.port,
        latency_seconds=args.latency,
        error_rate=args.error_rate,
        hang_seconds=args.hang_seconds,
        request_log=log,
    )
    server.chunk_seconds = args.chunk_seconds
    # The stand-in records every request body; a long run must not keep them all.
    server._record = lambda body: None
    stop = threading.Event()
    processes.on_stop_signals(stop.set)
    print("LLM_URL", server.start(), flush=True)
    while not stop.wait(0.5):
        pass
    server.stop()
    if log is not None:
        log.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
