"""The wire protocol as a peer service meets it: protocol/messages.py and protocol/keys.py.

Plain Python: no Django, Redis or database. The names spelled out here are
PROTOCOL.md's, on purpose; every other test takes them from protocol/.
"""

from __future__ import annotations

import inspect
import uuid
from datetime import datetime

import pytest
from pydantic import ValidationError

from protocol import keys, messages
from protocol.messages import (
    AgentRunData,
    CancelData,
    DomainAction,
    DomainActionResponse,
    Envelope,
    ErrorInfo,
    ExecutionCallback,
    ExecutionCallbackData,
)

pytestmark = pytest.mark.django_free

# §1: the fields of a DomainAction, and those it cannot do without.
ENVELOPE_FIELDS = {
    "action_id",
    "action_type",
    "task_id",
    "tenant_id",
    "tenant_tier",
    "session_id",
    "correlation_id",
    "callback_queue",
    "execution_context",
    "data",
    "metadata",
    "timeout",
    "timestamp",
}
REQUIRED_FIELDS = ["action_id", "action_type", "task_id", "tenant_id", "tenant_tier", "data"]
# §4: the fields of an execution.callback's data, and of its usage.
CALLBACK_DATA_FIELDS = {
    "execution_id",
    "status",
    "agent_id",
    "conversation_id",
    "response",
    "tool_calls",
    "sources",
    "iterations",
    "usage",
    "stop_reason",
    "execution_time_ms",
    "resumes",
    "error",
}
USAGE_FIELDS = {"prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"}
# §3: the prefixes of the keys only the AES may write.
RESERVED_PREFIXES = ("execution:", "agent_config:", "conversation_history:", "rq:")


def request(**changes) -> dict:
    """An execution.agent_run as a client sends it, with `changes`."""
    message = {
        "action_id": "a-1",
        "action_type": "execution.agent_run",
        "task_id": "t-1",
        "tenant_id": "acme",
        "tenant_tier": "free",
        "session_id": "s-1",
        "correlation_id": "c-1",
        "callback_queue": "acme:callbacks",
        "data": {"agent_id": "support-bot", "message": "How do refunds work?"},
        "metadata": {"origin": "aos"},
    }
    message.update(changes)
    return message


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# --- Incoming messages -------------------------------------------------------------


def test_an_incoming_message_ignores_the_fields_it_does_not_know():
    action = DomainAction.model_validate(request(priority="high", trace={"id": 7}))
    assert (action.action_id, action.tenant_id) == ("a-1", "acme")
    assert "priority" not in action.model_dump()
    run = AgentRunData.model_validate({**request()["data"], "temperature": 0.2})
    assert run.message == "How do refunds work?"


@pytest.mark.parametrize(
    "field",
    [
        "action_id",
        "action_type",
        "task_id",
        "tenant_id",
        "tenant_tier",
        "session_id",
        "correlation_id",
        "callback_queue",
    ],
)
def test_an_incoming_message_refuses_a_number_where_a_string_belongs(field):
    with pytest.raises(ValidationError) as refused:
        DomainAction.model_validate(request(**{field: 12345}))
    assert [error["loc"] for error in refused.value.errors()] == [(field,)]


def test_an_incoming_message_refuses_a_string_where_a_number_belongs():
    with pytest.raises(ValidationError):
        DomainAction.model_validate(request(timeout="30"))
    with pytest.raises(ValidationError):
        AgentRunData.model_validate({"agent_id": "a1", "message": "hi", "max_iterations": "3"})


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_an_incoming_message_needs_every_required_field(field):
    message = request()
    del message[field]
    with pytest.raises(ValidationError):
        DomainAction.model_validate(message)


def test_the_optional_fields_may_be_absent_or_null_and_data_empty():
    bare = {field: value for field, value in request(data={}).items() if field in REQUIRED_FIELDS}
    assert DomainAction.model_validate(bare).data == {}
    nulls = request(session_id=None, correlation_id=None, callback_queue=None, metadata=None)
    assert DomainAction.model_validate(nulls).callback_queue is None


