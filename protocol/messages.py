"""The wire protocol of PROTOCOL.md as pydantic models: one place for every message.

Incoming messages are validated strictly (a number is not a string) but
unknown fields are ignored, as the protocol asks. Nothing here imports Django.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Action types the AES receives (§4, §6, §7).
AGENT_RUN = "execution.agent_run"
CANCEL = "execution.cancel"
GET_AGENT_CONFIG = "execution.management.get_agent_config"
GET_HISTORY = "execution.conversation.get_history"
GET_CONTEXT = "execution.conversation.get_context"
EMBEDDING_CALLBACK = "embedding.callback"
QUERY_CALLBACK = "query.callback"

# Action types the AES sends (§4, §5, §7).
EXECUTION_CALLBACK = "execution.callback"
AMS_GET_AGENT_CONFIG = "management.get_agent_config"
CS_GET_HISTORY = "conversation.get_history"
CS_SAVE_MESSAGE = "conversation.save_message"
ES_REQUEST = "embedding.request"
QS_REQUEST = "query.request"

# The peer services, as their action lists name them: `{service}:{tier}:actions`.
MANAGEMENT = "management"
CONVERSATION = "conversation"
EMBEDDING = "embedding"
QUERY = "query"


# The statuses a run ends in, as its callback names them (§4).
FinalStatus = Literal["completed", "failed", "timeout", "cancelled", "rejected"]
FINAL_STATUSES: frozenset[str] = frozenset(get_args(FinalStatus))

# Why a run stopped, on its callback and its row (§4): `stop` (the model
# answered), `length` (the answer was cut at max_tokens), a limit
# (`max_iterations`, `token_budget`, `timeout`), `cancelled`,
# `content_filter`, or `error` (any other failure, a refused run included).
StopReason = Literal[
    "stop",
    "length",
    "max_iterations",
    "token_budget",
    "timeout",
    "cancelled",
    "content_filter",
    "error",
]
STOP_REASONS: tuple[str, ...] = get_args(StopReason)


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
    # Also publish the answer as it is written, as `delta` events (§8).
    stream: bool = False
    # Where the AES also POSTs the run's callback, signed (docs/api.md, "Webhooks").
    webhook_url: str | None = Field(default=None, min_length=1, max_length=2048)


class RunRequest(AgentRunData):
    """A run started through the REST API: the `data` of execution.agent_run and the
    envelope fields a caller may set. A tenant token fixes tenant_id and tier; staff name them.
    """

    # No execution_context through the API, so the agent is named here.
    agent_id: str = Field(min_length=1, max_length=255)
    session_id: str | None = Field(default=None, max_length=255)
    task_id: str | None = Field(default=None, min_length=1, max_length=255)
    callback_queue: str | None = Field(default=None, max_length=512)
    metadata: dict[str, Any] | None = None
    tenant_id: str | None = Field(
        default=None, min_length=1, max_length=255, description="Staff only."
    )
    tier: str | None = Field(default=None, min_length=1, max_length=32, description="Staff only.")

    def run_data(self) -> dict[str, Any]:
        """Return the fields that go in the message's `data`, as the caller set them."""
        return self.model_dump(include=set(AgentRunData.model_fields), exclude_unset=True)


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


class SaveMessage(_Incoming):
    """`data` of conversation.save_message, one message of a turn for CS (§5.2)."""

    session_id: str
    role: Literal["user", "assistant"]
    content: str
    message_type: str
    agent_id: str
    task_id: str
    metadata: dict[str, Any]


class EmbeddingRequest(_Incoming):
    """`data` of embedding.request (§7)."""

    texts: list[str]
    model: str | None = None


class QueryRequest(_Incoming):
    """`data` of query.request (§7); `query_embedding` only for vector retrieval."""

    query: str
    collection_ids: list[str]
    top_k: int
    agent_description: str
    query_embedding: list[float] | None = None


class HttpToolSpec(BaseModel):
    """One of an agent's `http_tools` (§5.1, §7): a function tool served by a POST."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: float | None = Field(default=None, gt=0)


class McpServerSpec(BaseModel):
    """One of an agent's `mcp_servers` (§5.1, §7): a Model Context Protocol server."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    # None: every tool the server lists.
    allowed_tools: list[str] | None = None


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
    http_tools: list[HttpToolSpec] = Field(default_factory=list)
    mcp_servers: list[McpServerSpec] = Field(default_factory=list)
    # Tokens the agent's model takes in one request; None: the deployment's default.
    context_window: int | None = Field(default=None, gt=0)


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
    # USD at the deployment's model prices; None when a price is unknown (§4).
    cost_usd: float | None = None


class ToolCallSummary(BaseModel):
    name: str
    # The parsed JSON object, or the model's own text when it was not one.
    arguments: dict[str, Any] | str
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
    status: FinalStatus
    agent_id: str | None = None
    conversation_id: str | None = None
    response: str | None = None
    tool_calls: list[ToolCallSummary] = Field(default_factory=list)
    sources: list[Source] = Field(default_factory=list)
    iterations: int = 0
    usage: Usage = Field(default_factory=Usage)
    stop_reason: StopReason | None = None
    execution_time_ms: int = 0
    resumes: int = 0
    error: ErrorInfo | None = None


class Envelope(BaseModel):
    """A DomainAction the AES sends (§1): a fresh action_id and timestamp unless given."""

    model_config = ConfigDict(extra="forbid")

    action_id: str = Field(default_factory=new_id)
    action_type: str
    task_id: str
    tenant_id: str
    tenant_tier: str | None
    session_id: str | None = None
    correlation_id: str | None = None
    callback_queue: str | None = None
    data: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)
    timestamp: str = Field(default_factory=now_iso)

    def dump(self) -> dict[str, Any]:
        """Return the message as the JSON-ready dict that goes on the wire."""
        return self.model_dump(mode="json")


class ExecutionCallback(Envelope):
    """The one execution.callback of a run, or of a message refused before it was one (§4).

    The envelope's identifying fields are echoed from the request as it came:
    a refused request may hold anything there, and its sender matches on them.
    """

    action_type: Literal["execution.callback"] = EXECUTION_CALLBACK
    # Stable across re-sends, for receivers to deduplicate.
    event_id: str
    task_id: Any = None
    tenant_id: Any = None
    session_id: Any = None
    correlation_id: Any = None
    metadata: Any = Field(default_factory=dict)

    @classmethod
    def answering(
        cls, request: dict[str, Any], tier: str | None, data: ExecutionCallbackData
    ) -> ExecutionCallback:
        """Return the callback that answers `request` with `data`."""
        event_id = new_id()
        return cls(
            action_id=event_id,
            event_id=event_id,
            task_id=request.get("task_id"),
            tenant_id=request.get("tenant_id"),
            tenant_tier=tier,
            session_id=request.get("session_id"),
            correlation_id=request.get("correlation_id"),
            data=data.model_dump(mode="json"),
            metadata=request.get("metadata") or {},
        )


def describe(error: ValidationError) -> str:
    """Return a validation error as one readable line."""
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "message"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
