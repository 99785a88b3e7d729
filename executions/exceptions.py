"""Named failures of a run; the job turns each into a final status and error code."""

from __future__ import annotations

from protocol.messages import FinalStatus


class RunError(Exception):
    """A run ends with `status` and error `code`; the message is for people."""

    code = "INTERNAL"
    status: FinalStatus = "failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # What the run had produced when it stopped (an executions.outcome.LoopResult).
        self.partial = None


class InvalidAction(RunError):
    code, status = "INVALID_ACTION", "rejected"


class AgentNotFound(RunError):
    code, status = "AGENT_NOT_FOUND", "rejected"


class AgentInactive(RunError):
    code, status = "AGENT_INACTIVE", "rejected"


class TierInsufficient(RunError):
    code, status = "TIER_INSUFFICIENT", "rejected"


class RateLimited(RunError):
    code, status = "RATE_LIMITED", "rejected"


class ModelRateLimited(RunError):
    """The model's requests or tokens per minute left no room for a call before the deadline."""

    code = "RATE_LIMITED"


class UpstreamTimeout(RunError):
    code = "UPSTREAM_TIMEOUT"


class UpstreamError(RunError):
    code = "UPSTREAM_ERROR"

    def __init__(self, message: str, upstream_code: str | None = None) -> None:
        super().__init__(message)
        self.upstream_code = upstream_code


class LLMError(RunError):
    code = "LLM_ERROR"


class ExecutionTimeout(RunError):
    code, status = "EXECUTION_TIMEOUT", "timeout"


class MaxIterations(RunError):
    code = "MAX_ITERATIONS"


class Cancelled(RunError):
    code, status = "CANCELLED", "cancelled"


class WorkerLost(RunError):
    code = "WORKER_LOST"


class Superseded(Exception):
    """A later attempt took the run over (§9): this one stops and writes nothing more.

    Not a RunError: it ends no run, the attempt that holds the run does.
    """
