"""Stopping on SIGTERM and SIGINT without taking locks in a signal handler."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


def on_stop_signals(stop: Callable[[], None]) -> None:
    """Call `stop` once SIGTERM or SIGINT arrives, from a thread of its own.

    A handler runs in the main thread between two bytecodes, perhaps while
    that thread holds a lock that `stop` needs (Event.set takes one), and a
    second signal can interrupt the first handler: calling `stop` there can
    deadlock the process, as a supervisor's SIGTERM followed by the kernel's
    parent-death SIGTERM did. A thread takes the locks in the normal way.
    """

    def handler(signum, frame) -> None:
        threading.Thread(target=stop, name="stop-signal", daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
