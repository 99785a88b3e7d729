"""Guessing credentials costs: failed API authentications and admin logins lock out.

The API counts failed Bearer and Basic credentials per client address
(tokens/guard.py) and answers 429 past the budget; the admin login locks a
username from an address out after its failures (django-axes).
"""

from __future__ import annotations

import base64
import subprocess

import pytest
from django.test import Client

from tests.helpers import python, subprocess_env
from tokens.models import ApiToken

pytestmark = pytest.mark.django_db

ROUTE = "/api/executions/"


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def basic(username: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {encoded}"}


def assert_throttled(response) -> None:
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60
    error = response.json()["error"]
    assert error["code"] == "THROTTLED"
    assert error["details"] is None
    assert "throttled" in error["message"]


@pytest.fixture
def token() -> str:
    return ApiToken.issue("acme", "free")[1]


def test_wrong_bearer_tokens_get_429_past_the_default_budget(
    client, settings, token, django_assert_num_queries
):
    attacker = {"REMOTE_ADDR": "203.0.113.7"}
    wrong = bearer("aes_deadbeef_" + "x" * 43)
    responses = [client.get(ROUTE, **wrong, **attacker) for _ in range(300)]
    codes = [response.status_code for response in responses]
    assert codes == [401] * 30 + [429] * 270
    assert responses[0]["WWW-Authenticate"] == "Bearer"
    assert_throttled(responses[-1])

    # Another address is not slowed by this one's failures.
    assert client.get(ROUTE, **bearer(token), REMOTE_ADDR="198.51.100.1").status_code == 200
    # A locked-out address is refused without its credential being looked at,
    # even a valid one: checking it would tell a guesser when it guessed right.
    with django_assert_num_queries(0):
        locked = client.get(ROUTE, **bearer(token), **attacker)
    assert_throttled(locked)
    assert settings.AES_AUTH_FAILURE_RATE == "30/min"  # the default, not an override


def test_valid_tokens_are_never_counted(client, settings, token):
    settings.AES_AUTH_FAILURE_RATE = "3/min"
    here = {"REMOTE_ADDR": "203.0.113.8"}
    wrong = bearer("aes_deadbeef_wrong")
    assert [client.get(ROUTE, **wrong, **here).status_code for _ in range(2)] == [401, 401]
    assert [client.get(ROUTE, **bearer(token), **here).status_code for _ in range(5)] == [200] * 5
    assert client.get(ROUTE, **wrong, **here).status_code == 401
    assert client.get(ROUTE, **wrong, **here).status_code == 429
    # Malformed and empty bearer headers are failures too.
    settings.AES_AUTH_FAILURE_RATE = "2/min"
    there = {"REMOTE_ADDR": "203.0.113.9"}
    codes = [
        client.get(ROUTE, HTTP_AUTHORIZATION=header, **there).status_code
        for header in ("Bearer ", "Bearer not-a-token", "Bearer aes_x")
    ]
    assert codes == [401, 401, 429]


def test_wrong_basic_passwords_get_429_and_never_axes_403(client, settings, django_user_model):
    # Axes would lock this username and address out after 3 failures if it
    # guarded the API: it must not, the API's own budget answers instead.
    settings.AXES_FAILURE_LIMIT = 3
    settings.AES_AUTH_FAILURE_RATE = "8/min"
    django_user_model.objects.create_superuser("ops", password="right-password")
    attacker = {"REMOTE_ADDR": "203.0.113.20"}
    codes = [
        client.get(ROUTE, **basic("ops", f"guess-{n}"), **attacker).status_code for n in range(20)
    ]
    assert codes == [401] * 8 + [429] * 12
    assert_throttled(client.get(ROUTE, **basic("ops", "guess"), **attacker))

    assert_throttled(client.get(ROUTE, **basic("ops", "right-password"), **attacker))
    other = {"REMOTE_ADDR": "198.51.100.20"}
    assert client.get(ROUTE, **basic("ops", "right-password"), **other).status_code == 200
    # The API's failures do count towards the admin login's lockout of that pair.
    assert login("203.0.113.20", "ops", "right-password").status_code == 429
    # Malformed Basic headers count as failures as well.
    settings.AES_AUTH_FAILURE_RATE = "1/min"
    there = {"REMOTE_ADDR": "203.0.113.21"}
    codes = [
        client.get(ROUTE, HTTP_AUTHORIZATION=header, **there).status_code
        for header in ("Basic", "Basic !!!")
    ]
    assert codes == [401, 429]


def test_a_spoofed_x_forwarded_for_does_not_dodge_the_limit(client, settings, token):
    settings.AES_AUTH_FAILURE_RATE = "3/min"
    wrong = bearer("aes_deadbeef_wrong")
    codes = [
        client.get(
            ROUTE, **wrong, REMOTE_ADDR="203.0.113.30", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}"
        ).status_code
        for n in range(10)
    ]
    assert codes == [401] * 3 + [429] * 7
    assert_throttled(
        client.get(ROUTE, **bearer(token), REMOTE_ADDR="203.0.113.30", HTTP_X_FORWARDED_FOR="::1")
    )


