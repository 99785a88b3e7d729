"""`manage.py run_llm_standin`: an OpenAI-compatible stand-in LLM for local runs."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from standins.llm import LLMStandin


class Command(BaseCommand):
    help = "Serve the stand-in Chat Completions API until SIGTERM/SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer")

    def handle(self, *args: Any, **options: Any) -> None:
        standin = LLMStandin(options["host"], options["port"], latency_seconds=options["latency"])
        stop = threading.Event()

        def on_signal(signum: int, frame: object) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            url = standin.start()
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {options['host']}:{options['port']}: {exc}"
            ) from exc
        self.stdout.write(f"LLM stand-in serving at {url}")
        self.stdout.flush()
        try:
            # Event.wait wakes up on the signal handler's set(); poll so Ctrl-C is prompt.
            while not stop.wait(0.5):
                pass
        finally:
            standin.stop()
        self.stdout.write("LLM stand-in stopped.")
