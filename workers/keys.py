"""Redis key and list names, and the timing constants of the intake, defined once."""

from __future__ import annotations

DEAD_LETTER = "execution:dead_letter"
CONSUMERS = "execution:consumers"  # set of consumer ids that may hold messages

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


def actions(tier: str) -> str:
    return f"execution:{tier}:actions"


def callbacks(tier: str) -> str:
    return f"execution:{tier}:callbacks"


def responses(correlation_id: str) -> str:
    return f"execution:responses:{correlation_id}"


def processing(consumer_id: str, source: str) -> str:
    """The consumer's processing list for messages taken from list `source`."""
    return f"execution:processing:{consumer_id}:{source}"


def consumer_alive(consumer_id: str) -> str:
    return f"execution:consumer:{consumer_id}:alive"


def peer_actions(service: str, tier: str) -> str:
    return f"{service}:{tier}:actions"


def agent_config(tenant_id: str, agent_id: str) -> str:
    return f"agent_config:{tenant_id}:{agent_id}"


def history(tenant_id: str, session_id: str) -> str:
    return f"conversation_history:{tenant_id}:{session_id}"