def test_behind_one_proxy_the_address_it_forwards_is_counted(client, settings, token):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    settings.AES_AUTH_FAILURE_RATE = "3/min"
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    wrong = bearer("aes_deadbeef_wrong")
    codes = [
        # A client's own X-Forwarded-For comes first; the proxy appends the address it saw.
        client.get(
            ROUTE, **wrong, **proxy, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}, 203.0.113.40"
        ).status_code
        for n in range(5)
    ]
    assert codes == [401] * 3 + [429] * 2
    neighbour = client.get(ROUTE, **bearer(token), **proxy, HTTP_X_FORWARDED_FOR="198.51.100.40")
    assert neighbour.status_code == 200


def login(address: str, username: str, password: str):
    """POST the admin login form from `address` in a fresh browser; return the response."""
    return Client(REMOTE_ADDR=address).post(
        "/admin/login/?next=/admin/",
        {"username": username, "password": password, "next": "/admin/"},
    )


def test_the_admin_login_locks_a_username_out_of_an_address(
    settings, django_user_model, admin_client
):
    limit = 10  # the default, not an override: checked below
    django_user_model.objects.create_superuser("ops", password="right-password")
    django_user_model.objects.create_superuser("lead", password="lead-password")
    attacker = "203.0.113.50"

    codes = [login(attacker, "ops", f"guess-{n}").status_code for n in range(limit - 1)]
    assert codes == [200] * (limit - 1)  # the form again, with its error
    locked = login(attacker, "ops", "guess-last")
    assert locked.status_code == 429
    assert "too many login attempts" in locked.content.decode()

    refused = login(attacker, "ops", "right-password")
    assert refused.status_code == 429
    assert "_auth_user_id" not in refused.wsgi_request.session

    # The lockout is of that username from that address only.
    elsewhere = login("198.51.100.50", "ops", "right-password")
    assert (elsewhere.status_code, elsewhere["Location"]) == (302, "/admin/")
    colleague = login(attacker, "lead", "lead-password")
    assert (colleague.status_code, colleague["Location"]) == (302, "/admin/")
    # The API's Basic path is the guard's, not axes': the same pair gets in there.
    api = Client(REMOTE_ADDR=attacker).get(ROUTE, **basic("ops", "right-password"))
    assert api.status_code == 200
    # Operators see the lockout in the admin, where they may delete it.
    listed = admin_client.get("/admin/axes/accessattempt/").content.decode()
    assert attacker in listed and "ops" in listed
    assert settings.AXES_FAILURE_LIMIT == limit


def test_a_successful_admin_login_clears_its_failures(settings, django_user_model):
    settings.AXES_FAILURE_LIMIT = 3
    django_user_model.objects.create_superuser("ops", password="right-password")
    here = "203.0.113.55"
    assert [login(here, "ops", "typo").status_code for _ in range(2)] == [200, 200]
    assert login(here, "ops", "right-password").status_code == 302
    assert [login(here, "ops", "typo").status_code for _ in range(3)] == [200, 200, 429]


def test_the_admin_login_counts_the_forwarded_address_behind_a_proxy(settings, django_user_model):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    settings.AXES_FAILURE_LIMIT = 2
    django_user_model.objects.create_superuser("ops", password="right-password")

    def through_proxy(forwarded: str, password: str):
        return Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded).post(
            "/admin/login/?next=/admin/",
            {"username": "ops", "password": password, "next": "/admin/"},
        )

    assert through_proxy("192.0.2.1, 203.0.113.60", "guess").status_code == 200
    assert through_proxy("192.0.2.2, 203.0.113.60", "guess").status_code == 429
    assert through_proxy("192.0.2.3, 203.0.113.60", "right-password").status_code == 429
    assert through_proxy("198.51.100.60", "right-password").status_code == 302


SHOW_SETTINGS = """
import django
django.setup()
from django.conf import settings
print(settings.AES_AUTH_FAILURE_RATE, settings.REST_FRAMEWORK["NUM_PROXIES"],
      settings.AXES_FAILURE_LIMIT, settings.AXES_COOLOFF_TIME.total_seconds())
"""


def run_settings(**env: str) -> subprocess.CompletedProcess[str]:
    return python(
        SHOW_SETTINGS, subprocess_env(DJANGO_SETTINGS_MODULE="aes_project.settings", **env)
    )


def test_the_settings_come_from_the_environment_and_a_bad_rate_fails_loudly():
    shown = run_settings(
        AES_AUTH_FAILURE_RATE="100/hour",
        AES_NUM_PROXIES="1",
        AES_ADMIN_LOGIN_FAILURES="4",
        AES_ADMIN_LOCKOUT_MINUTES="30",
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["100/hour", "1", "4", "1800.0"]

    for bad in ("30/fortnight", "thirty/min", "0/min", "30"):
        refused = run_settings(AES_AUTH_FAILURE_RATE=bad)
        assert refused.returncode != 0
        assert "ImproperlyConfigured: AES_AUTH_FAILURE_RATE must read" in refused.stderr
