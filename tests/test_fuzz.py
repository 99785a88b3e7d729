"""Hostile input: random envelopes and bytes never stop the consumer or vanish."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aes_project import redis_clients
from executions.models import Execution
from protocol import keys
from tests.helpers import agent_run, consume, dead_letters, push

pytestmark = pytest.mark.django_db

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def envelopes(draw) -> bytes:
    """A valid agent_run with some fields replaced, dropped or added at random."""
    message = agent_run()
    message["action_id"] = draw(st.uuids()).hex
    data = message["data"]
    for target in (message, data):
        for field in draw(st.lists(st.sampled_from(sorted(target)), max_size=2)):
            if draw(st.booleans()):
                target.pop(field, None)
            else:
                target[field] = draw(json_values)
        target.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return json.dumps(message).encode()


messages = st.lists(
    st.one_of(
        envelopes(), st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=messages)
def test_every_message_ends_as_an_execution_or_a_dead_letter(batch):
    client = redis_clients.shared()
    client.flushdb()
    Execution.objects.all().delete()
    for raw in batch:
        push(raw)

    consumer = consume()

    assert consumer.handled == len(batch)
    assert client.llen(keys.actions("free")) == 0
    recorded = Execution.objects.count()
    assert recorded + len(dead_letters()) >= len(batch) - _duplicates(batch)
    assert client.keys(keys.processing("*", "*")) == []
    # And the consumer still works afterwards.
    good = agent_run()
    push(good)
    consume()
    assert Execution.objects.filter(action_id=good["action_id"]).exists()


def _duplicates(batch: list[bytes]) -> int:
    """Messages that repeat an earlier valid action_id: one Execution for all of them."""
    seen, duplicates = set(), 0
    for raw in batch:
        try:
            action_id = json.loads(raw).get("action_id")
        except (ValueError, AttributeError, UnicodeDecodeError):
            continue
        if not isinstance(action_id, str):
            continue
        if action_id in seen:
            duplicates += 1
        seen.add(action_id)
    return duplicates
