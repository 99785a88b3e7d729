"""Tenant tokens: what a token may see and do, on every route; POST, cancel, metrics."""

from __future__ import annotations

import io
import uuid
from contextlib import redirect_stderr

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from executions.models import Execution
from executions.throttles import PerCallerThrottle
from tests.helpers import agent_run, consume, push, run_one, work
from tokens.models import ApiToken

pytestmark = pytest.mark.django_db


def issue(tenant_id: str, tier: str = "free") -> str:
    out = io.StringIO()
    with redirect_stderr(io.StringIO()):
        call_command("issue_api_token", tenant_id, "--tier", tier, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


@pytest.fixture
def two_tenants(peers, llm):
    """A finished run with a session for tenant-a and one for tenant-b."""
    a = agent_run(session_id="s-a")
    b = agent_run(session_id="s-b")
    b["tenant_id"] = "tenant-b"
    return run_one(a), run_one(b)


def test_issue_api_token_prints_the_token_last_and_stores_only_a_digest():
    token = issue("tenant-a", "advance")
    row = ApiToken.objects.get()
    assert token.startswith(f"aes_{row.prefix}_")
    assert (row.tenant_id, row.tier) == ("tenant-a", "advance")
    assert token not in (row.digest, row.prefix)
    assert ApiToken.find(token) == row


def test_issue_api_token_refuses_an_unknown_tier():
    with pytest.raises(CommandError, match="unknown tier"):
        call_command("issue_api_token", "tenant-a", "--tier", "platinum")


def test_a_token_sees_only_its_tenants_executions(client, two_tenants):
    mine, theirs = two_tenants
    headers = bearer(issue("tenant-a"))

    listed = client.get("/api/executions/", **headers).json()["results"]
    assert [row["id"] for row in listed] == [str(mine.id)]
    filtered = client.get("/api/executions/", {"tenant_id": "tenant-b"}, **headers).json()
    assert filtered["results"] == []

    for route in (
        f"/api/executions/{theirs.id}/",
        f"/api/executions/{theirs.id}/steps/",
        "/api/sessions/s-b/executions/",
    ):
        response = client.get(route, **headers)
        assert response.status_code == 404, route
        assert response.json()["error"]["code"] == "NOT_FOUND"
    response = client.post(f"/api/executions/{theirs.id}/cancel/", **headers)
    assert response.status_code == 404

    assert client.get(f"/api/executions/{mine.id}/", **headers).status_code == 200
    steps = client.get(f"/api/executions/{mine.id}/steps/", **headers).json()
    # The LLM call, and the journal's note that the turn was saved to CS.
    assert [(step["kind"], step["name"]) for step in steps] == [
        ("llm", "llm_call_1"),
        ("note", "messages_saved"),
    ]
    session = client.get("/api/sessions/s-a/executions/", **headers).json()["results"]
    assert [row["id"] for row in session] == [str(mine.id)]


def test_every_route_needs_credentials(client, two_tenants):
    mine, _ = two_tenants
    for method, route in (
        ("get", "/api/executions/"),
        ("post", "/api/executions/"),
        ("get", f"/api/executions/{mine.id}/"),
        ("get", f"/api/executions/{mine.id}/steps/"),
        ("post", f"/api/executions/{mine.id}/cancel/"),
        ("get", "/api/sessions/s-a/executions/"),
        ("get", "/api/metrics/"),
    ):
        response = getattr(client, method)(route)
        assert response.status_code == 401, route


def test_a_revoked_or_forged_token_is_refused(client):
    token = issue("tenant-a")
    ApiToken.objects.get().revoke()
    assert client.get("/api/executions/", **bearer(token)).status_code == 401
    forged = token[:-4] + "AAAA"
    assert client.get("/api/executions/", **bearer(forged)).status_code == 401


def test_post_starts_a_run_that_completes_through_the_queue(client, peers, llm):
    headers = bearer(issue("tenant-a", "advance"))
    response = client.post(
        "/api/executions/",
        {"agent_id": "plain-bot", "message": "from the API", "session_id": "s-api"},
        content_type="application/json",
        **headers,
    )
    assert response.status_code == 202
    body = response.json()
    assert response["Location"] == body["url"]
    consume()
    work()

    polled = client.get(body["url"], **headers).json()
    assert polled["id"] == body["id"]
    assert (polled["tenant_id"], polled["tier"]) == ("tenant-a", "advance")
    assert polled["status"] == "completed"
    assert polled["response"] == "(stand-in) You said: from the API"


def test_post_with_the_same_idempotency_key_runs_once(client, peers, llm):
    headers = {**bearer(issue("tenant-a")), "HTTP_IDEMPOTENCY_KEY": "order-42"}
    run = {"agent_id": "plain-bot", "message": "once"}
    first = client.post("/api/executions/", run, content_type="application/json", **headers)
    second = client.post("/api/executions/", run, content_type="application/json", **headers)
    assert first.json()["id"] == second.json()["id"]
    consume()
    work()
    assert Execution.objects.count() == 1
    assert len(llm.requests) == 1


def test_post_refuses_invalid_runs_with_a_stable_error(client, admin_client):
    headers = bearer(issue("tenant-a"))
    response = client.post(
        "/api/executions/", {"agent_id": "plain-bot"}, content_type="application/json", **headers
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID"
    assert "message" in response.json()["error"]["details"]
    staff = admin_client.post(
        "/api/executions/",
        {"agent_id": "plain-bot", "message": "hi"},
        content_type="application/json",
    )
    assert staff.status_code == 400
    assert "tenant_id" in staff.json()["error"]["details"]


def test_cancel_through_the_api(client, redis):
    headers = bearer(issue("tenant-a"))
    push(agent_run())
    consume()
    execution = Execution.objects.get()
    response = client.post(f"/api/executions/{execution.id}/cancel/", **headers)
    assert response.status_code == 202
    assert response.json() == {"id": str(execution.id), "status": "cancelled"}
    again = client.post(f"/api/executions/{execution.id}/cancel/", **headers)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "ALREADY_FINISHED"


def test_metrics_count_the_callers_runs(client, admin_client, two_tenants):
    mine = client.get("/api/metrics/", **bearer(issue("tenant-a"))).json()
    assert mine["runs"] == 1
    assert mine["by_status"] == {"completed": 1}
    assert mine["by_tier"]["free"]["runs"] == 1
    assert mine["tokens"]["total_tokens"] == two_tenants[0].total_tokens
    assert mine["duration_ms"]["p50"] is not None
    assert "queues" not in mine

    everyone = admin_client.get("/api/metrics/").json()
    assert everyone["runs"] == 2
    assert everyone["queues"]["free"] == {"messages": 0, "jobs": 0}


def test_prometheus_metrics_expose_runs_durations_queues_and_workers(client, two_tenants):
    text = client.get("/metrics").content.decode()
    assert 'aes_runs_total{status="completed",tier="free"} 2.0' in text
    assert 'aes_run_duration_seconds_count{tier="free"} 2.0' in text
    assert 'aes_queue_messages{tier="enterprise"} 0.0' in text
    assert "aes_rq_workers " in text
    assert 'aes_tokens_total{kind="prompt",tier="free"}' in text


def test_each_token_is_throttled_on_its_own(client, monkeypatch):
    monkeypatch.setattr(PerCallerThrottle, "rate", "3/min", raising=False)
    first, second = bearer(issue("tenant-a")), bearer(issue("tenant-b"))
    codes = [client.get("/api/executions/", **first).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert client.get("/api/executions/", **first).json()["error"]["code"] == "THROTTLED"
    assert client.get("/api/executions/", **second).status_code == 200


def test_an_unknown_execution_id_and_a_malformed_one_are_both_not_found(client):
    headers = bearer(issue("tenant-a"))
    assert client.get(f"/api/executions/{uuid.uuid4()}/", **headers).status_code == 404
    assert client.get("/api/executions/nope/", **headers).status_code == 404
