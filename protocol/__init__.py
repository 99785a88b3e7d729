"""The wire protocol of PROTOCOL.md, free of Django: messages, action types, Redis keys and TTLs."""
