"""Webhook counters in Redis, added to by every sender, read at scrape time like the run counters.

`execution:webhooks:metrics` is a hash: one field per attempt outcome
(`delivered`, `http_error`, `no_answer`, `refused`), and `gave_up` for the
deliveries whose retries ran out.
"""

from __future__ import annotations

import logging

import redis

from aes_project import redis_clients
from protocol import keys

log = logging.getLogger(__name__)

GAVE_UP = "gave_up"


def count(outcome: str, *, gave_up: bool = False) -> None:
    """Add one attempt of `outcome` (and a delivery given up) to the counters."""
    try:
        with redis_clients.shared().pipeline(transaction=False) as pipe:
            pipe.hincrby(keys.WEBHOOK_METRICS, outcome, 1)
            if gave_up:
                pipe.hincrby(keys.WEBHOOK_METRICS, GAVE_UP, 1)
            pipe.execute()
    except redis.RedisError as exc:
        # The attempt is recorded on its row; a counter missed costs a figure only.
        log.warning("webhook counters not updated: %s", exc)


def read() -> dict[str, int]:
    """Return the counters: attempts by outcome, and `gave_up`."""
    raw = redis_clients.shared().hgetall(keys.WEBHOOK_METRICS)
    return {field.decode(): int(value) for field, value in raw.items()}
