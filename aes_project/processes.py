"""Child processes and stop signals: one way for the service, the stand-ins and the bench.

Nothing here imports Django, so the bench can use it before Django is set up.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (a `preexec_fn`).

    It runs in the child between fork and exec. A parent that is SIGKILLed
    cannot stop its children; with this they get SIGTERM and stop warm, so
    nothing is orphaned.
    """
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start(command: list[str], **popen: Any) -> subprocess.Popen:
    """Start `command` as a child that dies with this process."""
    return subprocess.Popen(command, preexec_fn=die_with_parent, **popen)


def stop(process: subprocess.Popen, timeout: float) -> int | None:
    """SIGTERM `process`, wait up to `timeout` seconds, then SIGKILL it; return its exit status."""
    return stop_all([process], timeout)[0]


def stop_all(processes: Iterable[subprocess.Popen], timeout: float) -> list[int | None]:
    """SIGTERM every process at once, give them `timeout` seconds together, SIGKILL the rest.

    Return their exit statuses, in order.
    """
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %.0f s; killing it", process.pid, timeout)
            process.kill()
            process.wait()
    return [process.returncode for process in processes]


def on_stop_signals(stop: Callable[[], None]) -> None:
    """Call `stop` once SIGTERM or SIGINT arrives, from a thread of its own.

    A handler runs in the main thread between two bytecodes, perhaps while
    that thread holds a lock that `stop` needs (Event.set takes one), and a
    second signal can interrupt the first handler: calling `stop` there can
    deadlock the process, as a supervisor's SIGTERM followed by the kernel's
    parent-death SIGTERM did. A thread takes the locks in the normal way.
    """

    def handler(signum: int, frame: object) -> None:
        threading.Thread(target=stop, name="stop-signal", daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
