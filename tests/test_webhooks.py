"""Webhooks: a run's callback POSTed, signed, to the URL its caller gave; retried; every try kept.

The receiver is a real HTTP server in a thread on 127.0.0.1, and every
delivery is checked with the standardwebhooks package, as a receiver would.
"""

from __future__ import annotations

import io
import threading
from contextlib import redirect_stderr
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.management import call_command
from standardwebhooks import Webhook as Verifier
from standardwebhooks import WebhookVerificationError

from aes_project import redis_clients
from executions.models import Execution
from protocol import keys
from tests.helpers import (
    agent_run,
    callbacks,
    consume,
    dead_letters,
    end,
    push,
    start_service,
    wait_for,
    work,
)
from webhooks.models import SigningSecret, Webhook
from webhooks.sender import Sender

pytestmark = pytest.mark.django_db

RUNS = "/api/executions/"


class Receiver:
    """A webhook receiver: records every request, answers with the statuses it is given."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/aes"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, status: int, **headers: str) -> None:
        self.answers.append((status, headers))

    def verified(self, request: dict[str, Any], secret: str) -> dict[str, Any]:
        """Return the payload of `request` once its signature checks out with `secret`."""
        return Verifier(secret).verify(request["body"], request["headers"])


@pytest.fixture
def receiver(settings):
    settings.AES_WEBHOOK_ALLOWED_HOSTS = "127.0.0.1:*"
    server = Receiver()
    server._thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def issue(tenant_id: str) -> dict[str, str]:
    out = io.StringIO()
    with redirect_stderr(io.StringIO()):
        call_command("issue_api_token", tenant_id, stdout=out)
    return {"HTTP_AUTHORIZATION": f"Bearer {out.getvalue().split()[-1]}"}


def webhook_secret(tenant_id: str, *args: str) -> str:
    """Return what `manage.py webhook_secret` prints as its last line."""
    out = io.StringIO()
    with redirect_stderr(io.StringIO()):
        call_command("webhook_secret", tenant_id, *args, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def start_run(client, headers, webhook_url: str, **fields: Any) -> dict[str, Any]:
    body = {"agent_id": "plain-bot", "message": "Hello", "webhook_url": webhook_url, **fields}
    response = client.post(RUNS, body, content_type="application/json", **headers)
    assert response.status_code == 202, response.content
    consume()
    work()
    return response.json()


def send_due() -> int:
    """Attempt every webhook due now, as the service's sender does."""
    return Sender(threading.Event()).drain()


# --- Delivery ---------------------------------------------------------------------


def test_a_run_with_a_webhook_url_posts_its_callback_signed(client, peers, llm, receiver):
    headers = issue("tenant-a")
    started = start_run(client, headers, receiver.url, callback_queue="callbacks:tenant-a:inbox")
    assert send_due() == 1

    [request] = receiver.requests
    assert request["path"] == "/hooks/aes"
    assert request["headers"]["content-type"] == "application/json"
    payload = receiver.verified(request, webhook_secret("tenant-a"))
    # The same envelope the Redis callback carries, and its event_id as webhook-id.
    [pushed] = callbacks("callbacks:tenant-a:inbox")
    assert payload == pushed
    assert request["headers"]["webhook-id"] == pushed["event_id"]
    assert payload["data"]["execution_id"] == started["id"]
    assert payload["data"]["status"] == "completed"
    assert payload["data"]["response"] == "(stand-in) You said: Hello"

    [shown] = client.get(f"{RUNS}{started['id']}/webhooks/", **headers).json()
    assert (shown["url"], shown["webhook_id"], shown["status"]) == (
        receiver.url,
        pushed["event_id"],
        "delivered",
    )
    [attempt] = shown["attempts"]
    assert (attempt["outcome"], attempt["status_code"], attempt["error"]) == (
        "delivered",
        200,
        None,
    )
    assert attempt["started_at"] and attempt["duration_ms"] >= 0
    assert send_due() == 0  # delivered once, not again


