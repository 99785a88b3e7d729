"""`manage.py run_llm_standin`: an OpenAI-compatible stand-in LLM for local runs."""

from __future__ import annotations

import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from aes_project import processes
from standins.llm import LLMStandin


class Command(BaseCommand):
    help = "Serve the stand-in Chat Completions API until SIGTERM/SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8001)
        parser.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
        parser.add_argument(
            "--strict",
            action="store_true",
            help="refuse what llama-cpp-python and OpenAI refuse (standins/llm.py)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        standin = LLMStandin(
            options["host"],
            options["port"],
            latency_seconds=options["latency"],
            strict=options["strict"],
        )
        stop = threading.Event()
        processes.on_stop_signals(stop.set)
        try:
            url = standin.start()
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {options['host']}:{options['port']}: {exc}"
            ) from exc
        self.stdout.write(f"LLM stand-in serving at {url}")
        self.stdout.flush()
        try:
            stop.wait()
        finally:
            standin.stop()
        self.stdout.write("LLM stand-in stopped.")
