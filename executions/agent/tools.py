"""The tools an agent may use: a name, a JSON schema and a function each.

`build` picks an agent's tools, in order: the built-ins named in `tools`,
then its `http_tools`, then its MCP servers' tools, within its tier's
`max_tools`; a tool that is unknown, misnamed, a second of its name or over
the limit is left out with a note, and so is an MCP server that cannot list
its tools.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from pydantic import ValidationError

from aes_project.outbound import HostPolicy
from executions.agent import mcp_tools, peers
from executions.agent.http_tools import HttpTool
from executions.agent.loop import Step, ToolResult
from executions.exceptions import RunError, UpstreamError
from protocol.messages import (
    EMBEDDING,
    ES_REQUEST,
    QS_REQUEST,
    QUERY,
    AgentConfig,
    EmbeddingRequest,
    QueryRequest,
    Source,
)

# Results a knowledge search asks QS for.
DEFAULT_TOP_K = 5


# The function names Chat Completions accepts.
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def policy() -> HostPolicy:
    """Return the hosts tools may call (AES_TOOL_ALLOWED_HOSTS)."""
    return HostPolicy.from_setting(settings.AES_TOOL_ALLOWED_HOSTS)


@dataclass
class ToolContext:
    """What a tool may need about the run it serves; `close` it when the run ends."""

    caller: peers.Caller
    agent: AgentConfig
    collections: list[str]
    deadline: float = math.inf  # on time.monotonic
    # The run's MCP sessions: none is opened until a server is used.
    connections: mcp_tools.Connections = field(
        default_factory=lambda: mcp_tools.Connections(policy())
    )

    def close(self) -> None:
        """Close what the run's tools opened (its MCP sessions)."""
        self.connections.close()


class KnowledgeSearch:
    """Search the agent's document collections through QS (and ES for vectors)."""

    name = "knowledge_search"

    def __init__(self, context: ToolContext) -> None:
        self.context = context

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": "Search the knowledge base for passages relevant to a query.",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string", "description": "What to look for."}},
                    "required": ["query"],
                },
            },
        }

    def call(self, arguments: dict[str, Any], deadline: float) -> ToolResult:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip():
            raise UpstreamError("knowledge_search needs a non-empty 'query' string")
        agent, caller = self.context.agent, self.context.caller
        request = QueryRequest(
            query=query,
            collection_ids=self.context.collections,
            top_k=DEFAULT_TOP_K,
            agent_description=agent.name or agent.agent_id,
        )
        if agent.retrieval_mode == "vector":
            model = (agent.model_extra or {}).get("embedding_model")
            embedding = EmbeddingRequest(
                texts=[query], model=model if isinstance(model, str) else None
            )
            embedded = peers.call_async(
                caller, EMBEDDING, ES_REQUEST, embedding.model_dump(), _tool_timeout(deadline)
            )
            try:
                request.query_embedding = embedded["embeddings"][0]
            except (KeyError, IndexError, TypeError):
                raise UpstreamError("ES answered without an embedding") from None
        answer = peers.call_async(
            caller,
            QUERY,
            QS_REQUEST,
            request.model_dump(exclude_none=True),
            _tool_timeout(deadline),
        )
        try:
            sources = [Source.model_validate(item) for item in answer.get("results", [])]
        except (ValidationError, TypeError):
            raise UpstreamError("QS answered with malformed results") from None
        passages = [
            {"document_id": s.document_id, "content": s.content, "score": s.score} for s in sources
        ]
        return ToolResult(
            content=json.dumps(passages) if passages else "No matching documents.",
            sources=[s.model_dump() for s in sources],
        )


def _tool_timeout(deadline: float) -> float:
    return max(0.0, min(settings.AES_TOOL_TIMEOUT_SECONDS, deadline - time.monotonic()))


REGISTRY: dict[str, Callable[[ToolContext], Any]] = {
    KnowledgeSearch.name: KnowledgeSearch,
}


def build(context: ToolContext, max_tools: int | None) -> tuple[dict[str, Any], list[Step]]:
    """Return the agent's usable tools by name, and a note for each one left out."""
    tools: dict[str, Any] = {}
    notes: list[Step] = []
    agent = context.agent

    def full() -> bool:
        return max_tools is not None and len(tools) >= max_tools

    def offer(name: str, make: Callable[[], Any]) -> None:
        if not TOOL_NAME.fullmatch(name):
            why = f"tool {name!r} left out: a name is 1-64 of A-Z a-z 0-9 _ -"
            notes.append(_skipped(name, why))
        elif name in tools:
            notes.append(_skipped(name, f"tool {name!r} left out: another tool has that name"))
        elif full():
            notes.append(_skipped(name, f"tool {name!r} left out: the tier allows {max_tools}"))
        else:
            tools[name] = make()

    for name in dict.fromkeys(agent.tools):
        if name not in REGISTRY:
            notes.append(_skipped(name, f"unknown tool {name!r} left out"))
        else:
            offer(name, lambda name=name: REGISTRY[name](context))
    for spec in agent.http_tools:
        offer(spec.name, lambda spec=spec: HttpTool(spec, context.connections.policy))
    for server in agent.mcp_servers:
        if full():
            # Not listed at all: nothing of it could be offered.
            why = f"MCP server {server.name!r} left out: the tier allows {max_tools} tools"
            notes.append(
                Step(kind="note", name="tool_skipped", input={"server": server.name}, error=why)
            )
            continue
        try:
            listed = mcp_tools.list_tools(
                server, context.caller.tenant_id, context.connections, context.deadline
            )
        except RunError as exc:
            notes.append(
                Step(
                    kind="note",
                    name="mcp_server_unavailable",
                    input={"server": server.name},
                    error=f"{exc.code}: {exc.message}",
                )
            )
            continue
        names = {tool["name"] for tool in listed}
        for missing in [t for t in server.allowed_tools or [] if t not in names]:
            name = f"{server.name}{mcp_tools.SEPARATOR}{missing}"
            notes.append(_skipped(name, f"unknown tool {name!r} left out: the server lists none"))
        for tool in listed:
            if server.allowed_tools is None or tool["name"] in server.allowed_tools:
                offer(
                    f"{server.name}{mcp_tools.SEPARATOR}{tool['name']}",
                    lambda tool=tool, server=server: mcp_tools.McpTool(
                        server, tool, context.connections
                    ),
                )
    return tools, notes


def _skipped(name: str, why: str) -> Step:
    return Step(kind="note", name="tool_skipped", input={"tool": name}, error=why)
