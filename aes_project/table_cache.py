"""A small table kept in this process for a few seconds: tiers, models.

Every process (consumer, RQ workers, web) keeps the rows for at most a few
seconds, so an admin edit is seen everywhere without a restart, and a busy
worker does not query the table per run. An edit in this process clears the
cache at once (`clear_on_change`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from django.db.models.signals import post_delete, post_save

Row = TypeVar("Row")


class TableCache(Generic[Row]):
    def __init__(self, load: Callable[[], dict[str, Row]], seconds: Callable[[], float]) -> None:
        self._load = load  # the rows by name, read from the database
        self._seconds = seconds  # read at each lookup, so tests may change the setting
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, Row]] | None = None
        self._refreshing = False
        # Bumped by clear(): a read that began before an edit must not be cached after it.
        self._generation = 0

    def rows(self) -> dict[str, Row]:
        """Return the rows by name, read again when they are older than the setting says.

        One thread reads them again; the others meanwhile get the rows it is
        replacing, so hundreds of runs starting at once in a threaded worker
        send one query, not one each.
        """
        cached = self._cache
        if cached is not None and time.monotonic() - cached[0] <= self._seconds():
            return cached[1]
        with self._lock:
            stale = self._cache
            if stale is not None and self._refreshing:
                return stale[1]
            refresher = stale is not None
            self._refreshing = self._refreshing or refresher
            generation = self._generation
        # The query runs outside the lock: a thread holding the lock while it
        # waits for a pooled database connection would deadlock with threads
        # that hold connections and wait for the lock (threaded workers).
        try:
            rows = self._load()
        finally:
            if refresher:
                with self._lock:
                    self._refreshing = False
        with self._lock:
            if generation == self._generation:
                self._cache = (time.monotonic(), rows)
        return rows

    def clear(self) -> None:
        """Forget the cached rows (after an edit in this process, and in tests)."""
        with self._lock:
            self._cache = None
            self._generation += 1

    def clear_on_change(self, model: type) -> None:
        """Clear the cache whenever this process saves or deletes a row of `model`."""
        post_save.connect(lambda **kwargs: self.clear(), sender=model, weak=False)
        post_delete.connect(lambda **kwargs: self.clear(), sender=model, weak=False)