def test_a_cancel_names_an_execution_or_a_task():
    assert CancelData.model_validate({"execution_id": "e-1"}).execution_id == "e-1"
    assert CancelData.model_validate({"task_id": "t-1"}).task_id == "t-1"
    with pytest.raises(ValidationError, match="execution_id or task_id is required"):
        CancelData.model_validate({})


# --- What the AES sends ---------------------------------------------------------------


def envelope() -> Envelope:
    return Envelope(
        action_type="query.request",
        task_id="t-1",
        tenant_id="acme",
        tenant_tier="free",
        session_id="s-1",
        correlation_id="c-9",
        callback_queue="execution:free:callbacks",
        data={"query": "refunds"},
    )


def test_a_request_the_aes_sends_is_an_envelope_with_a_fresh_action_id():
    wire = envelope().dump()
    assert set(wire) <= ENVELOPE_FIELDS
    assert is_uuid(wire["action_id"])
    assert wire["action_id"] != envelope().dump()["action_id"]
    assert datetime.fromisoformat(wire["timestamp"]).tzinfo is not None
    # A peer reads it as any other DomainAction.
    read = DomainAction.model_validate(wire)
    assert (read.task_id, read.tenant_id, read.tenant_tier, read.session_id) == (
        "t-1",
        "acme",
        "free",
        "s-1",
    )


def test_a_callback_answers_its_request_with_a_fresh_id_and_echoes_it():
    asked = request()
    data = ExecutionCallbackData(execution_id="e-1", status="completed", response="5 days")
    callback = ExecutionCallback.answering(asked, "free", data).dump()

    assert callback["action_type"] == "execution.callback"
    assert is_uuid(callback["action_id"]) and callback["action_id"] != asked["action_id"]
    assert callback["event_id"] == callback["action_id"]
    for field in ("task_id", "tenant_id", "session_id", "correlation_id", "metadata"):
        assert callback[field] == asked[field], field
    assert callback["tenant_tier"] == "free"
    assert datetime.fromisoformat(callback["timestamp"]).tzinfo is not None
    assert (callback["data"]["execution_id"], callback["data"]["status"]) == ("e-1", "completed")
    assert callback["data"]["response"] == "5 days"
    assert set(callback["data"]) <= CALLBACK_DATA_FIELDS
    assert set(callback["data"]["usage"]) <= USAGE_FIELDS
    again = ExecutionCallback.answering(asked, "free", data).dump()
    assert again["action_id"] != callback["action_id"]


def test_a_refused_requests_callback_echoes_its_fields_as_they_came():
    asked = request(task_id=12345, tenant_id=None, correlation_id=["c-1"])
    refusal = ExecutionCallbackData(
        execution_id=None,
        status="rejected",
        error=ErrorInfo(code="INVALID_ACTION", message="task_id: not a string"),
    )
    callback = ExecutionCallback.answering(asked, None, refusal).dump()
    assert (callback["task_id"], callback["tenant_id"], callback["correlation_id"]) == (
        12345,
        None,
        ["c-1"],
    )
    assert callback["data"]["execution_id"] is None
    assert callback["data"]["error"] == {
        "code": "INVALID_ACTION",
        "message": "task_id: not a string",
    }


def test_a_reply_has_the_fields_of_section_2_and_empty_data_on_failure():
    reply = DomainActionResponse(
        correlation_id="c-1",
        task_id="t-1",
        success=False,
        error=ErrorInfo(code="NOT_FOUND", message="no such agent"),
    ).model_dump(mode="json")
    assert set(reply) == {
        "action_id",
        "correlation_id",
        "task_id",
        "success",
        "data",
        "error",
        "timestamp",
    }
    assert is_uuid(reply["action_id"])
    assert (reply["success"], reply["data"]) == (False, {})
    assert reply["error"] == {"code": "NOT_FOUND", "message": "no such agent"}


