"""A model's requests-per-minute and tokens-per-minute limits, shared by every worker in Redis.

Each model with a limit has a sliding one-minute window: a sorted set of its
calls (`execution:model_calls:{name}`, scored by the Redis server's clock in
ms) and a hash (`execution:model_tokens:{name}`) of the tokens each holds
plus their `total`. A call first reserves its estimated tokens (its
request's characters / 4 plus its `max_tokens`, as providers count a request
against their own limits); when it ends, `settle` replaces the estimate by
the tokens the provider reported and moves the call to the time it ended. A
call thus weighs on the window from the moment it is sent until a minute
after its answer: any minute of what the provider receives stays within the
limits, however long the calls take. A call that fails keeps its estimate.

A call that does not fit joins the model's line of waiters
(`execution:model_line:{name}`, first come first) and is told how long
until enough of the window lapses; it waits that long (woken early only to
check for cancellation) unless that is past its deadline: then it is
refused (OverLimit) and leaves the line. Room goes to the head of the line
first: a newcomer never takes it from a call already waiting. A waiter behind
the head looks again when room would come for it, but not sooner than
BEHIND_POLL_MS; one that stops looking
(its process gone) drops out of the line LINE_GRACE_MS after its wait ended.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from aes_project import redis_clients
from llm_models.lookup import Route
from protocol import keys

# The window both limits count over, in ms ("per minute"); tests shorten it.
WINDOW_MS = 60_000
# Seconds between two checks for cancellation while a call waits its turn.
CANCEL_POLL_SECONDS = 1.0
# Up to this many seconds are added to a wait, so waiters woken together spread out.
JITTER_SECONDS = 0.05
# A waiter that has not looked again this long after its wait ended leaves the line.
LINE_GRACE_MS = 5_000
# The soonest a waiter behind the head of the line looks again.
BEHIND_POLL_MS = 250


class OverLimit(Exception):
    """The call could not get room in its model's window before its deadline."""


# KEYS: calls (zset), tokens (hash), line (zset, by arrival), line expiry (hash, and its
# `#arrivals` counter).
# ARGV: window ms, rpm, tpm (-1: none), call id, tokens, ms a waiter stays in line unseen,
# ms between two looks of a waiter behind the head.
# Returns -1 when the call was admitted (and counted), else the ms until it should look again.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local me, tokens, grace, poll = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
-- Lapsed: more than a window old, so that no two calls a window apart both count.
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - window))
if #lapsed > 0 then
  local freed = 0
  for _, id in ipairs(lapsed) do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], id) or 0)
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('HINCRBY', KEYS[2], 'total', -freed)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - window))
end
-- The line of waiting calls, first come first: a waiter that stopped looking
-- (gone, crashed) leaves it once its last look's wait and a grace have passed.
local head
while true do
  local first = redis.call('ZRANGE', KEYS[3], 0, 0)
  if #first == 0 then break end
  if tonumber(redis.call('HGET', KEYS[4], first[1]) or 0) >= now then head = first[1]; break end
  redis.call('ZREM', KEYS[3], first[1])
  redis.call('HDEL', KEYS[4], first[1])
end
local count = redis.call('ZCARD', KEYS[1])
local total = tonumber(redis.call('HGET', KEYS[2], 'total') or 0)
local function fits(c, s) return (rpm < 0 or c + 1 <= rpm) and (tpm < 0 or s + tokens <= tpm) end
if (not head or head == me) and fits(count, total) then
  redis.call('ZADD', KEYS[1], now, me)
  redis.call('HSET', KEYS[2], me, tokens)
  redis.call('HINCRBY', KEYS[2], 'total', tokens)
  redis.call('PEXPIRE', KEYS[1], window * 2)
  redis.call('PEXPIRE', KEYS[2], window * 2)
  if head then
    redis.call('ZREM', KEYS[3], me)
    redis.call('HDEL', KEYS[4], me)
  end
  return -1
end
-- When would it fit? Walk the calls oldest first, a few at a time, until
-- enough of them have lapsed; with no token limit the answer is one lookup.
local wait = window
if fits(count, total) then
  wait = 0
