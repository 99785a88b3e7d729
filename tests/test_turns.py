"""Turns at the interpreter for a threaded worker's runs (executions/turns.py), real threads."""

from __future__ import annotations

import threading
import time

from executions.turns import Turns

WAIT = 5  # seconds a test waits for a thread that should get there at once
SETTLE = 0.3  # seconds for a started thread to reach its wait


def _started(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_no_more_threads_work_at_once_than_there_are_turns():
    turns = Turns(2)
    inside, most, lock = 0, 0, threading.Lock()
    release = threading.Event()
    arrived = threading.Semaphore(0)

    def job() -> None:
        nonlocal inside, most
        with turns.working():
            with lock:
                inside += 1
                most = max(most, inside)
            arrived.release()
            release.wait(WAIT)
            with lock:
                inside -= 1

    threads = [_started(job) for _ in range(5)]
    assert arrived.acquire(timeout=WAIT) and arrived.acquire(timeout=WAIT)
    assert not arrived.acquire(timeout=0.3)  # the third waits for a turn
    release.set()
    for thread in threads:
        thread.join(WAIT)
    assert most == 2
    assert not any(thread.is_alive() for thread in threads)


def test_a_thread_that_waits_lets_another_work_and_works_again_after():
    turns = Turns(1)
    waiting, done_waiting, other_worked = threading.Event(), threading.Event(), threading.Event()
    order = []

    def waiter() -> None:
        with turns.working():
            with turns.waiting():
                waiting.set()
                done_waiting.wait(WAIT)
            order.append("waiter back")

    def other() -> None:
        with turns.working():
            order.append("other worked")
            other_worked.set()
            done_waiting.set()  # the waiter's wait ends while the other holds the turn
            order.append("other done")

    first = _started(waiter)
    assert waiting.wait(WAIT)
    second = _started(other)
    assert other_worked.wait(WAIT)
    first.join(WAIT)
    second.join(WAIT)
    # Back from its wait, the waiter took a turn only once the other gave it back.
    assert order == ["other worked", "other done", "waiter back"]


def test_a_run_back_from_its_wait_goes_before_a_new_one():
    turns = Turns(1)
    order = []
    in_wait, holding = threading.Event(), threading.Event()
    holder_may_go, wait_over = threading.Event(), threading.Event()

    def waiter() -> None:
        with turns.working():
            with turns.waiting():
                in_wait.set()
                wait_over.wait(WAIT)
            order.append("back from its wait")

    def holder() -> None:
        with turns.working():
            holding.set()
            holder_may_go.wait(WAIT)

    def starter() -> None:
        with turns.working():
            order.append("new")

    threads = [_started(waiter)]
    assert in_wait.wait(WAIT)
    threads.append(_started(holder))
    assert holding.wait(WAIT)
    threads.append(_started(starter))
    time.sleep(SETTLE)  # the new one waits for the holder's turn first
    wait_over.set()
    time.sleep(SETTLE)  # then the waiter, back from its wait, waits for it too
    holder_may_go.set()
    for thread in threads:
        thread.join(WAIT)
    assert order == ["back from its wait", "new"]


def test_a_job_interrupted_anywhere_gives_its_turn_back():
    turns = Turns(1)
    caught = threading.Event()

    class Timeout(Exception):  # as RQ's job timeout, raised in the run's thread
        pass

    def interrupted() -> None:
        try:
            with turns.working():
                with turns.waiting():
                    pass
                raise Timeout
        except Timeout:
            caught.set()

    _started(interrupted).join(WAIT)
    assert caught.is_set()
    got = threading.Event()

    def next_job() -> None:
        turns.take()
        got.set()

    _started(next_job)
    assert got.wait(WAIT)


def test_waiting_outside_a_turn_takes_none():
    turns = Turns(1)
    with turns.waiting():
        assert not turns.held()
    assert not turns.held()
    with turns.working():
        assert turns.held()
