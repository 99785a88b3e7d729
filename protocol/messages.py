"""The wire protocol of PROTOCOL.md as pydantic models: one place for every message.

Incoming messages are validated strictly (a number is not a string) but
unknown fields are ignored, as the protocol asks. Nothing here imports Django.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

AGENT_RUN = "execution.agent_run"
CANCEL = "execution.cancel"
GET_AGENT_CONFIG = "execution.management.get_agent_config"
GET_HISTORY = "execution.conversation.get_history"
GET_CONTEXT = "execution.conversation.get_context"
EXECUTION_CALLBACK = "execution.callback"
EMBEDDING_CALLBACK = "embedding.callback"
QUERY_CALLBACK = "query.callback"


def new_id() -> str:
    return str(uuid.uuid4())


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class _Incoming(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ErrorInfo(_Incoming):
    code: str
    message: str = ""


class ExecutionContext(_Incoming):
    context_id: str | None = None
    context_type: str | None = None
    primary_agent_id: str | None = None
    agents: list[str] | None = None
    collections: list[str] | None = None
    metadata: dict[str, Any] | None = None


class DomainAction(_Incoming):
    """The envelope of every message (PROTOCOL.md §1)."""

    action_id: str = Field(min_length=1, max_length=255)
    action_type: str = Field(min_length=1, max_length=255)
    task_id: str = Field(min_length=1, max_length=255)
    tenant_id: str = Field(min_length=1, max_length=255)
    tenant_tier: str = Field(min_length=1, max_length=32)
    session_id: str | None = Field(default=None, max_length=255)
    correlation_id: str | None = Field(default=None, max_length=255)
    callback_queue: str | None = Field(default=None, max_length=512)
    execution_context: ExecutionContext | None = None
    data: dict[str, Any]
    metadata: dict[str, Any] | None = None
    timeout: int | None = None
    timestamp: str | None = None
    # Callbacks from ES and QS may carry a §2-style outcome at the top level.
    success: bool | None = None
    error: ErrorInfo | None = None


class AgentRunData(_Incoming):
    """`data` of execution.agent_run (§4)."""

    agent_id: str | None = Field(default=None, min_length=1, max_length=255)
    message: str = Field(min_length=1)
    message_type: str = "text"
    user_info: dict[str, Any] | None = None
    conversation_id: str | None = Field(default=None, max_length=255)
    max_iterations: int | None = Field(default=None, ge=1)
    timeout: int | None = Field(default=None, ge=1)


class CancelData(_Incoming):
    """`data` of execution.cancel (§4)."""

    execution_id: str | None = None
    task_id: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> CancelData:
        if not (self.execution_id or self.task_id):
            raise ValueError("execution_id or task_id is required")
        return self


class AgentConfigRequest(_Incoming):
    agent_id: str = Field(min_length=1)


class HistoryRequest(_Incoming):
    session_id: str = Field(min_length=1)
    limit: int | None = Field(default=None, ge=1)


class ContextRequest(HistoryRequest):
    agent_id: str = Field(min_length=1)


class AgentConfig(BaseModel):
    """An agent as AMS describes it (§5.1); unknown keys are kept."""

    model_config = ConfigDict(extra="allow")

    agent_id: str
    name: str = ""
    is_active: bool = True
    minimum_tier: str = "free"
    system_prompt: str = ""
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    tools: list[str] = Field(default_factory=list)
    collection_ids: list[str] = Field(default_factory=list)
    retrieval_mode: str = "query_service"


class HistoryMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    created_at: str | None = None


class DomainActionResponse(BaseModel):
    """A reply to a pseudo-synchronous request (§2)."""

    model_config = ConfigDict(extra="ignore")

    action_id: str = Field(default_factory=new_id)
    correlation_id: str | None = None
    task_id: str | None = None
    success: bool
    data: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    timestamp: str = Field(default_factory=now_iso)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ToolCallSummary(BaseModel):
    name: str
    arguments: dict[str, Any]
    result_summary: str
    duration_ms: int


class Source(BaseModel):
    model_config = ConfigDict(extra="ignore")

    document_id: str
    content: str = ""
    score: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ExecutionCallbackData(BaseModel):
    """`data` of execution.callback (§4)."""

    execution_id: str | None
    status: Literal["completed", "failed", "timeout", "cancelled", "rejected"]
    agent_id: str | None = None
    conversation_id: str | None = None
    response: str | None = None
    tool_calls: list[ToolCallSummary] = Field(default_factory=list)
    sources: list[Source] = Field(default_factory=list)
    iterations: int = 0
    usage: Usage = Field(default_factory=Usage)
    execution_time_ms: int = 0
    error: ErrorInfo | None = None


def outgoing(
    action_type: str,
    data: dict[str, Any],
    *,
    task_id: str,
    tenant_id: str,
    tenant_tier: str,
    session_id: str | None,
    correlation_id: str | None = None,
    callback_queue: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return a DomainAction the AES sends, with a fresh action_id (§1)."""
    message: dict[str, Any] = {
        "action_id": new_id(),
        "action_type": action_type,
        "task_id": task_id,
        "tenant_id": tenant_id,
        "tenant_tier": tenant_tier,
        "session_id": session_id,
        "correlation_id": correlation_id,
        "callback_queue": callback_queue,
        "data": data,
        "timestamp": now_iso(),
    }
    if metadata is not None:
        message["metadata"] = metadata
    return message


def describe(error: ValidationError) -> str:
    """Return a validation error as one readable line."""
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "message"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
