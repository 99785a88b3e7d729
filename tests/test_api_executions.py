"""The REST API over executions, the health check, and the executions admin."""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from executions.models import Execution, Status
from tests.helpers import make_execution
from tiers.models import Tier

pytestmark = pytest.mark.django_db

LIST_URL = "/api/executions/"


def detail_url(execution: Execution | str) -> str:
    return f"/api/executions/{getattr(execution, 'pk', execution)}/"


def basic_auth(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def ids(response) -> list[str]:
    return [row["id"] for row in response.json()["results"]]


# --- Access --------------------------------------------------------------------


def test_anonymous_caller_is_refused_with_a_stable_error(client):
    make_execution()
    response = client.get(LIST_URL)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "NOT_AUTHENTICATED"
    assert "results" not in response.json()


def test_anonymous_caller_cannot_read_one_execution(client):
    execution = make_execution(message="customer secret")
    response = client.get(detail_url(execution))
    assert response.status_code in (401, 403)
    assert "customer secret" not in response.content.decode()


def test_logged_in_non_staff_user_is_forbidden(client, django_user_model):
    user = django_user_model.objects.create_user("tenant-user", password="pw")
    client.force_login(user)
    response = client.get(LIST_URL)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "PERMISSION_DENIED"


def test_staff_user_reads_the_list(admin_client):
    execution = make_execution()
    response = admin_client.get(LIST_URL)
    assert response.status_code == 200
    assert ids(response) == [str(execution.pk)]


def test_basic_auth_with_a_staff_login_reads_the_list(client, django_user_model):
    django_user_model.objects.create_user("operator", password="s3cret", is_staff=True)
    execution = make_execution()
    response = client.get(LIST_URL, HTTP_AUTHORIZATION=basic_auth("operator", "s3cret"))
    assert response.status_code == 200
    assert ids(response) == [str(execution.pk)]


def test_basic_auth_with_a_wrong_password_is_refused(client, django_user_model):
    django_user_model.objects.create_user("operator", password="s3cret", is_staff=True)
    response = client.get(LIST_URL, HTTP_AUTHORIZATION=basic_auth("operator", "wrong"))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AUTHENTICATION_FAILED"


def test_basic_auth_of_a_non_staff_user_is_forbidden(client, django_user_model):
    django_user_model.objects.create_user("tenant-user", password="pw")
    response = client.get(LIST_URL, HTTP_AUTHORIZATION=basic_auth("tenant-user", "pw"))
    assert response.status_code == 403


def test_executions_cannot_be_edited_or_deleted(admin_client):
    execution = make_execution()
    assert (
        admin_client.put(detail_url(execution), {}, content_type="application/json").status_code
        == 405
    )
    assert admin_client.delete(detail_url(execution)).status_code == 405
    assert (
        admin_client.patch(
            detail_url(execution), {"status": "completed"}, content_type="application/json"
        ).status_code
        == 405
    )
    assert Execution.objects.get(pk=execution.pk).status == Status.QUEUED


# --- List: order and pagination ------------------------------------------------


def test_list_is_newest_first_by_queued_at(admin_client):
    now = timezone.now()
    middle = make_execution(queued_at=now - timedelta(hours=1))
    newest = make_execution(queued_at=now)
    oldest = make_execution(queued_at=now - timedelta(hours=2))

    response = admin_client.get(LIST_URL)

    assert ids(response) == [str(newest.pk), str(middle.pk), str(oldest.pk)]


def test_list_rows_carry_usage_and_error_but_not_steps(admin_client):
    execution = make_execution()
    execution.add_step("llm", "chat")
    response = admin_client.get(LIST_URL)
    row = response.json()["results"][0]
    assert row["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost_usd": None,
    }
    assert row["error"] is None
    assert "steps" not in row


def _bulk(count: int, *, same_time: bool = False) -> list[Execution]:
    now = timezone.now()
    rows = [
        Execution(
            action_id=f"bulk-{i}",
            task_id=f"task-{i}",
            tenant_id="tenant-a",
            tier="free",
            agent_id="plain-bot",
            message=f"message {i}",
            request={},
            status=Status.COMPLETED,
            queued_at=now if same_time else now - timedelta(seconds=i),
        )
        for i in range(count)
    ]
    return Execution.objects.bulk_create(rows)


def _all_pages(client, url: str) -> list[list[str]]:
    pages = []
    while url:
        response = client.get(url)
        assert response.status_code == 200
        pages.append(ids(response))
        url = response.json()["next"]
        assert len(pages) < 10
    return pages


def test_list_pages_by_fifty_and_next_leads_to_the_rest(admin_client):
    rows = _bulk(55)
    newest_first = [str(row.pk) for row in rows]  # row i was queued i seconds ago

    first = admin_client.get(LIST_URL).json()
    assert len(first["results"]) == 50
    assert first["next"]
    assert first["previous"] is None
    assert [row["id"] for row in first["results"]] == newest_first[:50]

    second = admin_client.get(first["next"]).json()
    assert [row["id"] for row in second["results"]] == newest_first[50:]
    assert second["next"] is None
    assert second["previous"]


def test_pages_neither_skip_nor_repeat_rows_queued_at_the_same_instant(admin_client):
    rows = _bulk(55, same_time=True)
    pages = _all_pages(admin_client, LIST_URL)
    assert [len(page) for page in pages] == [50, 5]
    seen = [pk for page in pages for pk in page]
    assert sorted(seen) == sorted(str(row.pk) for row in rows)


def test_a_run_arriving_meanwhile_does_not_shift_the_next_page(admin_client):
    rows = _bulk(55)
    first = admin_client.get(LIST_URL).json()
    make_execution(queued_at=timezone.now() + timedelta(minutes=1))  # newer than all

    second = admin_client.get(first["next"]).json()

    assert [row["id"] for row in second["results"]] == [str(row.pk) for row in rows[50:]]


# --- List: filters ---------------------------------------------------------------


@pytest.fixture
def varied() -> dict[str, Execution]:
    """Two executions differing in every filterable field, plus one with no session."""
    now = timezone.now()
    return {
        "a": make_execution(
            tenant_id="tenant-a",
            session_id="session-a",
            agent_id="agent-a",
            status=Status.COMPLETED,
            tier="free",
            task_id="task-a",
            queued_at=now - timedelta(seconds=2),
        ),
        "b": make_execution(
            tenant_id="tenant-b",
            session_id="session-b",
            agent_id="agent-b",
            status=Status.FAILED,
            tier="enterprise",
            task_id="task-b",
            queued_at=now - timedelta(seconds=1),
        ),
        "c": make_execution(
            tenant_id="tenant-c",
            session_id=None,
            agent_id="agent-c",
            status=Status.RUNNING,
            tier="professional",
            task_id="task-c",
            queued_at=now,
        ),
    }


@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        ("tenant_id", "tenant-b", ["b"]),
        ("session_id", "session-a", ["a"]),
        ("agent_id", "agent-c", ["c"]),
        ("status", "failed", ["b"]),
        ("status", "running", ["c"]),
        ("tier", "enterprise", ["b"]),
        ("tier", "free", ["a"]),
        ("task_id", "task-a", ["a"]),
        ("tenant_id", "tenant-z", []),
    ],
)
def test_filter_narrows_the_list(admin_client, varied, param, value, expected):
    response = admin_client.get(LIST_URL, {param: value})
    assert response.status_code == 200
    assert ids(response) == [str(varied[key].pk) for key in expected]


