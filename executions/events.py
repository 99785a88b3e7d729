"""A run's events (PROTOCOL.md §8): `status`, `step`, `delta` and `done`, in its Redis Stream.

Each event's `seq` is its entry's id in the stream, `0-{seq}`, so the
numbers have no gaps whichever process writes (the consumer, the worker, a
resumed attempt's worker), and "the events after N" is `XREAD ... 0-N`. A
writer adds the next event at the id after the newest seq it knows (it
wrote it, the run is new, or the run is starting and has only its
`queued`), and Redis checks it: an explicit id at or below the stream's
newest is refused, and only then does a script read the newest entry and
number on from it.

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

import redis
from redis.client import Pipeline

from aes_project import redis_clients
from protocol import keys
from protocol.messages import now_iso

# Lua: appends the event bodies ARGV[first..last] to the stream KEYS[s] and
# returns the last one's seq. `known` is the writer's newest seq, or '' when
# it does not know: the first body is added as the one after it, which Redis
# refuses when the stream has gone further; then (or when unknown) numbering
# goes on from the stream's newest entry's id (`0-{seq}`: trimming keeps the
# newest, so the stream is its own counter). Only seq 1 makes a stream
# (NOMKSTREAM for the others): a known stream that has gone is numbered
# afresh, not from where it was. A body is a JSON object without its opening
# brace; its `seq` is put in front. A new stream gets the live TTL, so one
# whose run never ends still goes; the outbox sets the ended TTL.
APPEND_FUNCTION = """
local function add_event(call, s, seq, i)
  local command = {'XADD', KEYS[s], 'MAXLEN', '~', MAX_LEN, '0-' .. seq,
                   'event', '{"seq":' .. seq .. ',' .. ARGV[i]}
  if seq > 1 then table.insert(command, 3, 'NOMKSTREAM') end
  return call(unpack(command))
end
local function append_events(s, known, first, last)
  if last < first then return 0 end
  local seq = tonumber(known)
  -- Added, an id comes back; refused, an error; a stream gone, nil.
  if seq and type(add_event(redis.pcall, s, seq + 1, first)) ~= 'string' then seq = nil end
  local fresh
  if seq then
    -- Taken: 0-1 is refused by any stream that ever had an entry.
    fresh, seq, first = seq == 0, seq + 1, first + 1
  else
    seq = 0
    local newest = redis.call('XREVRANGE', KEYS[s], '+', '-', 'COUNT', 1)[1]
    if newest then seq = tonumber(string.match(newest[1], '%-(%d+)$')) end
    fresh = seq == 0
  end
  for i = first, last do
    seq = seq + 1
    add_event(redis.call, s, seq, i)
  end
  if fresh then redis.call('EXPIRE', KEYS[s], LIVE_TTL) end
  return seq
end
""".replace("LIVE_TTL", str(keys.EVENTS_LIVE_TTL_SECONDS)).replace(
    "MAX_LEN", str(keys.EVENTS_MAX_LEN)
)

# KEYS: stream. ARGV: the newest seq known (or ''), the event bodies. Returns the last seq.
_APPEND = APPEND_FUNCTION + "return append_events(1, ARGV[1], 2, #ARGV)\n"

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
        # The stream's newest seq as far as this process knows: a seq Redis
        # returned, 0 for a new run, or 1 for a run about to start (its
        # `queued`). Never beyond the stream's own: a guess Redis finds stale
        # costs a refused XADD, never a gap.
        self._newest: int | None = None
        self._lock = threading.Lock()

    def add(self, event_type: str, **fields: Any) -> None:
        """Queue an event; it goes out with the run's next round trip to Redis."""
        with self._lock:
            self._pending.append(body(self.execution_id, event_type, **fields))

    def expect_new_stream(self) -> None:
        """Say the run is new: its first event is seq 1 unless its stream says otherwise."""
        with self._lock:
            self._newest = 0

    def expect_queued_only(self) -> None:
        """Say the run is starting: its stream should hold only its `queued`, seq 1."""
        with self._lock:
            if self._newest is None:
                self._newest = 1

    def take(self) -> tuple[str, list[str]]:
        """Return the newest seq known ('' if none) and the queued bodies, and forget both.

        The caller sends them through APPEND_FUNCTION.
        """
        with self._lock:
            bodies, self._pending = self._pending, []
            known = self._newest
            if bodies:
                self._newest = None  # until the append's answer says
        return ("" if known is None else str(known)), bodies

    def put_back(self, bodies: list[str]) -> None:
        """Queue again, ahead of newer ones, bodies whose round trip failed."""
        with self._lock:
            self._pending[:0] = bodies

    def flush(self, *commands: Callable[[Pipeline], Any]) -> list[Any]:
        """Send `commands` and the queued events in one round trip; return the commands' results."""
        pipe = redis_clients.shared().pipeline(transaction=False)
        for command in commands:
            command(pipe)
        return self.execute(pipe)

    def execute(self, pipe: Pipeline) -> list[Any]:
        """Send `pipe` with the queued events added; return the results of its own commands.

        One event whose seq is known goes as a plain XADD at the next id (a
        stream's first also gets its TTL); more, or an unknown seq, go through
        the script. A plain XADD that Redis refuses (the stream went further,
        or is gone) is sent again through the script, knowing nothing. The
        first error among the pipe's own commands is raised, as
        Pipeline.execute would.
        """
        own = len(pipe)
        known, bodies = self.take()
        stream = keys.events(self.execution_id)
        seq = int(known) + 1 if known and len(bodies) == 1 else None
        if seq is not None:
            # The entry add_event (APPEND_FUNCTION) writes, without the script.
            pipe.xadd(
                stream,
                {"event": f'{{"seq":{seq},{bodies[0]}'},
                id=f"0-{seq}",
                maxlen=keys.EVENTS_MAX_LEN,
                approximate=True,
                nomkstream=seq > 1,
            )
            if seq == 1:
                pipe.expire(stream, keys.EVENTS_LIVE_TTL_SECONDS)
        elif bodies:
            pipe.eval(_APPEND, 1, stream, known, *bodies)
        if not len(pipe):
            return []
        try:
            results = pipe.execute(raise_on_error=False)
        except Exception:
            self.put_back(bodies)
            raise
        if bodies:
            self._settle(seq, bodies, results[own])
        for result in results[:own]:
            if isinstance(result, Exception):
                raise result
        return results[:own]

    def _settle(self, seq: int | None, bodies: list[str], added: Any) -> None:
        if seq is not None and (added is None or isinstance(added, redis.ResponseError)):
            try:
                added = redis_clients.shared().eval(
                    _APPEND, 1, keys.events(self.execution_id), "", *bodies
                )
            except Exception:
                self.put_back(bodies)
                raise
            seq = None
        elif isinstance(added, Exception):
            self.put_back(bodies)
            raise added
        with self._lock:
            self._newest = seq if seq is not None else int(added)


def of(execution: Any) -> RunEvents:
    """Return the run's events waiting in this process, kept on its Execution instance."""
    events = execution.__dict__.get("_run_events")
    if events is None:
        events = execution.__dict__["_run_events"] = RunEvents(str(execution.id))
    return events
