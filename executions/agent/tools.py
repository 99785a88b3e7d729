"""The tools an agent may use: a name, a JSON schema and a function each.

`build` picks an agent's tools within its tier's `max_tools`; a tool the
agent names that is unknown or over the limit is left out with a note.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from pydantic import ValidationError

from executions.agent import peers
from executions.agent.loop import Step, ToolResult
from executions.exceptions import UpstreamError
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


@dataclass
class ToolContext:
    """What a tool may need about the run it serves."""

    caller: peers.Caller
    agent: AgentConfig
    collections: list[str]


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
    for name in dict.fromkeys(context.agent.tools):
        if name not in REGISTRY:
            notes.append(_skipped(name, f"unknown tool {name!r} left out"))
        elif max_tools is not None and len(tools) >= max_tools:
            notes.append(_skipped(name, f"tool {name!r} left out: the tier allows {max_tools}"))
        else:
            tools[name] = REGISTRY[name](context)
    return tools, notes


def _skipped(name: str, why: str) -> Step:
    return Step(kind="note", name="tool_skipped", input={"tool": name}, error=why)