def test_filters_combine(admin_client, varied):
    response = admin_client.get(LIST_URL, {"tenant_id": "tenant-a", "status": "completed"})
    assert ids(response) == [str(varied["a"].pk)]
    response = admin_client.get(LIST_URL, {"tenant_id": "tenant-a", "status": "failed"})
    assert ids(response) == []


def test_filter_matches_exactly_not_by_prefix(admin_client, varied):
    response = admin_client.get(LIST_URL, {"tenant_id": "tenant"})
    assert ids(response) == []


def test_an_unknown_status_filter_is_a_bad_request(admin_client, varied):
    response = admin_client.get(LIST_URL, {"status": "exploded"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID"
    assert "status" in response.json()["error"]["details"]


def test_no_filter_lists_everything_newest_first(admin_client, varied):
    response = admin_client.get(LIST_URL)
    assert ids(response) == [str(varied[key].pk) for key in ("c", "b", "a")]


# --- Detail -------------------------------------------------------------------------


def test_detail_shows_steps_in_order_with_limits_and_usage(admin_client):
    now = timezone.now()
    limits = Tier.objects.get(name="free").limits()
    execution = make_execution(
        session_id="s-1",
        status=Status.COMPLETED,
        limits=limits,
        response="Refunds take 5 days.",
        iterations=2,
        prompt_tokens=32,
        completion_tokens=10,
        total_tokens=42,
        queued_at=now - timedelta(seconds=3),
        started_at=now - timedelta(seconds=2),
        finished_at=now,
        duration_ms=2000,
    )
    execution.add_step("llm", "chat", prompt_tokens=12, completion_tokens=3, duration_ms=40)
    execution.add_step("tool", "search_docs", input={"q": "refunds"}, output={"hits": 2})
    execution.add_step("llm", "chat-final", prompt_tokens=20, completion_tokens=7)

    response = admin_client.get(detail_url(execution))

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(execution.pk)
    assert body["status"] == "completed"
    assert body["response"] == "Refunds take 5 days."
    assert body["iterations"] == 2
    assert body["usage"] == {
        "prompt_tokens": 32,
        "completion_tokens": 10,
        "total_tokens": 42,
        "cost_usd": None,
    }
    assert body["error"] is None
    assert body["limits"] == limits
    assert body["limits"]["max_iterations"] == 3
    assert [(s["kind"], s["name"]) for s in body["steps"]] == [
        ("llm", "chat"),
        ("tool", "search_docs"),
        ("llm", "chat-final"),
    ]
    tool_step = body["steps"][1]
    assert tool_step["input"] == {"q": "refunds"}
    assert tool_step["output"] == {"hits": 2}
    assert body["steps"][0]["prompt_tokens"] == 12
    assert body["started_at"] and body["finished_at"]
    assert body["duration_ms"] == 2000


def test_detail_of_a_failed_run_shows_its_error(admin_client):
    execution = make_execution(
        status=Status.FAILED, error_code="LLM_ERROR", error_message="upstream returned 500"
    )
    execution.add_step("llm", "chat", error="upstream returned 500")

    body = admin_client.get(detail_url(execution)).json()

    assert body["status"] == "failed"
    assert body["error"] == {"code": "LLM_ERROR", "message": "upstream returned 500"}
    assert body["steps"][0]["error"] == "upstream returned 500"


def test_detail_of_a_queued_run_has_no_limits_steps_or_error(admin_client):
    execution = make_execution()
    body = admin_client.get(detail_url(execution)).json()
    assert body["status"] == "queued"
    assert body["limits"] is None
    assert body["steps"] == []
    assert body["error"] is None
    assert body["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost_usd": None,
    }


def test_detail_of_an_unknown_id_is_not_found(admin_client):
    make_execution()
    response = admin_client.get(detail_url(uuid.uuid4()))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


def test_detail_of_a_malformed_id_is_not_found(admin_client):
    response = admin_client.get(detail_url("not-a-uuid"))
    assert response.status_code == 404


# --- Health ------------------------------------------------------------------------------


def test_ready_reports_database_and_redis_ok(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_health_answers_while_the_process_serves(client):
    assert client.get("/health").json() == {"status": "ok"}


# --- Admin ---------------------------------------------------------------------------------


def test_execution_changelist_renders_for_staff(admin_client):
    execution = make_execution(tenant_id="tenant-visible")
    response = admin_client.get(reverse("admin:executions_execution_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    assert str(execution.pk) in html
    assert "tenant-visible" in html


def test_execution_change_page_shows_its_steps_inline(admin_client):
    execution = make_execution()
    execution.add_step("llm", "first-llm-call")
    execution.add_step("tool", "lookup_order_status")
    response = admin_client.get(reverse("admin:executions_execution_change", args=[execution.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "first-llm-call" in html
    assert "lookup_order_status" in html


def test_execution_admin_offers_no_add(admin_client):
    response = admin_client.get(reverse("admin:executions_execution_add"))
    assert response.status_code == 403


def test_execution_admin_change_page_is_read_only(admin_client):
    execution = make_execution(message="original")
    url = reverse("admin:executions_execution_change", args=[execution.pk])
    response = admin_client.post(url, {"message": "tampered", "status": "completed"})
    assert response.status_code == 403
    execution.refresh_from_db()
    assert (execution.message, execution.status) == ("original", Status.QUEUED)


def test_execution_admin_offers_no_delete(admin_client):
    execution = make_execution()
    url = reverse("admin:executions_execution_delete", args=[execution.pk])
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert Execution.objects.filter(pk=execution.pk).exists()


def test_execution_admin_is_closed_to_anonymous_visitors(client):
    response = client.get(reverse("admin:executions_execution_changelist"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
