"""`manage.py run_local`: the whole service on one machine, for trying it out.

Starts the web server (admin and API), `run_execution_worker` with its RQ
workers, the stand-in peers, and, when OPENAI_API_KEY is unset, the stand-in
LLM. Every child inherits this process's REDIS_URL, so with no REDIS_URL set
they all share the private server that loading the settings started.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from standins.llm import LLMStandin


class Command(BaseCommand):
    help = "Run web, consumer, RQ workers and stand-in peers together until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000", help="web server address")
        parser.add_argument("--rq-workers", type=int, default=2)

    def handle(self, *args: Any, addr: str, rq_workers: int, **options: Any) -> None:
        env = dict(os.environ)
        llm = None
        if not settings.OPENAI_API_KEY:
            llm = LLMStandin()
            env["OPENAI_BASE_URL"] = llm.start()
            env["OPENAI_API_KEY"] = "stand-in"
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        commands = [
            [*manage, "runserver", addr, "--noreload"],
            [*manage, "run_execution_worker", "--rq-workers", str(rq_workers)],
            [*manage, "run_dev_peers"],
        ]
        children = [subprocess.Popen(command, env=env) for command in commands]
        self._introduce(addr, llm)

        stopping = False

        def stop(signum, frame) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            while not stopping and all(child.poll() is None for child in children):
                time.sleep(0.5)
        finally:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    child.kill()
            if llm is not None:
                llm.stop()

    def _introduce(self, addr: str, llm: LLMStandin | None) -> None:
        User = get_user_model()
        login = ""
        if not User.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "admin@localhost", password)
            login = f"  admin login: admin / {password} (created now; shown once)\n"
        answers = (
            f"  LLM: answers come from the local stand-in at {llm.url}, not a real model\n"
            "       (set OPENAI_API_KEY, and OPENAI_BASE_URL if needed, for a real one)\n"
            if llm
            else f"  LLM: {settings.OPENAI_BASE_URL or 'OpenAI'}\n"
        )
        self.stdout.write(
            "\nAgent Execution Service running locally\n"
            f"  admin: http://{addr}/admin/   API: http://{addr}/api/executions/\n"
            f"{login}"
            f"  Redis: {settings.REDIS_URL}\n"
            f"{answers}"
            "  peers: AMS, CS, ES and QS stand-ins from standins/fixtures/dev_peers.json\n"
            "  Ctrl-C stops everything.\n"
        )
        self.stdout.flush()
