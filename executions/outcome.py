"""What a run produced and how it ended: the one value its row and its callback are written from.

Plain Python, shared by the agent loop (which fills a LoopResult) and the
record (Execution.finish writes an Outcome).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from executions.exceptions import RunError


@dataclass
class LoopResult:
    """What the agent loop produced: its last answer, the calls it made, the tokens spent."""

    response: str | None = None
    iterations: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    # Why a completed run stopped: "stop", "length", "token_budget" or "content_filter".
    stop_reason: str = "stop"

    def add_sources(self, sources: list[dict[str, Any]]) -> None:
        """Keep the sources of a tool result, each document once (its first passage)."""
        seen = {source.get("document_id") for source in self.sources}
        for source in sources:
            if source.get("document_id") not in seen:
                seen.add(source.get("document_id"))
                self.sources.append(source)

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


@dataclass(frozen=True)
class Outcome:
    """A final status, the error that caused it if any, and what the run produced."""

    status: str
    result: LoopResult = field(default_factory=LoopResult)
    error_code: str | None = None
    error_message: str | None = None
    stop_reason: str = "error"

    @classmethod
    def completed(cls, result: LoopResult) -> Outcome:
        return cls(status="completed", result=result, stop_reason=result.stop_reason)

    @classmethod
    def from_error(cls, error: RunError, partial: LoopResult | None = None) -> Outcome:
        """Return the outcome of a run stopped by `error`, keeping what it had produced."""
        return cls(
            status=error.status,
            result=partial or LoopResult(),
            error_code=error.code,
            error_message=error.message,
            stop_reason=error.stop_reason,
        )

    @classmethod
    def internal(cls, message: str) -> Outcome:
        """Return the outcome of a run that broke on our side (a crash, a lost worker)."""
        return cls(status="failed", error_code="INTERNAL", error_message=message)
