"""The cancel watcher: a run hears of its cancel from its process, whenever the cancel came."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from executions import cancels
from protocol import keys
from tests.helpers import wait_for


def cancel(redis, execution_id: str) -> None:
    """What lifecycle.cancel sends for a running run: its flag, and the stream entry."""
    pipe = redis.pipeline(transaction=False)
    pipe.set(keys.cancel_flag(execution_id), "1", ex=60)
    cancels.announce(pipe, execution_id)
    pipe.execute()


@pytest.fixture
def watcher(redis) -> Iterator[cancels.Watcher]:
    """A watcher of this test's own; its thread goes idle once the test's runs are forgotten."""
    made = cancels.Watcher()
    yield made
    for execution_id in list(made._watched):
        made.forget(execution_id)


def test_a_run_cancelled_before_it_was_watched_reads_its_flag(redis, watcher):
    run = str(uuid.uuid4())
    cancel(redis, run)

    watcher.watch(run)

    assert watcher.cancelled(run)


def test_a_run_cancelled_while_watched_hears_it_from_the_stream(redis, watcher):
    run, neighbour = str(uuid.uuid4()), str(uuid.uuid4())
    watcher.watch(run)
    watcher.watch(neighbour)
    assert not watcher.cancelled(run)

    # Only the stream says so: the flag is not read again.
    pipe = redis.pipeline(transaction=False)
    cancels.announce(pipe, run)
    pipe.execute()

    assert wait_for(lambda: watcher.cancelled(run), timeout=5, what="the cancel")
    assert not watcher.cancelled(neighbour)


def test_cancels_of_runs_a_process_does_not_hold_are_passed_over(redis, watcher):
    run, elsewhere = str(uuid.uuid4()), str(uuid.uuid4())
    watcher.watch(run)
    cancel(redis, elsewhere)
    cancel(redis, run)
    assert wait_for(lambda: watcher.cancelled(run), timeout=5, what="the cancel")

    # A run watched later, whose cancel the watcher read before it held it,
    # still learns of it, from its flag.
    watcher.watch(elsewhere)
    assert watcher.cancelled(elsewhere)
    watcher.forget(run)
    assert not watcher.cancelled(run)
