"""Fixtures: a real Redis (flushed around each test), a real database, peers and an LLM.

Only the network edges are doubles: the peer services speak the protocol over
Redis from threads (standins.peers), and the LLM is a local HTTP server
speaking Chat Completions (standins.llm) reached through the real openai client.
Tests marked `django_free` get neither Redis nor a database. The helpers the
tests share are in tests/helpers.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from aes_project import redis_clients
from llm_models import lookup as model_lookup
from standins.llm import LLMStandin
from tests.helpers import PeersHandle
from tiers import lookup


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "django_free: needs neither Redis nor a database (plain Python)"
    )


@pytest.fixture(autouse=True)
def fast_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def redis() -> Iterator[Any]:
    """The real Redis of settings.REDIS_URL, flushed before and after each test."""
    client = redis_clients.shared()
    client.flushdb()
    lookup.clear()
    model_lookup.clear()
    yield client
    client.flushdb()


@pytest.fixture(autouse=True)
def flushed_redis(request: pytest.FixtureRequest) -> None:
    """Every test but a `django_free` one runs on a flushed Redis."""
    if request.node.get_closest_marker("django_free") is None:
        request.getfixturevalue("redis")


@pytest.fixture(scope="session")
def llm_server() -> Iterator[LLMStandin]:
    server = LLMStandin()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def llm(llm_server: LLMStandin, settings) -> LLMStandin:
    """The LLM stand-in with an empty script and no recorded requests."""
    llm_server.script.clear()
    llm_server.requests.clear()
    llm_server.connections = 0
    llm_server.latency_seconds = 0.0
    # Strict: the agent loop must send what the strictest real servers accept.
    llm_server.strict = True
    settings.OPENAI_BASE_URL = llm_server.url
    settings.OPENAI_API_KEY = "test-key"
    return llm_server


@pytest.fixture
def peers() -> Iterator[PeersHandle]:
    handle = PeersHandle()
    yield handle
    handle.stop()


@pytest.fixture
def start_peers() -> Iterator[Any]:
    """Start peers with options: start_peers(silent={"management"}, delay_seconds=1)."""
    started: list[PeersHandle] = []

    def start(silent: set[str] | frozenset[str] = frozenset(), delay_seconds=0.0) -> PeersHandle:
        handle = PeersHandle(frozenset(silent), delay_seconds)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()
