"""Hostile input to the REST API: a 4xx with the stable error body, never a 500.

An API tenant is untrusted: whatever it sends (a tampered cursor, a NUL that
PostgreSQL cannot store, a body nested beyond reason), the answer is a 4xx
with {"error": {"code", "message", "details"}} and nothing of the server's
inside (no SQL, no traceback).
"""

from __future__ import annotations

import base64
import json
from urllib.parse import urlencode

import pytest

from executions.parsers import MAX_BODY_DEPTH
from tests.helpers import make_execution
from tokens.models import ApiToken

pytestmark = pytest.mark.django_db

LIST_URL = "/api/executions/"

# Words that would betray the server's insides in an error body.
LEAKS = ("Traceback", "SELECT", "psycopg", "PostgreSQL", "0x00", 'File "', "django.", "Error:")


@pytest.fixture
def tenant(client):
    """A client that speaks for tenant "acme" with a Bearer token."""
    _, token = ApiToken.issue("acme", "free")
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def assert_refused(response, status: int = 400, code: str | None = None) -> dict:
    """Assert `response` is a `status` with the stable error body; return the error."""
    assert response.status_code == status, response.content[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["code"], str) and error["code"].isupper()
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    text = response.content.decode()
    for leak in LEAKS:
        assert leak not in text, leak
    return error


def cursor(**tokens: str) -> str:
    """Return a cursor as DRF encodes one: o(ffset), r(everse), p(osition)."""
    return base64.b64encode(urlencode(tokens).encode()).decode()


# --- Pagination cursors ----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("p=x", id="not-base64"),  # ?cursor=p%3Dx
        pytest.param(cursor(p="x"), id="position-no-time"),
        pytest.param(cursor(p="2024-13-45T99:00:00Z"), id="position-impossible-time"),
        pytest.param(cursor(p="99999-01-01T00:00:00Z"), id="position-year-99999"),
        pytest.param(cursor(p="0001-01-01T00:00:00+01:00"), id="position-before-year-1-in-utc"),
        pytest.param(cursor(p="\x00"), id="position-nul"),
        pytest.param(cursor(o="-1"), id="offset-negative"),
        pytest.param(cursor(o="x"), id="offset-no-number"),
        pytest.param(cursor(r="x"), id="reverse-no-number"),
        pytest.param(cursor(r="9" * 5000), id="reverse-5000-digits"),
        pytest.param("\u00e9t\u00e9", id="not-ascii"),
    ],
)
def test_a_tampered_cursor_is_a_400(tenant, value):
    make_execution(tenant_id="acme")
    response = tenant.get(LIST_URL, {"cursor": value})
    assert_refused(response, 400, "INVALID_CURSOR")


def test_a_tampered_cursor_on_a_session_is_a_400(tenant):
    make_execution(tenant_id="acme", session_id="s-1")
    response = tenant.get("/api/sessions/s-1/executions/", {"cursor": cursor(p="yesterday")})
    assert_refused(response, 400, "INVALID_CURSOR")


def test_a_tampered_cursor_with_another_ordering_is_a_400(tenant):
    make_execution(tenant_id="acme")
    response = tenant.get(LIST_URL, {"ordering": "finished_at", "cursor": cursor(p="x")})
    assert_refused(response, 400, "INVALID_CURSOR")


def test_the_cursors_the_api_hands_out_still_work(tenant):
    for _ in range(3):
        make_execution(tenant_id="acme")
    first = tenant.get(LIST_URL, {"page_size": 1}).json()
    second = tenant.get(first["next"]).json()
    assert len(second["results"]) == 1
    assert second["results"][0]["id"] != first["results"][0]["id"]
    back = tenant.get(second["previous"]).json()
    assert [row["id"] for row in back["results"]] == [first["results"][0]["id"]]


def test_a_cursor_position_with_an_offset_is_read_in_utc(tenant):
    make_execution(tenant_id="acme")
    response = tenant.get(LIST_URL, {"cursor": cursor(p="2999-01-01T00:00:00+23:59")})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


# --- NUL and other characters PostgreSQL text cannot hold ---------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/sessions/%00/executions/",
        "/api/sessions/a%00b/executions/",
        "/api/executions/%00/",
        "/api/executions/%00/steps/",
        f"{LIST_URL}?tenant_id=%00",
        f"{LIST_URL}?session_id=x%00",
        f"{LIST_URL}?agent_id=%00",
        f"{LIST_URL}?task_id=%00",
        f"{LIST_URL}?status=%00",
        f"{LIST_URL}?tier=%00",
        f"{LIST_URL}?created_after=%00",
        f"{LIST_URL}?ordering=%00",
        f"{LIST_URL}?%00=1",
    ],
)
def test_a_nul_in_the_path_or_query_is_a_400(tenant, url):
    assert_refused(tenant.get(url), 400, "INVALID_REQUEST")


def test_a_nul_is_refused_before_authentication(client):
    assert_refused(client.get("/api/sessions/%00/executions/"), 400, "INVALID_REQUEST")


def test_a_nul_is_refused_for_staff_too(admin_client):
    assert_refused(admin_client.get(f"{LIST_URL}?tenant_id=%00"), 400, "INVALID_REQUEST")


