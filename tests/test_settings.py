"""Settings read from the environment, and the private Redis server of a bare machine.

Each case runs in a child Python, because settings are read once per process.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis
from django.conf import settings

from tests.helpers import CHILD_TIMEOUT, PROJECT, child_env, manage, python, wait_for

# Sets up Django, prints "URL PONG SERVER_PID SERVER_DIR" and lives on for argv[1] seconds
# (its lifetime is the point: the tests kill it, or watch it exit, while its server runs).
EMBEDDED_CHILD = """
import os, sys, time
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aes_project.settings")
import django
django.setup()
from django.conf import settings
import redis
client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
info = client.info("server")
print(settings.REDIS_URL, client.ping(), info["process_id"], client.config_get("dir")["dir"],
      flush=True)
time.sleep(float(sys.argv[1]))
"""


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def read_line(process: subprocess.Popen, timeout: float = CHILD_TIMEOUT) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"child printed nothing within {timeout}s")
    line = process.stdout.readline()
    if not line:
        raise AssertionError(
            f"child exited early: {process.wait(timeout=5)} {process.stderr.read()}"
        )
    return line


def end_process(pid: int, name_part: str) -> None:
    """SIGKILL `pid` if it is still the process we expect (its command names `name_part`)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if name_part.encode() in command:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class EmbeddedChild:
    """A child Python that started its own server, as a process with no REDIS_URL does."""

    def __init__(self, sleep_seconds: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", EMBEDDED_CHILD, str(sleep_seconds)],
            cwd=PROJECT,
            env=child_env(REDIS_URL=None),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = self.pong = self.workdir = None
        self.server_pid = 0

    def read(self) -> None:
        url, pong, server_pid, workdir = read_line(self.process).split()
        self.url, self.pong, self.server_pid, self.workdir = url, pong, int(server_pid), workdir

    @property
    def port(self) -> int:
        return urlparse(self.url).port

    def end(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=CHILD_TIMEOUT)
        self.process.stdout.close()
        self.process.stderr.close()
        if self.server_pid:  # only if the test failed to see it stop
            end_process(self.server_pid, "valkey-server")
        if self.workdir and Path(self.workdir).name.startswith("aes-valkey-"):
            shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def embedded_children(count: int, sleep_seconds: float = 60) -> Iterator[list[EmbeddedChild]]:
    children: list[EmbeddedChild] = []
    try:
        for _ in range(count):
            children.append(EmbeddedChild(sleep_seconds))
        for child in children:
            child.read()
        yield children
    finally:
        for child in children:
            child.end()


# --- Required and malformed variables ------------------------------------------


def test_production_without_secret_key_refuses_to_start():
    result = manage("check", env=child_env(AES_ENV="production"))
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_production_with_secret_key_passes_the_check_with_debug_off():
    env = child_env(AES_ENV="production", SECRET_KEY="a-real-secret-for-this-test")
    assert manage("check", env=env).returncode == 0

    result = python(
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)",
        env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True"]


def test_development_defaults_to_debug_with_a_development_key():
    result = python(
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DEBUG, bool(s.SECRET_KEY))",
        child_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_debug_off_without_secret_key_refuses_to_start_outside_production():
    result = manage("check", env=child_env(DEBUG="false"))
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEBUG", "maybe"),
        ("AES_TIER_CACHE_SECONDS", "soon"),
        ("AES_PEER_TIMEOUT_SECONDS", "0"),
    ],
)
def test_a_malformed_variable_is_named_in_the_error(name, value):
    result = manage("check", env=child_env(**{name: value}))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert name in result.stderr
    assert repr(value) in result.stderr or value in result.stderr


# --- The private server used when REDIS_URL is unset ------------------------------


def test_without_redis_url_a_private_server_answers_on_localhost():
    with embedded_children(1) as (child,):
        assert urlparse(child.url).scheme == "redis"
        assert urlparse(child.url).hostname == "127.0.0.1"
        assert child.port and child.port != urlparse(settings.REDIS_URL).port
        assert child.pong == "True"
        assert redis.Redis.from_url(child.url, socket_timeout=5).ping()


def test_a_sigkilled_process_leaves_no_orphan_server():
    with embedded_children(1) as (child,):
        assert accepts_connections(child.port)

        os.kill(child.process.pid, signal.SIGKILL)
        child.process.wait(timeout=CHILD_TIMEOUT)

        wait_for(lambda: not accepts_connections(child.port), timeout=10, what="the port to close")
        wait_for(
            lambda: not Path(f"/proc/{child.server_pid}").exists(),
            timeout=10,
            what="the server to exit",
        )
        child.server_pid = 0


def test_a_process_that_exits_normally_stops_its_server():
    with embedded_children(1, sleep_seconds=0) as (child,):
        assert child.process.wait(timeout=CHILD_TIMEOUT) == 0
        wait_for(lambda: not accepts_connections(child.port), timeout=10, what="the port to close")
        child.server_pid = 0


def test_two_processes_started_together_get_different_servers():
    with embedded_children(2) as (first, second):
        assert first.port != second.port
        assert first.server_pid != second.server_pid
        a = redis.Redis.from_url(first.url, socket_timeout=5)
        b = redis.Redis.from_url(second.url, socket_timeout=5)
        a.set("owner", "first")
        assert b.get("owner") is None


def test_a_port_taken_between_probe_and_start_is_not_mistaken_for_the_server():
    # Make the first free port handed out one that something else is listening on,
    # as when another process binds it between _free_port() and the server's start.
    code = """
import socket
import redis
from aes_project import embedded_redis
held = socket.socket()
held.bind(("127.0.0.1", 0))
held.listen()
taken = held.getsockname()[1]
real_free_port = embedded_redis._free_port
ports = iter([taken])
embedded_redis._free_port = lambda: next(ports, None) or real_free_port()
url = embedded_redis.start()
try:
    pong = redis.Redis.from_url(url, socket_timeout=2).ping()
except redis.RedisError:
    pong = False
print(taken, url, pong)
"""
    result = python(code, child_env(REDIS_URL=None))
    assert result.returncode == 0, result.stderr
    taken, url, pong = result.stdout.split()
    assert urlparse(url).port != int(taken)
    assert pong == "True"


def test_a_process_that_exits_normally_leaves_no_temporary_directory():
    with embedded_children(1, sleep_seconds=0) as (child,):
        assert child.process.wait(timeout=CHILD_TIMEOUT) == 0
        wait_for(lambda: not accepts_connections(child.port), timeout=10, what="the port to close")
        child.server_pid = 0
        assert not Path(child.workdir).exists()
