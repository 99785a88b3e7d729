"""Reliable, prioritised, blocking intake from the lists the consumer serves.

Redis cannot block on several lists and move reliably at once (BLMPOP
removes the message, BLMOVE reads one list, blocking commands do not block
inside MULTI or Lua). So each list has an intake thread on its own
connection that, while armed, BLMOVEs one message from the list into the
consumer's processing list for it and hands it over. The consumer itself
first tries a non-blocking LMOVE on every list, in priority order, and arms
the threads only when all lists are empty: strict priority while work
waits, one blocked read per list while idle, and every message sits in a
processing list until it is acknowledged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import redis

from workers import keys, redis_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One list the consumer serves: a tier's actions or its callbacks."""

    tier: str
    key: str

    @property
    def is_callbacks(self) -> bool:
        return self.key == keys.callbacks(self.tier)


def sources_for(tiers: list[str]) -> list[Source]:
    """Return the lists to serve, in priority order.

    Callbacks first: each one unblocks a run that is already under way and
    costs one Redis call; then the action lists, highest tier first.
    """
    return [Source(t, keys.callbacks(t)) for t in tiers] + [
        Source(t, keys.actions(t)) for t in tiers
    ]


class ListIntake(threading.Thread):
    """Moves at most one message at a time from one list, while armed."""

    def __init__(self, consumer_id: str, source: Source, wake: threading.Event) -> None:
        super().__init__(name=f"intake-{source.key}", daemon=True)
        self.source = source.key
        self.target = keys.processing(consumer_id, source.key)
        self.armed = threading.Event()
        self.stopping = threading.Event()
        self.held: bytes | None = None
        self._wake = wake
        self._lock = threading.Lock()
        self._client = redis_client.blocking()
        self._client_id: int | None = None

    def take_held(self) -> bytes | None:
        """Return the message this thread moved, if any, and forget it."""
        with self._lock:
            raw, self.held = self.held, None
            return raw

    def run(self) -> None:
        while not self.stopping.is_set():
            if not self.armed.wait(timeout=keys.BLOCK_SECONDS):
                continue
            if self.stopping.is_set():
                break
            try:
                if self._client_id is None:
                    self._client_id = self._client.client_id()
                raw = self._client.blmove(
                    self.source, self.target, keys.BLOCK_SECONDS, "RIGHT", "LEFT"
                )
            except redis.RedisError as exc:
                self._client_id = None
                log.warning("intake %s: %s; retrying", self.source, exc)
                self.stopping.wait(1.0)
                continue
            if raw is not None:
                with self._lock:
                    self.held = raw
                    self.armed.clear()
                self._wake.set()

    def stop(self, control: redis.Redis) -> None:
        """Stop the thread, cutting its blocked read short."""
        self.stopping.set()
        self.armed.set()
        if self._client_id is not None:
            try:
                control.client_unblock(self._client_id)
            except redis.RedisError:
                pass  # the read ends at its own timeout instead
        self.join(timeout=keys.BLOCK_SECONDS + keys.SOCKET_MARGIN_SECONDS)
        self._client.close()