def test_a_nul_in_a_bearer_token_is_a_400(client):
    response = client.get(LIST_URL, HTTP_AUTHORIZATION="Bearer aes_\x00_x")
    assert_refused(response, 400, "INVALID_REQUEST")


def test_a_nul_in_basic_credentials_is_a_400(client):
    credentials = base64.b64encode(b"admin\x00:password").decode()
    response = client.get(LIST_URL, HTTP_AUTHORIZATION=f"Basic {credentials}")
    assert_refused(response, 400, "INVALID_REQUEST")


def test_a_nul_in_the_session_cookie_is_a_400(client):
    response = client.get("/admin/", HTTP_COOKIE="sessionid=abcdefgh\x00ijklmnop")
    assert_refused(response, 400, "INVALID_REQUEST")


def test_a_query_with_too_many_fields_is_a_json_400(tenant):
    response = tenant.get(LIST_URL + "?" + "&".join(["tier=free"] * 1001))
    assert_refused(response, 400, "INVALID_REQUEST")


def test_a_nul_in_the_idempotency_key_is_a_400(tenant):
    response = tenant.post(
        LIST_URL,
        {"agent_id": "support-bot", "message": "hi"},
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY="key\x00",
    )
    assert_refused(response, 400, "INVALID_REQUEST")


# --- JSON bodies ----------------------------------------------------------------------


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_a_deeply_nested_body_is_a_400(tenant, opening):
    body = opening * 100_000
    response = tenant.post(LIST_URL, body, content_type="application/json")
    error = assert_refused(response, 400, "PARSE_ERROR")
    assert "nested" in error["message"]


def test_a_body_nested_beyond_the_parsers_bound_is_a_400(tenant):
    nested: dict = {}
    for _ in range(MAX_BODY_DEPTH):  # with the body itself: one level too many
        nested = {"a": nested}
    body = {"agent_id": "support-bot", "message": "hi", "metadata": nested}
    response = tenant.post(LIST_URL, json.dumps(body), content_type="application/json")
    error = assert_refused(response, 400, "PARSE_ERROR")
    assert f"deeper than {MAX_BODY_DEPTH} levels" in error["message"]


def test_a_body_nested_as_deep_as_a_message_may_is_accepted(tenant):
    nested: dict = {}
    for _ in range(30):  # with the body itself and metadata: 32 levels
        nested = {"a": nested}
    body = {"agent_id": "support-bot", "message": "hi", "metadata": nested}
    response = tenant.post(LIST_URL, json.dumps(body), content_type="application/json")
    assert response.status_code == 202, response.content


def test_a_body_over_the_upload_bound_is_a_413_unread(tenant, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = settings.AES_MAX_MESSAGE_BYTES = 4096
    # Small once parsed: only the bytes read count.
    body = '{"agent_id": "support-bot", "message": "hi"' + " " * 5000 + "}"
    response = tenant.post(LIST_URL, body, content_type="application/json")
    assert_refused(response, 413, "MESSAGE_TOO_LARGE")


@pytest.mark.parametrize("charset", ["rot13", "zlib"])
def test_a_charset_that_is_no_text_encoding_is_a_400(tenant, charset):
    body = b'{"agent_id": "support-bot", "message": "hi"}'
    response = tenant.generic(
        "POST", LIST_URL, body, content_type=f"application/json; charset={charset}"
    )
    assert_refused(response, 400, "PARSE_ERROR")


# --- Values out of range (4xx before these changes too: kept as guards) ---------------


@pytest.mark.parametrize(
    "query",
    [
        {"created_after": "99999-01-01T00:00:00Z"},
        {"created_after": "2024-02-30T00:00:00Z"},
        {"created_before": "0001-01-01T00:00:00+23:59"},
        {"created_before": "9999-12-31T23:59:59-23:59"},
        {"created_after": "9" * 5000},
        {"status": "x" * 10_000},
    ],
)
def test_an_absurd_filter_is_a_400(tenant, query):
    assert_refused(tenant.get(LIST_URL, query), 400, "INVALID")


@pytest.mark.parametrize("page_size", ["-1", "0", "1e9", "9" * 5000, "99999999999999999999"])
def test_an_absurd_page_size_falls_back_to_a_valid_one(tenant, page_size):
    make_execution(tenant_id="acme")
    response = tenant.get(LIST_URL, {"page_size": page_size})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


def test_an_offset_far_from_utc_in_a_filter_is_read_in_utc(tenant):
    make_execution(tenant_id="acme")
    response = tenant.get(LIST_URL, {"created_after": "2000-01-01T00:00:00+23:59"})
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


@pytest.mark.parametrize(
    "field",
    [
        '"max_iterations": 1' + "0" * 40,
        '"timeout": 1' + "0" * 40,
        '"timeout": -1' + "0" * 40,
        '"timeout": 1e999',
        '"max_iterations": 1.5',
        '"max_iterations": 1' + "0" * 5000,
        '"user_info": {"a": 1e999}',
        '"agent_id": "a\\u0000"',
        '"message": "\\ud800"',
    ],
)
def test_an_absurd_run_request_is_not_a_server_error(tenant, field):
    body = '{"agent_id": "support-bot", "message": "hi", ' + field + "}"
    response = tenant.post(LIST_URL, body, content_type="application/json")
    assert response.status_code < 500, response.content
    if response.status_code != 202:
        assert_refused(response, response.status_code)
