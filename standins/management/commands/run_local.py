"""`manage.py run_local`: the whole service on one machine, for trying it out.

Starts the web server (admin and API, under uvicorn), `run_execution_worker` with its RQ
workers, the stand-in peers, the stand-in tool servers (an HTTP tool and an
MCP server, which the fixture's orders-bot and crm-bot use, and which the
workers are allowed to call), and, when OPENAI_API_KEY is unset, the
stand-in LLM. Every child inherits this process's REDIS_URL, so with no REDIS_URL set
they all share the private server that loading the settings started.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from aes_project import processes
from standins.llm import LLMStandin
from standins.tool_servers import HttpToolServer, McpStandin

# run_execution_worker gives its RQ workers 30 s to finish their runs; this leaves it room.
STOP_TIMEOUT_SECONDS = 40.0
POLL_SECONDS = 0.5


class Command(BaseCommand):
    help = "Run web, consumer, RQ workers and stand-in peers together until Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000", help="web server address")
        parser.add_argument("--rq-workers", type=int, default=2)

    def handle(self, *args: Any, addr: str, rq_workers: int, **options: Any) -> None:
        env = dict(os.environ)
        llm = None
        if not settings.OPENAI_API_KEY:
            # Strict, as the test suite's: what works here works on real servers.
            llm = LLMStandin(strict=True)
            env["OPENAI_BASE_URL"] = llm.start()
            env["OPENAI_API_KEY"] = "stand-in"
        tool_server, mcp_server = HttpToolServer(), McpStandin("crm")
        env["AES_STANDIN_TOOLS_URL"] = tool_server.start()
        env["AES_STANDIN_MCP_URL"] = mcp_server.start()
        # Loopback is refused by the default `*`: allow the two stand-ins, by port.
        ports = [url.split(":")[2].split("/")[0] for url in (tool_server.url, mcp_server.url)]
        allowed = [settings.AES_TOOL_ALLOWED_HOSTS, *(f"127.0.0.1:{port}" for port in ports)]
        env["AES_TOOL_ALLOWED_HOSTS"] = ",".join(allowed)
        manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise CommandError(f"--addr must read HOST:PORT, got {addr!r}")
        commands = {
            # ASGI, as in production: a client following a run's events holds no thread.
            "web server": [
                sys.executable,
                "-m",
                "uvicorn",
                "aes_project.asgi:application",
                "--host",
                host,
                "--port",
                port,
                "--no-access-log",
                "--app-dir",
                str(settings.BASE_DIR),
            ],
            "execution worker": [*manage, "run_execution_worker", "--rq-workers", str(rq_workers)],
            "dev peers": [*manage, "run_dev_peers"],
        }
        stop = threading.Event()
        processes.on_stop_signals(stop.set)
        children: dict[str, subprocess.Popen] = {}
        exited: list[str] = []
        try:
            for name, command in commands.items():
                children[name] = processes.start(command, env=env)
            self._introduce(addr, llm, tool_server, mcp_server)
            while not exited and not stop.wait(POLL_SECONDS):
                exited = [name for name, child in children.items() if child.poll() is not None]
        finally:
            processes.stop_all(children.values(), STOP_TIMEOUT_SECONDS)
            if llm is not None:
                llm.stop()
            tool_server.stop()
            mcp_server.stop()
        if exited and not stop.is_set():
            raise CommandError(f"the {' and the '.join(exited)} exited, so everything stopped")

    def _introduce(
        self, addr: str, llm: LLMStandin | None, tools: HttpToolServer, mcp: McpStandin
    ) -> None:
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
            f"  tools: an HTTP tool at {tools.url} (orders-bot), an MCP server at {mcp.url}"
            " (crm-bot)\n"
            "  Ctrl-C stops everything.\n"
        )
        self.stdout.flush()
