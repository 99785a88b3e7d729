"""What declared tools share: how long a call may wait, how much of its result the model sees."""

from __future__ import annotations

import time

from django.conf import settings

CUT_MARK = "\n[result cut: it was longer than {limit} bytes]"


def wait_seconds(declared: float | None, deadline: float) -> float:
    """Return how long a call may wait: its own timeout (or the default), cut at the deadline."""
    seconds = declared or settings.AES_TOOL_TIMEOUT_SECONDS
    return max(0.0, min(seconds, deadline - time.monotonic()))


def max_bytes() -> int:
    """Return the bytes of a result the model sees (AES_TOOL_RESULT_MAX_BYTES)."""
    return settings.AES_TOOL_RESULT_MAX_BYTES


def text(data: bytes | str) -> str:
    """Return a result as the model sees it: at most max_bytes(), marked if cut."""
    limit = max_bytes()
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) <= limit:
        return raw.decode("utf-8", errors="replace")
    # A character cut in two at the limit is dropped, not garbled.
    return raw[:limit].decode("utf-8", errors="ignore") + CUT_MARK.format(limit=limit)