def test_a_receiver_that_fails_once_gets_the_same_webhook_id_again(
    client, peers, llm, receiver, settings
):
    settings.AES_WEBHOOK_RETRY_SECONDS = [0.2, 0.2]
    headers = issue("tenant-a")
    receiver.answer(503)
    started = start_run(client, headers, receiver.url)
    secret = webhook_secret("tenant-a")

    assert send_due() == 1
    assert len(receiver.requests) == 1
    assert send_due() == 0  # not before its retry is due
    wait_for(send_due, timeout=10, what="the retry to fall due")

    first, second = receiver.requests
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert receiver.verified(first, secret) == receiver.verified(second, secret)
    [shown] = client.get(f"{RUNS}{started['id']}/webhooks/", **headers).json()
    assert shown["status"] == "delivered"
    assert [(a["outcome"], a["status_code"]) for a in shown["attempts"]] == [
        ("http_error", 503),
        ("delivered", 200),
    ]
    assert shown["attempts"][0]["error"] == "answered HTTP 503"


def test_a_receiver_that_never_answers_2xx_is_given_up_after_the_schedule(
    client, peers, llm, receiver, settings
):
    settings.AES_WEBHOOK_RETRY_SECONDS = [0.1]
    for _ in range(3):
        receiver.answer(500)
    started = start_run(client, issue("tenant-a"), receiver.url)
    send_due()
    wait_for(send_due, timeout=10, what="the one retry")
    webhook = Webhook.objects.get(execution_id=started["id"])
    assert webhook.status == "failed"
    assert webhook.next_attempt_at is None
    assert webhook.attempts.count() == 2
    assert send_due() == 0

    metrics = client.get("/metrics").content.decode()
    assert 'aes_webhook_attempts_total{outcome="http_error"} 2.0' in metrics
    assert "aes_webhooks_given_up_total 1.0" in metrics


def test_an_unreachable_receiver_is_recorded_as_no_answer(client, peers, llm, receiver):
    receiver.server.shutdown()
    receiver.server.server_close()  # nothing listens on its port any more
    started = start_run(client, issue("tenant-a"), receiver.url)
    send_due()
    [attempt] = Webhook.objects.get(execution_id=started["id"]).attempts.all()
    assert attempt.outcome == "no_answer"
    assert attempt.status_code is None
    assert attempt.error


def test_a_run_without_a_webhook_url_has_none(client, peers, llm, receiver):
    headers = issue("tenant-a")
    response = client.post(
        RUNS, {"agent_id": "plain-bot", "message": "Hi"}, content_type="application/json", **headers
    )
    consume()
    work()
    assert client.get(f"{RUNS}{response.json()['id']}/webhooks/", **headers).json() == []
    assert send_due() == 0
    assert receiver.requests == []


def test_a_run_rejected_before_it_started_still_calls_its_webhook(client, peers, llm, receiver):
    headers = issue("tenant-a")
    started = start_run(client, headers, receiver.url, agent_id="no-such-agent")
    send_due()
    payload = receiver.verified(receiver.requests[0], webhook_secret("tenant-a"))
    assert payload["data"]["execution_id"] == started["id"]
    assert payload["data"]["status"] == "rejected"
    assert payload["data"]["error"]["code"] == "AGENT_NOT_FOUND"


# --- Hosts --------------------------------------------------------------------------


