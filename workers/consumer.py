"""The consumer: takes messages from the tier lists, records them, acknowledges them.

A message leaves Redis only after what it asked for is recorded: it waits in
this consumer's processing list until its Execution row is committed and its
RQ job enqueued (or it is dead-lettered). A consumer that dies leaves its
processing lists behind; any other consumer sees its heartbeat expire and
puts those messages back at the head of their lists.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

import redis
from django.conf import settings
from django.db import close_old_connections, connection

from aes_project import redis_clients
from protocol import keys
from protocol.messages import now_iso
from tiers import lookup
from workers import handlers, proxy
from workers.intake import ListIntake, ServedList, served_lists

log = logging.getLogger(__name__)

# Times one message is tried when its handler fails before it is dead-lettered.
MAX_ATTEMPTS = 5
# Seconds the loop waits for an intake thread to report before choosing.
SETTLE_SECONDS = 1.0
# Dead consumers a message may outlive before it is taken for the killer.
MAX_REDELIVERIES = 3

# Moves the newest held message back to the consuming end of its list. With
# ARGV[1] > 0 it counts the message's recoveries (by content, for a day, in
# the key ARGV[3] .. its SHA-1) and dead-letters it instead once it has been
# recovered ARGV[1] times. KEYS: held list, its source list, the dead letters.
_RECOVER = """
local raw = redis.call('LPOP', KEYS[1])
if not raw then return nil end
if tonumber(ARGV[1]) > 0 then
  local seen = ARGV[3] .. redis.sha1hex(raw)
  local n = redis.call('INCR', seen)
  redis.call('EXPIRE', seen, 86400)
  if n > tonumber(ARGV[1]) then
    redis.call('LPUSH', KEYS[3], cjson.encode({
      raw = raw, truncated = false, queue = KEYS[2], received_at = ARGV[2],
      error = {code = 'POISON_MESSAGE',
               message = 'held by ' .. ARGV[1] .. ' consumers that died handling it'}}))
    return 'dead'
  end
