"""Redis key and list names, and the timing constants of the intake, defined once.

Every key the AES reads or writes lies under one of RESERVED_PREFIXES
(PROTOCOL.md §3); no message may name one of them as its callback queue.
"""

from __future__ import annotations

# The AES's own namespaces, RQ's, and the caches of §5.
RESERVED_PREFIXES = ("execution:", "agent_config:", "conversation_history:", "rq:")

DEAD_LETTER = "execution:dead_letter"
CONSUMERS = "execution:consumers"  # set of consumer ids that may hold messages
REAPER_LOCK = "execution:reaper:lock"
LIVENESS_LOCK = "execution:liveness:lock"  # one look for lost runs at a time
METRICS_INDEX = "execution:metrics:index"  # set of the metrics hashes that exist
WEBHOOK_METRICS = "execution:webhooks:metrics"  # webhook attempts by outcome (webhooks/metrics.py)
# Followed by a message's SHA-1: how often dead consumers held that message.
RECOVERED_PREFIX = "execution:recovered:"
# Django's cache (API throttle counts) keeps its keys under this prefix.
DJANGO_CACHE_PREFIX = "execution:cache"

# Seconds one blocking read waits before it returns to check for shutdown.
BLOCK_SECONDS = 5
# Added to a blocking read's wait to get its socket timeout: a socket timeout
# shorter than the wait would raise spurious TimeoutErrors.
SOCKET_MARGIN_SECONDS = 5
# Seconds between a consumer's heartbeats (their validity is the setting
# AES_CONSUMER_HEARTBEAT_TTL); capped at a third of it in the consumer.
HEARTBEAT_SECONDS = 5
# Seconds a reply list lives, as the responders of PROTOCOL.md §2 set it.
REPLY_TTL_SECONDS = 300
# A run's event stream (PROTOCOL.md §8) keeps about this many events (MAXLEN ~).
EVENTS_MAX_LEN = 10_000
# Seconds the stream and its counter live once the run has ended, and while it
# has not: longer than a run can be queued and run, so that only a run whose
# end was lost altogether leaves its stream to this bound.
EVENTS_ENDED_TTL_SECONDS = 3600
EVENTS_LIVE_TTL_SECONDS = 24 * 3600
# Seconds a run submitted through the API is known to its tenant's event
# stream route before the consumer has recorded it.
SUBMITTED_TTL_SECONDS = 3600


def is_reserved(key: str) -> bool:
    """Return True when `key` lies in a namespace only the AES may write."""
    return key.startswith(RESERVED_PREFIXES)


def tenant_callbacks_prefix(tenant_id: str) -> str:
    """Return the prefix of the callback queues an API tenant may name (§3)."""
    return f"callbacks:{tenant_id}:"


def actions(tier: str) -> str:
    return f"execution:{tier}:actions"


def callbacks(tier: str) -> str:
    return f"execution:{tier}:callbacks"


def responses(correlation_id: str) -> str:
    return f"execution:responses:{correlation_id}"


def waiting(correlation_id: str) -> str:
    """A run waits for the ES or QS callback of `correlation_id` while this key exists."""
    return f"execution:waiting:{correlation_id}"


def processing(consumer_id: str, source: str) -> str:
    """The consumer's processing list for messages taken from list `source`."""
    return f"execution:processing:{consumer_id}:{source}"


def consumer_alive(consumer_id: str) -> str:
    return f"execution:consumer:{consumer_id}:alive"


def cancel_flag(execution_id: str) -> str:
    return f"execution:cancel:{execution_id}"


# The Stream of cancelled runs' ids that every process's watcher follows.
CANCELS = "execution:cancels"


def lease(execution_id: str) -> str:
    """Held by the process running the run, as long as its heartbeat renews it (§9)."""
    return f"execution:lease:{execution_id}"


def outbox(execution_id: str) -> str:
    """A string saying what the run's end did: `counted` in the metrics, or callback `pushed` too.

    Each is done once however often the outbox is processed (PROTOCOL.md §4).
    """
    return f"execution:outbox:{execution_id}"


def events(execution_id: str) -> str:
    """The run's event stream (PROTOCOL.md §8): entry ids `0-{seq}`, one field `event`."""
    return f"execution:events:{execution_id}"


def submitted(execution_id: str) -> str:
    """Names the tenant of a run the API submitted, until the consumer records it."""
    return f"execution:submitted:{execution_id}"


def session_order(tenant_id: str, session_id: str) -> str:
    return f"execution:session_order:{tenant_id}:{session_id}"


def slots(tenant_id: str) -> str:
    return f"execution:slots:{tenant_id}"


def slot_waiters(tenant_id: str) -> str:
    return f"execution:slots:{tenant_id}:waiting"


def rate(tenant_id: str, window: str) -> str:
    """The tenant's sliding `window` ("minute" or "day") of run starts."""
    return f"execution:rate:{tenant_id}:{window}"


def model_calls(model: str) -> str:
    """The model's calls of the last minute, for its rpm and tpm limits (llm_models/limits.py)."""
    return f"execution:model_calls:{model}"


def model_tokens(model: str) -> str:
    """The tokens each of the model's recent calls holds, and their `total`."""
    return f"execution:model_tokens:{model}"


def model_line(model: str) -> str:
    """The calls waiting for room in the model's window, by arrival (first come first)."""
    return f"execution:model_line:{model}"


def model_line_expiry(model: str) -> str:
    """When each waiter of the model's line leaves it unless it looks again (ms)."""
    return f"execution:model_line_expiry:{model}"


def metrics(tier: str, tenant_id: str) -> str:
    return f"execution:metrics:{tier}:{tenant_id}"


def mcp_tools(tenant_id: str, server_digest: str) -> str:
    """The tool list of one MCP server (by a digest of its URL and headers), for one tenant."""
    return f"execution:mcp_tools:{tenant_id}:{server_digest}"


def peer_actions(service: str, tier: str) -> str:
    return f"{service}:{tier}:actions"


def agent_config(tenant_id: str, agent_id: str) -> str:
    return f"agent_config:{tenant_id}:{agent_id}"


def history(tenant_id: str, session_id: str) -> str:
    return f"conversation_history:{tenant_id}:{session_id}"
