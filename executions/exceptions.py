"""Named failures of a run; the job turns each into a final status and error code."""

from __future__ import annotations

from protocol.messages import FinalStatus, StopReason


class RunError(Exception):
    """A run ends with `status`, error `code` and `stop_reason`; the message is for people.

    The message goes to the tenant in the callback: one short line written by
    the AES, never an upstream server's own text (that stays in the steps).
    """

    code = "INTERNAL"
    status: FinalStatus = "failed"
    stop_reason: StopReason = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # What the run had produced when it stopped (an executions.outcome.LoopResult).
        self.partial = None
        # The failed tries of the LLM call that raised it (executions.agent.loop.Attempt),
        # each recorded as a step.
        self.attempts: list = []


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


class UpstreamTimeout(RunError):
    code = "UPSTREAM_TIMEOUT"


class UpstreamError(RunError):
    code = "UPSTREAM_ERROR"

    def __init__(self, message: str, upstream_code: str | None = None) -> None:
        super().__init__(message)
        self.upstream_code = upstream_code


class LLMError(RunError):
    code = "LLM_ERROR"


class EmptyResponse(RunError):
    code = "EMPTY_RESPONSE"


class ExecutionTimeout(RunError):
    code, status, stop_reason = "EXECUTION_TIMEOUT", "timeout", "timeout"


class MaxIterations(RunError):
    code, stop_reason = "MAX_ITERATIONS", "max_iterations"


class TokenBudget(MaxIterations):
    """The run's token budget left no room for another call: a limit, like max_iterations.

    It keeps MAX_ITERATIONS, the protocol's code for a limit reached without
    a final answer; `stop_reason` tells the two apart.
    """

    stop_reason = "token_budget"


class Cancelled(RunError):
    code, status, stop_reason = "CANCELLED", "cancelled", "cancelled"


class WorkerLost(RunError):
    code = "WORKER_LOST"


class Superseded(Exception):
    """A later attempt took the run over (§9): this one stops and writes nothing more.

    Not a RunError: it ends no run, the attempt that holds the run does.
    """