end
redis.call('RPUSH', KEYS[2], raw)
return 'back'
"""


class Consumer:
    def __init__(self, tiers: list[str] | None = None) -> None:
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.tiers = tiers or [tier.name for tier in lookup.tiers_by_priority()]
        self.sources = served_lists(self.tiers)
        self.redis = redis_clients.shared()
        self._ttl = settings.AES_CONSUMER_HEARTBEAT_TTL
        self._recover = self.redis.register_script(_RECOVER)
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._intakes: dict[ServedList, ListIntake] = {}
        self._next_heartbeat = 0.0
        self._retry: tuple[ServedList, bytes] | None = None
        self._attempts = 0
        self.handled = 0

    def stop(self) -> None:
        """Ask the loop to stop after the message in hand (from any thread)."""
        self.stopping.set()
        self._wake.set()

    def run(self, *, burst: bool = False) -> None:
        """Consume until stopped; with `burst`, until every list is empty."""
        log.info("consumer %s serving %s", self.id, ", ".join(self.tiers))
        self._heartbeat()
        self.recover_dead_consumers()
        if not burst:
            self._intakes = {src: ListIntake(self.id, src, self._wake) for src in self.sources}
            for intake in self._intakes.values():
                intake.start()
        try:
            while not self.stopping.is_set():
                try:
                    if time.monotonic() >= self._next_heartbeat:
                        self._heartbeat()
                        self.recover_dead_consumers()
                    if self.step():
                        continue
                except redis.ConnectionError as exc:
                    # Nothing is lost: unacknowledged messages stay in the
                    # processing list, and the next step finds them again.
                    log.warning("Redis unavailable (%s); retrying in 1s", exc)
                    self.stopping.wait(1.0)
                    continue
                if burst:
                    break
                self._wait_for_work()
        finally:
            self._shutdown()

    def step(self) -> bool:
        """Handle the highest-priority waiting message; return False when there is none."""
        # A database restart leaves a dead connection behind; drop it rather
        # than fail every message after it (never inside a transaction).
        if not connection.in_atomic_block:
            close_old_connections()
        if self._retry is not None:
            source, raw = self._retry
        else:
            source, raw = self._next()
            if source is None or raw is None:
                return False
        try:
            if source.is_peer_callbacks:
                handlers.handle_peer_callback(source.tier, raw)
            else:
                handlers.handle(source.tier, raw)
        except Exception as exc:
            # Not bad input (handle() dead-letters that) but a failure of ours
            # or of the database: keep the message and try it again.
            self._attempts += 1
            log.exception("handling a message failed (attempt %d)", self._attempts)
            if self._attempts < MAX_ATTEMPTS:
                self._retry = (source, raw)
                self.stopping.wait(min(2**self._attempts * 0.1, 5.0))
                return True
            handlers.dead_letter(source.key, raw, "HANDLER_FAILED", f"{type(exc).__name__}: {exc}")
        self._retry, self._attempts = None, 0
        # Acknowledge only now that the message's effect is recorded.
        self.redis.lrem(keys.processing(self.id, source.key), 1, raw)
        self.handled += 1
        return True

    def _next(self) -> tuple[ServedList | None, bytes | None]:
        if not self._intakes:  # burst mode: no threads, one look at each list
            for source in self.sources:
                raw = self.redis.lmove(
                    source.key, keys.processing(self.id, source.key), "RIGHT", "LEFT"
                )
                if raw is not None:
                    return source, raw
            return None, None
        for intake in self._intakes.values():
            # Normally settled long ago; bounded so a stuck thread cannot stall us.
            intake.settled.wait(timeout=SETTLE_SECONDS)
        for source, intake in self._intakes.items():
            raw = intake.take()
            if raw is not None:
                return source, raw
        return None, None

    def _wait_for_work(self) -> None:
        self._wake.clear()
        if any(intake.holds for intake in self._intakes.values()):
            return
        self._wake.wait(timeout=max(0.0, self._next_heartbeat - time.monotonic()))

    def _heartbeat(self) -> None:
        # The alive key first: another consumer only recovers ids whose key is gone.
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(keys.consumer_alive(self.id), str(time.time()), px=int(self._ttl * 1000))
            pipe.sadd(keys.CONSUMERS, self.id)
            pipe.execute()
        self._next_heartbeat = time.monotonic() + min(keys.HEARTBEAT_SECONDS, self._ttl / 3)

    def recover_dead_consumers(self) -> int:
        """Put back the messages of consumers whose heartbeat expired; return how many."""
        recovered = 0
        for member in self.redis.smembers(keys.CONSUMERS):
            other = member.decode()
            if other == self.id or self.redis.exists(keys.consumer_alive(other)):
                continue
            count = self._return_messages(other, count_deliveries=True)
            self.redis.srem(keys.CONSUMERS, other)
            if count:
                log.warning("recovered %d message(s) held by dead consumer %s", count, other)
            recovered += count
        return recovered

    def _return_messages(self, consumer_id: str, *, count_deliveries: bool = False) -> int:
        """Move a consumer's processing lists back to the consuming end of their lists.

        Newest first, each to the right end, so the oldest is taken first
        again, in its original order; each move is atomic, so two consumers
        recovering the same list cannot duplicate a message. When recovering
        from a dead consumer, a message that was held by MAX_REDELIVERIES dead
        consumers already (it kills whoever handles it) is dead-lettered.
        """
        count = 0
        for source in self.sources:
            held = keys.processing(consumer_id, source.key)
            while True:
                moved = self._recover(
                    keys=[held, source.key, keys.DEAD_LETTER],
                    args=[
                        MAX_REDELIVERIES if count_deliveries else 0,
                        now_iso(),
                        keys.RECOVERED_PREFIX,
                    ],
                )
                if moved is None:
                    break
                count += 1
        return count

    def _shutdown(self) -> None:
        for intake in self._intakes.values():
            intake.stop(self.redis)
        proxy.shutdown()
        try:
            returned = self._return_messages(self.id)
            if returned:
                log.info("returned %d unhandled message(s) to their lists", returned)
            self.redis.srem(keys.CONSUMERS, self.id)
            self.redis.delete(keys.consumer_alive(self.id))
        except redis.RedisError as exc:
            log.warning("could not deregister consumer %s: %s", self.id, exc)
        log.info("consumer %s stopped after %d message(s)", self.id, self.handled)