elseif tpm < 0 then
  local oldest = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
  wait = tonumber(oldest[2]) + window - now + 1
else
  local from, found = 0, false
  while not found do
    local calls = redis.call('ZRANGE', KEYS[1], from, from + 63, 'WITHSCORES')
    if #calls == 0 then break end
    for i = 1, #calls, 2 do
      count = count - 1
      total = total - tonumber(redis.call('HGET', KEYS[2], calls[i]) or 0)
      if fits(count, total) then
        wait, found = tonumber(calls[i + 1]) + window - now + 1, true
        break
      end
    end
    from = from + 64
  end
end
-- Behind the head, not before `poll`: the head is served first, and may leave.
if head and head ~= me then wait = math.max(wait, poll) end
-- Ordered by a counter, not the clock: two calls in one millisecond keep their order.
if not redis.call('ZSCORE', KEYS[3], me) then
  redis.call('ZADD', KEYS[3], redis.call('HINCRBY', KEYS[4], '#arrivals', 1), me)
end
redis.call('HSET', KEYS[4], me, now + wait + grace)
redis.call('PEXPIRE', KEYS[3], window * 2 + grace)
redis.call('PEXPIRE', KEYS[4], window * 2 + grace)
return wait
"""

_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# KEYS: calls, tokens. ARGV: window ms, call id, tokens. The call ends now, with these tokens.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local before = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or 0)
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[2], 'total', tonumber(ARGV[3]) - before)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]) * 2)
return 1
"""


def limited(route: Route) -> bool:
    return route.requests_per_minute is not None or route.tokens_per_minute is not None


def estimate_tokens(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int | None
) -> int:
    """Return the tokens a call may spend: its request's characters / 4, plus its answer's cap."""
    characters = len(json.dumps(messages, ensure_ascii=False)) + len(json.dumps(tools))
    return math.ceil(characters / 4) + (max_tokens or 0)


def acquire(
    route: Route,
    tokens: int,
    deadline: float,
    check_cancelled: Callable[[], None] = lambda: None,
) -> str:
    """Reserve room for one call of `tokens` in the model's window; return the call's id.

    Waits while the window is full, until `deadline` (on time.monotonic());
    raises OverLimit when the wait would pass it.
    """
    tpm = route.tokens_per_minute
    # A call bigger than the whole minute waits for an empty window rather than forever.
    tokens = min(tokens, tpm) if tpm is not None else tokens
    call_id = uuid.uuid4().hex
    client = redis_clients.shared()
    line = [keys.model_line(route.name), keys.model_line_expiry(route.name)]
    try:
        while True:
            wait_ms = client.eval(
                _ADMIT,
                4,
                keys.model_calls(route.name),
                keys.model_tokens(route.name),
                *line,
                WINDOW_MS,
                -1 if route.requests_per_minute is None else route.requests_per_minute,
                -1 if tpm is None else tpm,
                call_id,
                tokens,
                LINE_GRACE_MS,
                BEHIND_POLL_MS,
            )
            if wait_ms < 0:
                return call_id
            wait = wait_ms / 1000 + random.uniform(0, JITTER_SECONDS)
            if time.monotonic() + wait >= deadline:
                raise OverLimit(
                    f"model {route.name!r} is at its requests or tokens per minute limit"
                    " and has no room before the run's deadline"
                )
            end = time.monotonic() + wait
            while (left := end - time.monotonic()) > 0:
                check_cancelled()
                time.sleep(min(left, CANCEL_POLL_SECONDS))
    except BaseException:
        # Refused, cancelled or stopped: out of the line, not to hold up those behind.
        client.eval(_LEAVE, 2, *line, call_id)
        raise


def settle(route: Route, call_id: str, tokens: int) -> None:
    """Record that the call ended now, having spent `tokens` (what the provider reported)."""
    redis_clients.shared().eval(
        _SETTLE,
        2,
        keys.model_calls(route.name),
        keys.model_tokens(route.name),
        WINDOW_MS,
        call_id,
        tokens,
    )