# --- Names on the wire -------------------------------------------------------------------


def test_the_action_types_are_those_of_the_protocol():
    assert messages.AGENT_RUN == "execution.agent_run"
    assert messages.CANCEL == "execution.cancel"
    assert messages.EXECUTION_CALLBACK == "execution.callback"
    assert (messages.GET_AGENT_CONFIG, messages.GET_HISTORY, messages.GET_CONTEXT) == (
        "execution.management.get_agent_config",
        "execution.conversation.get_history",
        "execution.conversation.get_context",
    )
    assert messages.AMS_GET_AGENT_CONFIG == "management.get_agent_config"
    assert (messages.CS_GET_HISTORY, messages.CS_SAVE_MESSAGE) == (
        "conversation.get_history",
        "conversation.save_message",
    )
    assert (messages.ES_REQUEST, messages.EMBEDDING_CALLBACK) == (
        "embedding.request",
        "embedding.callback",
    )
    assert (messages.QS_REQUEST, messages.QUERY_CALLBACK) == ("query.request", "query.callback")


def test_the_lists_have_the_names_of_section_3():
    assert keys.actions("free") == "execution:free:actions"
    assert keys.callbacks("enterprise") == "execution:enterprise:callbacks"
    assert keys.responses("c-1") == "execution:responses:c-1"
    assert keys.DEAD_LETTER == "execution:dead_letter"
    services = (messages.MANAGEMENT, messages.CONVERSATION, messages.EMBEDDING, messages.QUERY)
    assert [keys.peer_actions(service, "free") for service in services] == [
        "management:free:actions",
        "conversation:free:actions",
        "embedding:free:actions",
        "query:free:actions",
    ]


def test_the_caches_have_the_names_of_section_5():
    assert keys.agent_config("acme", "a1") == "agent_config:acme:a1"
    assert keys.history("acme", "s-1") == "conversation_history:acme:s-1"


def test_an_api_tenants_callback_queues_lie_under_its_own_prefix():
    assert keys.tenant_callbacks_prefix("acme") == "callbacks:acme:"


def test_the_intake_keeps_the_keys_docs_architecture_names():
    held = keys.processing("host:7:beef", keys.actions("free"))
    assert held == "execution:processing:host:7:beef:execution:free:actions"
    assert keys.consumer_alive("host:7:beef") == "execution:consumer:host:7:beef:alive"
    assert keys.CONSUMERS == "execution:consumers"


# --- Reserved keys (§3) ----------------------------------------------------------------------


def test_every_reserved_prefix_is_reserved_and_nothing_beside_them():
    assert set(keys.RESERVED_PREFIXES) == set(RESERVED_PREFIXES)
    for prefix in RESERVED_PREFIXES:
        assert keys.is_reserved(prefix), prefix
        assert keys.is_reserved(prefix + "anything:else"), prefix
    for key in ("callbacks:acme:inbox", "acme:callbacks", "executions:x", "rq", "agent_config"):
        assert not keys.is_reserved(key), key


def test_every_key_the_aes_keeps_is_reserved_and_the_peers_lists_are_not():
    # Every name and template of keys.py, but the lists of other services.
    theirs = {"peer_actions", "tenant_callbacks_prefix"}
    names = [
        value for name, value in vars(keys).items() if name.isupper() and isinstance(value, str)
    ]
    templates = [
        template
        for name, template in vars(keys).items()
        if inspect.isfunction(template)
        and template.__module__ == keys.__name__
        and name not in theirs | {"is_reserved"}
    ]
    kept = names + [
        template(*["x"] * len(inspect.signature(template).parameters)) for template in templates
    ]
    assert keys.DEAD_LETTER in kept and keys.actions("x") in kept
    assert [key for key in kept if not keys.is_reserved(key)] == []
    assert not keys.is_reserved(keys.peer_actions(messages.QUERY, "free"))
    assert not keys.is_reserved(keys.tenant_callbacks_prefix("acme") + "inbox")
