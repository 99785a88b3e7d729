"""Reliable, prioritised, blocking intake from the lists the consumer serves.

Redis cannot block on several lists and move reliably at once (BLMPOP
removes the message, BLMOVE reads one list, blocking commands do not block
inside MULTI or Lua). So each list has an intake thread on its own
connection that moves one message at a time from the list into the
consumer's processing list for it (LMOVE, then BLMOVE once the list is
empty) and holds it until the consumer takes it. The consumer always takes
the held message of the highest-priority list, and before choosing waits
until the list it took from last has "settled" (holds its next message or
is known empty), so a lower tier never jumps a higher one. Each message
costs one move and one acknowledgement; an idle consumer costs one blocked
read per list every BLOCK_SECONDS; every message sits in a processing list
until it is acknowledged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import redis

from aes_project import redis_clients
from protocol import keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedList:
    """One list the consumer serves: a tier's actions or its callbacks."""

    tier: str
    key: str

    @property
    def is_peer_callbacks(self) -> bool:
        return self.key == keys.callbacks(self.tier)


def served_lists(tiers: list[str]) -> list[ServedList]:
    """Return the lists to serve, in priority order.

    Callbacks first: each one unblocks a run that is already under way and
    costs one Redis call; then the action lists, highest tier first.
    """
    return [ServedList(t, keys.callbacks(t)) for t in tiers] + [
        ServedList(t, keys.actions(t)) for t in tiers
    ]


class ListIntake(threading.Thread):
    """Holds at most one message moved from its list; takes the next once it is taken."""

    def __init__(self, consumer_id: str, source: ServedList, wake: threading.Event) -> None:
        super().__init__(name=f"intake-{source.key}", daemon=True)
        self.source = source
        self.target = keys.processing(consumer_id, source.key)
        self.stopping = threading.Event()
        # Set once the thread holds a message or has found its list empty.
        self.settled = threading.Event()
        self._wanted = threading.Event()
        self._wanted.set()
        self._held: bytes | None = None
        self._wake = wake
        self._lock = threading.Lock()
        self._client = redis_clients.blocking()
        self._client_id: int | None = None

    @property
    def holds(self) -> bool:
        return self._held is not None

    def take(self) -> bytes | None:
        """Return the held message, if any, and start moving the next one."""
        with self._lock:
            raw, self._held = self._held, None
            if raw is not None:
                self.settled.clear()
                self._wanted.set()
            return raw

    def run(self) -> None:
        while not self.stopping.is_set():
            if not self._wanted.wait(timeout=keys.BLOCK_SECONDS):
                continue
            try:
                raw = self._move()
            except redis.RedisError as exc:
                self._client_id = None
                self.settled.set()  # nothing held: the consumer must not wait on us
                log.warning("intake %s: %s; retrying", self.source.key, exc)
                self.stopping.wait(1.0)
                continue
            if raw is not None:
                with self._lock:
                    self._held = raw
                    self._wanted.clear()
                    self.settled.set()
                self._wake.set()

    def _move(self) -> bytes | None:
        if self._client_id is None:
            self._client_id = self._client.client_id()
        raw = self._client.lmove(self.source.key, self.target, "RIGHT", "LEFT")
        if raw is not None or self.stopping.is_set():
            return raw
        self.settled.set()  # known empty: lower lists may go first
        return self._client.blmove(
            self.source.key, self.target, keys.BLOCK_SECONDS, "RIGHT", "LEFT"
        )

    def stop(self, control: redis.Redis) -> None:
        """Stop the thread, cutting its blocked read short."""
        self.stopping.set()
        self._wanted.set()
        if self._client_id is not None:
            try:
                control.client_unblock(self._client_id)
            except redis.RedisError:
                log.debug("could not unblock %s; it ends at its timeout", self.source.key)
        self.join(timeout=keys.BLOCK_SECONDS + keys.SOCKET_MARGIN_SECONDS)
        self._client.close()
