"""A run's events (PROTOCOL.md §8): `status`, `step`, `delta` and `done`, in its Redis Stream.

Each event gets the next `seq` of the run from the stream's newest entry, in
the same script as its XADD, so the numbers have no gaps whichever process
writes (the consumer, the worker, a resumed attempt's worker). The stream's
entry ids are `0-{seq}`: reading "the events after N" is `XREAD ... 0-N`.

A run's events wait in this process (`RunEvents`) for a round trip the run
makes anyway, and ride in its pipeline: the RQ enqueue for `queued`, the
lease for `running`, the cancel check before every step for `step`, the
outbox for `done` (which writes it once, with the callback). Only the
`delta`s of a streamed answer are sent on their own, as they arrive.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from redis.client import Pipeline

from aes_project import redis_clients
from protocol import keys
from protocol.messages import now_iso

# Lua: appends the event bodies ARGV[first..last] to the stream KEYS[s],
# numbering them on from its last entry's id (`0-{seq}`: trimming keeps the
# newest, so the stream is its own counter). A body is a JSON object without
# its opening brace; its `seq` is put in front. A new stream gets the live
# TTL, so one whose run never ends still goes; the outbox sets the ended TTL.
APPEND_FUNCTION = """
local function append_events(s, first, last)
  if last < first then return 0 end
  local seq = 0
  local newest = redis.call('XREVRANGE', KEYS[s], '+', '-', 'COUNT', 1)[1]
  if newest then seq = tonumber(string.match(newest[1], '%-(%d+)$')) end
  local fresh = seq == 0
  for i = first, last do
    seq = seq + 1
    redis.call('XADD', KEYS[s], 'MAXLEN', '~', MAX_LEN, '0-' .. seq,
               'event', '{"seq":' .. seq .. ',' .. ARGV[i])
  end
  if fresh then redis.call('EXPIRE', KEYS[s], LIVE_TTL) end
  return seq
end
""".replace("LIVE_TTL", str(keys.EVENTS_LIVE_TTL_SECONDS)).replace(
    "MAX_LEN", str(keys.EVENTS_MAX_LEN)
)

# KEYS: stream. ARGV: the event bodies. Returns the last seq.
_APPEND = APPEND_FUNCTION + "return append_events(1, 1, #ARGV)\n"

STATUS, STEP, DELTA, DONE = "status", "step", "delta", "done"
# The fields of a recorded step that its `step` event carries.
STEP_EVENT_FIELDS = (
    "kind",
    "name",
    "input",
    "output",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "duration_ms",
)


def body(execution_id: str, event_type: str, **fields: Any) -> str:
    """Return an event as the append script takes it: JSON without `seq` and its opening brace."""
    event = {"execution_id": execution_id, "type": event_type, "at": now_iso(), **fields}
    return json.dumps(event, separators=(",", ":"), default=str)[1:]


def step_fields(step: Any) -> dict[str, Any]:
    """Return the `step` of a step event, from an ExecutionStep."""
    return {name: getattr(step, name) for name in STEP_EVENT_FIELDS}


class RunEvents:
    """The events of one run that this process has yet to send, in order."""

    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        self._pending: list[str] = []
        self._lock = threading.Lock()

    def add(self, event_type: str, **fields: Any) -> None:
        """Queue an event; it goes out with the run's next round trip to Redis."""
        with self._lock:
            self._pending.append(body(self.execution_id, event_type, **fields))

    def take(self) -> list[str]:
        """Return the queued bodies and forget them (the caller sends them)."""
        with self._lock:
            bodies, self._pending = self._pending, []
        return bodies

    def put_back(self, bodies: list[str]) -> None:
        """Queue again, ahead of newer ones, bodies whose round trip failed."""
        with self._lock:
            self._pending[:0] = bodies

    def queue_on(self, pipe: Pipeline) -> list[str]:
        """Add the queued events to `pipe`; return them (put them back if it fails)."""
        bodies = self.take()
        if bodies:
            pipe.eval(_APPEND, 1, keys.events(self.execution_id), *bodies)
        return bodies

    def flush(self, *commands: Callable[[Pipeline], Any]) -> list[Any]:
        """Send the queued events, then `commands`, in one round trip; return their results."""
        pipe = redis_clients.shared().pipeline(transaction=False)
        bodies = self.queue_on(pipe)
        for command in commands:
            command(pipe)
        if not bodies and not commands:
            return []
        try:
            results = pipe.execute()
        except Exception:
            self.put_back(bodies)
            raise
        return results[1:] if bodies else results


def of(execution: Any) -> RunEvents:
    """Return the run's events waiting in this process, kept on its Execution instance."""
    events = execution.__dict__.get("_run_events")
    if events is None:
        events = execution.__dict__["_run_events"] = RunEvents(str(execution.id))
    return events