def test_a_refused_webhook_host_is_a_400_and_is_never_contacted(client, receiver, settings):
    settings.AES_WEBHOOK_ALLOWED_HOSTS = "*"  # public hosts only: not 127.0.0.1
    response = client.post(
        RUNS,
        {"agent_id": "plain-bot", "message": "Hi", "webhook_url": receiver.url},
        content_type="application/json",
        **issue("tenant-a"),
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID"
    assert list(error["details"]) == ["webhook_url"]
    assert "non-public" in error["message"]
    assert redis_clients.shared().llen(keys.actions("free")) == 0  # nothing was queued
    for url in ("ftp://127.0.0.1/x", "http://169.254.169.254/latest", "not a url"):
        response = client.post(
            RUNS,
            {"agent_id": "plain-bot", "message": "Hi", "webhook_url": url},
            content_type="application/json",
            **issue("tenant-a"),
        )
        assert response.status_code == 400, url
        assert list(response.json()["error"]["details"]) == ["webhook_url"]
    assert Execution.objects.count() == 0
    assert receiver.requests == []


def test_a_refused_webhook_host_over_redis_is_dead_lettered(peers, llm, receiver, settings):
    settings.AES_WEBHOOK_ALLOWED_HOSTS = "hooks.example.com"
    push(agent_run(webhook_url=receiver.url))
    consume()
    [letter] = dead_letters()
    assert letter["error"]["code"] == "INVALID_ACTION"
    assert letter["error"]["message"].startswith("data.webhook_url: ")
    assert callbacks()[0]["data"]["status"] == "rejected"
    assert Execution.objects.count() == 0
    assert receiver.requests == []


def test_a_redirect_to_a_refused_host_is_not_followed(client, peers, llm, receiver):
    # The pattern allows 127.0.0.1 by that name only: "localhost" is another host.
    receiver.answer(307, location=f"http://localhost:{receiver.port}/elsewhere")
    started = start_run(client, issue("tenant-a"), receiver.url)
    send_due()
    assert [r["path"] for r in receiver.requests] == ["/hooks/aes"]
    [attempt] = Webhook.objects.get(execution_id=started["id"]).attempts.all()
    assert attempt.outcome == "refused"
    assert "not allowed" in attempt.error


def test_a_method_keeping_redirect_to_an_allowed_host_is_followed(client, peers, llm, receiver):
    receiver.answer(308, location="/moved")
    started = start_run(client, issue("tenant-a"), receiver.url)
    send_due()
    first, second = receiver.requests
    assert second["path"] == "/moved"
    assert second["body"] == first["body"]
    receiver.verified(second, webhook_secret("tenant-a"))
    assert Webhook.objects.get(execution_id=started["id"]).status == "delivered"


def test_a_redirect_that_would_drop_the_body_counts_as_a_failed_attempt(
    client, peers, llm, receiver
):
    receiver.answer(302, location="/moved")
    started = start_run(client, issue("tenant-a"), receiver.url)
    send_due()
    assert [r["path"] for r in receiver.requests] == ["/hooks/aes"]
    webhook = Webhook.objects.get(execution_id=started["id"])
    assert (webhook.status, webhook.attempts.get().status_code) == ("pending", 302)


# --- Who sees what ------------------------------------------------------------------


def test_another_tenant_cannot_see_the_attempts(client, peers, llm, receiver, admin_client):
    started = start_run(client, issue("tenant-a"), receiver.url)
    send_due()
    url = f"{RUNS}{started['id']}/webhooks/"
    response = client.get(url, **issue("tenant-b"))
    assert response.status_code == 404
    assert receiver.url not in response.content.decode()
    assert client.get(url).status_code == 401
    assert len(admin_client.get(url).json()[0]["attempts"]) == 1  # staff see every tenant's


def test_staff_send_a_webhook_again_from_the_admin(client, peers, llm, receiver, admin_client):
    started = start_run(client, issue("tenant-a"), receiver.url)
    send_due()
    webhook = Webhook.objects.get(execution_id=started["id"])
    changelist = "/admin/webhooks/webhook/"
    response = admin_client.post(
        changelist, {"action": "send_again", "_selected_action": [webhook.pk]}, follow=True
    )
    assert response.status_code == 200
    assert send_due() == 1

    first, again = receiver.requests
    assert again["headers"]["webhook-id"] == first["headers"]["webhook-id"]
    secret = webhook_secret("tenant-a")
    assert receiver.verified(again, secret) == receiver.verified(first, secret)
    assert webhook.attempts.count() == 2
    page = admin_client.get(f"{changelist}{webhook.pk}/change/").content.decode()
    assert receiver.url in page and "delivered" in page
    secrets_page = admin_client.get("/admin/webhooks/signingsecret/").content.decode()
    assert secret in secrets_page


def test_a_tenant_cannot_resend(client, peers, llm, receiver):
    headers = issue("tenant-a")
    started = start_run(client, headers, receiver.url)
    send_due()
    response = client.post(f"{RUNS}{started['id']}/webhooks/", **headers)
    assert response.status_code == 405
    assert client.post("/admin/webhooks/webhook/", **headers).status_code == 302  # to login


# --- Secrets ------------------------------------------------------------------------


def test_webhook_secret_prints_one_secret_per_tenant_creating_it_once():
    first = webhook_secret("tenant-a")
    assert first.startswith("whsec_")
    assert webhook_secret("tenant-a") == first
    assert webhook_secret("tenant-b") != first
    assert SigningSecret.objects.filter(tenant_id="tenant-a").count() == 1


def test_a_rotated_secret_signs_beside_the_new_one_for_the_overlap(client, peers, llm, receiver):
    old = webhook_secret("tenant-a")
    new = webhook_secret("tenant-a", "--rotate")
    assert new != old and new.startswith("whsec_")
    assert webhook_secret("tenant-a") == new
    start_run(client, issue("tenant-a"), receiver.url)
    send_due()
    [request] = receiver.requests
    # Receivers on either secret accept it during the overlap.
    assert receiver.verified(request, new) == receiver.verified(request, old)
    assert len(request["headers"]["webhook-signature"].split(" ")) == 2

    webhook_secret("tenant-a", "--rotate", "--overlap-hours", "0")
    Webhook.objects.get().resend()
    send_due()
    with pytest.raises(WebhookVerificationError):
        receiver.verified(receiver.requests[1], new)
    receiver.verified(receiver.requests[1], webhook_secret("tenant-a"))


def test_webhook_secret_refuses_a_bad_tenant_id():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        webhook_secret("bad\x00tenant")


# --- The service ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_service_sends_and_retries_the_webhooks_recorded_while_it_was_down(
    client, peers, llm, receiver
):
    """Pending deliveries are rows: run_execution_worker's sender finds them when it starts."""
    receiver.answer(500)  # its first attempt fails, and the sender tries again
    started = start_run(client, issue("tenant-a"), receiver.url)
    assert Webhook.objects.get(execution_id=started["id"]).status == "pending"
    service = start_service(
        "--rq-workers",
        "0",
        AES_WEBHOOK_ALLOWED_HOSTS="127.0.0.1:*",
        AES_WEBHOOK_RETRY_SECONDS="0.5",
    )
    try:
        wait_for(
            lambda: Webhook.objects.get(execution_id=started["id"]).status == "delivered",
            timeout=60,
            what="the service's sender to deliver",
        )
    finally:
        output = end(service)
    first, second = receiver.requests
    assert second["headers"]["webhook-id"] == first["headers"]["webhook-id"]
    receiver.verified(second, webhook_secret("tenant-a"))
    assert "Traceback" not in output


def test_the_admin_finds_webhooks_by_execution_id_url_or_webhook_id(
    client, peers, llm, receiver, admin_client
):
    started = start_run(client, issue("tenant-a"), receiver.url)
    webhook = Webhook.objects.get(execution_id=started["id"])
    for term in (started["id"][:8], webhook.event_id, "127.0.0.1", "not-a-uuid"):
        response = admin_client.get("/admin/webhooks/webhook/", {"q": term})
        assert response.status_code == 200
        found = webhook.event_id in response.content.decode()
        assert found == (term != "not-a-uuid"), term


def test_staff_rotate_a_tenants_secret_from_the_admin(admin_client):
    old = webhook_secret("tenant-a")
    row = SigningSecret.objects.get(secret=old)
    response = admin_client.post(
        "/admin/webhooks/signingsecret/",
        {"action": "rotate", "_selected_action": [row.pk]},
        follow=True,
    )
    assert response.status_code == 200
    new = webhook_secret("tenant-a")
    assert new != old
    assert SigningSecret.signing("tenant-a") == [new, old]  # the old one signs for a day
