"""The sender: delivers due webhooks from their rows, a few at a time, until stopped.

`run_execution_worker` runs one in a thread beside its consumer: never in a
run, never in the consumer's loop. Pending deliveries are rows, so a
restart loses none; senders in several processes share the rows by
claiming each with a conditional UPDATE (Webhook.claim_due).
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures

from django.conf import settings
from django.db import close_old_connections, connection

from webhooks import delivery
from webhooks.models import Webhook

log = logging.getLogger(__name__)

# Seconds between two looks for due deliveries when there were none.
POLL_SECONDS = 1.0
# Deliveries one drain (burst mode) attempts at most.
BURST_LIMIT = 10_000


class Sender:
    """Sends due webhooks, AES_WEBHOOK_CONCURRENCY at once, until `stopping` is set."""

    def __init__(self, stopping: threading.Event, concurrency: int | None = None) -> None:
        self.stopping = stopping
        self.concurrency = concurrency or settings.AES_WEBHOOK_CONCURRENCY

    def run(self) -> None:
        in_flight: set[futures.Future] = set()
        with (
            futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook") as pool,
            delivery.client() as http,
        ):
            while not self.stopping.is_set():
                _fresh_connection()
                in_flight = {future for future in in_flight if not future.done()}
                free = self.concurrency - len(in_flight)
                try:
                    claimed = Webhook.claim_due(free, delivery.hold_seconds())
                except Exception:
                    # The database is away: the rows wait, and so do we.
                    log.exception("looking for due webhooks failed; trying again shortly")
                    claimed = []
                    _fresh_connection()
                in_flight |= {pool.submit(self._send_alone, webhook, http) for webhook in claimed}
                if len(claimed) < free:
                    self.stopping.wait(POLL_SECONDS)  # nothing more is due
                else:
                    futures.wait(
                        in_flight, timeout=POLL_SECONDS, return_when=futures.FIRST_COMPLETED
                    )
        # Leaving the pool waited for the attempts in hand.

    def drain(self) -> int:
        """Attempt, once each and in this thread, every delivery due now; return how many.

        For `run_execution_worker --burst`: a failed one waits for its retry.
        """
        claimed = Webhook.claim_due(BURST_LIMIT, delivery.hold_seconds())
        with delivery.client() as http:
            for webhook in claimed:
                self._send(webhook, http)
        return len(claimed)

    def _send_alone(self, webhook: Webhook, http) -> None:
        # A sending thread gives its connection back: the sender holds none while idle.
        try:
            self._send(webhook, http)
        finally:
            connection.close()

    def _send(self, webhook: Webhook, http) -> None:
        _fresh_connection()
        try:
            delivery.attempt(webhook, http)
        except Exception:
            # Unrecorded: the claim lapses and the delivery is due again.
            log.exception("webhook %s could not be attempted", webhook.event_id)
        finally:
            _fresh_connection()


def _fresh_connection() -> None:
    # Drop a connection the database closed (a restart), never inside a transaction.
    if not connection.in_atomic_block:
        close_old_connections()
