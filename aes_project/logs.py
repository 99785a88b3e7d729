"""Log records that carry the run they belong to, as text or as JSON lines."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

FIELDS = ("execution_id", "task_id", "tenant_id")
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "run", default=None
)


@contextlib.contextmanager
def run_context(**fields: str) -> Iterator[None]:
    """Tag every log record made inside the block with the run's ids."""
    token = _context.set({k: str(v) for k, v in fields.items() if k in FIELDS and v})
    try:
        yield
    finally:
        _context.reset(token)


def install() -> None:
    """Make every log record carry the current run's ids, whatever handler gets it.

    A record factory rather than a handler filter, so records reach every
    handler (and test capture) already tagged.
    """
    base = logging.getLogRecordFactory()
    if getattr(base, "_aes_run_context", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        fields = _context.get() or {}
        for name in FIELDS:
            setattr(record, name, fields.get(name))
        record.run_context = (
            " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]" if fields else ""
        )
        return record

    factory._aes_run_context = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)
