"""GET /api/executions/{id}/events/ over real HTTP, from the web app served under ASGI (uvicorn)."""

from __future__ import annotations

import gc
import http.client
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from executions.models import Execution
from protocol import keys
from tests.helpers import agent_run, callbacks, consume, push, run_one, wait_for, work
from tokens.models import ApiToken

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def web() -> Iterator[tuple[str, int]]:
    """The ASGI app on uvicorn in a thread, on a free port: (host, port)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config("aes_project.asgi:application", lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30, what="uvicorn to start")
    yield sock.getsockname()
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
    # The request threads are gone; their database connections close as they are collected.
    gc.collect()


def token(tenant_id: str = "tenant-a", tier: str = "free") -> str:
    return ApiToken.issue(tenant_id, tier)[1]


class Follower:
    """A client of the event stream: reads Server-Sent Events as they come."""

    def __init__(self, address, execution_id, secret: str, **headers: str) -> None:
        self.connection = http.client.HTTPConnection(*address, timeout=30)
        path = f"/api/executions/{execution_id}/events/"
        if "after" in headers:
            path += f"?after={headers.pop('after')}"
        headers = {"Authorization": f"Bearer {secret}", "Accept": "text/event-stream", **headers}
        self.connection.request("GET", path, headers=headers)
        self.response = self.connection.getresponse()
        self.comments: list[str] = []

    def json(self) -> dict[str, Any]:
        return json.loads(self.response.read())

    def events(self) -> Iterator[dict[str, Any]]:
        """Yield each event as {id, event, data}; comment lines are kept in `comments`."""
        fields: dict[str, Any] = {}
        while line := self.response.readline():
            line = line.decode().rstrip("\n")
            if not line:
                if fields:
                    yield {**fields, "data": json.loads(fields["data"])}
                fields = {}
            elif line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(": ")
                fields[name] = int(value) if name == "id" else value

    def all(self) -> list[dict[str, Any]]:
        return list(self.events())

    def close(self) -> None:
        self.connection.close()


def summary(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(e["id"], e["event"]) for e in events]


def test_a_finished_run_is_served_whole_and_the_response_ends_after_done(web, peers, llm):
    execution = run_one(agent_run(agent_id="support-bot"))
    follower = Follower(web, execution.id, token())
    assert follower.response.status == 200
    assert follower.response.getheader("Content-Type").startswith("text/event-stream")
    events = follower.all()
    assert summary(events) == [
        (1, "status"),
        (2, "status"),
        (3, "step"),
        (4, "step"),
        (5, "step"),
        (6, "done"),
    ]
    assert [e["data"]["seq"] for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[3]["data"]["step"]["name"] == "knowledge_search"
    assert events[-1]["data"]["callback"] == callbacks()[0]["data"]


def test_a_client_that_drops_mid_run_gets_exactly_the_rest_with_last_event_id(web, peers, llm):
    llm.latency_seconds = 0.5
    message = agent_run(agent_id="support-bot")
    push(message)
    consume()
    execution = Execution.objects.get()
    secret = token()
    seen: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []

    def follow() -> None:
        first = Follower(web, execution.id, secret)
        for event in first.events():
            seen.append(event)
            if event["event"] == "step":
                break  # the client drops after the run's first step
        first.close()
        again = Follower(web, execution.id, secret, **{"Last-Event-ID": str(seen[-1]["id"])})
        rest.extend(again.all())

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    work()
    follower.join(timeout=60)

    ids = [e["id"] for e in seen + rest]
    assert ids == list(range(1, len(ids) + 1))  # no gap, no repeat
    assert rest[-1]["event"] == "done"
    assert rest[-1]["data"]["callback"]["status"] == "completed"
    # A client that comes back after done is answered at once, with nothing.
    assert Follower(web, execution.id, secret, after=str(ids[-1])).all() == []
    # ?after=N is the same as the header.
    tail = Follower(web, execution.id, secret, after=str(ids[-3])).all()
    assert summary(tail) == summary((seen + rest)[-2:])


def test_another_tenants_run_is_not_found_with_the_stable_error_body(web, peers, llm):
    execution = run_one(agent_run())
    follower = Follower(web, execution.id, token("tenant-b"))
    assert follower.response.status == 404
    assert follower.json()["error"]["code"] == "NOT_FOUND"
    # Nor is an id that does not exist, or is not an id at all.
    for other in (uuid.uuid4(), "not-an-id"):
        follower = Follower(web, other, token())
        assert follower.response.status == 404
        assert follower.json()["error"]["code"] == "NOT_FOUND"


def test_a_bad_last_event_id_is_a_bad_request(web, peers, llm):
    execution = run_one(agent_run())
    for bad in ("soon", "-1", str(2**64)):
        follower = Follower(web, execution.id, token(), **{"Last-Event-ID": bad})
        assert follower.response.status == 400
        assert follower.json()["error"]["details"]["after"]
    assert Follower(web, execution.id, token(), after="1.5").response.status == 400


def test_the_id_may_be_spelled_as_any_uuid(web, peers, llm):
    execution = run_one(agent_run())
    spelled = execution.id.hex.upper()
    assert summary(Follower(web, spelled, token()).all())[-1] == (4, "done")


def test_without_credentials_the_route_answers_401(web):
    connection = http.client.HTTPConnection(*web, timeout=10)
    connection.request("GET", f"/api/executions/{uuid.uuid4()}/events/")
    response = connection.getresponse()
    assert response.status == 401
    assert json.loads(response.read())["error"]["code"] == "NOT_AUTHENTICATED"


def test_a_late_client_after_expiry_gets_the_steps_and_done_from_the_database(
    web, peers, llm, redis
):
    execution = run_one(agent_run(agent_id="support-bot"))
    redis.delete(keys.events(str(execution.id)))

    events = Follower(web, execution.id, token()).all()
    assert summary(events) == [(1, "step"), (2, "step"), (3, "step"), (4, "done")]
    assert [e["data"]["step"]["kind"] for e in events[:3]] == ["llm", "tool", "llm"]
    assert events[-1]["data"]["callback"] == callbacks()[0]["data"]
    # Resuming there: the steps after N, and done whatever N is.
    assert summary(Follower(web, execution.id, token(), after="2").all()) == [
        (3, "step"),
        (4, "done"),
    ]
    assert summary(Follower(web, execution.id, token(), after="9").all()) == [(4, "done")]


def test_a_run_submitted_through_the_api_is_followed_before_the_consumer_records_it(
    web, peers, llm, settings
):
    settings.AES_EVENTS_KEEPALIVE_SECONDS = 0.2
    secret = token()
    connection = http.client.HTTPConnection(*web, timeout=10)
    body = json.dumps({"agent_id": "plain-bot", "message": "Hi"})
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    connection.request("POST", "/api/executions/", body=body, headers=headers)
    accepted = json.loads(connection.getresponse().read())

    follower = Follower(web, accepted["id"], secret)
    assert follower.response.status == 200  # not recorded yet, and not a 404
    stream = follower.events()
    wait_for(lambda: "keep-alive" in follower.response.readline().decode(), timeout=10)
    consume()
    work()
    events = list(stream)
    assert [e["event"] for e in events] == ["status", "status", "step", "done"]
    assert events[0]["id"] == 1
    # Another tenant is not told that the submission exists.
    assert Follower(web, accepted["id"], token("tenant-b")).response.status == 404
