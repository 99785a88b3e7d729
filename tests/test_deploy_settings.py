"""Production settings pass Django's deployment checks; development settings say what they are.

Each case runs in a child Python, because settings are read once per process.
"""

from __future__ import annotations

import json
import secrets

from tests.helpers import child_env, manage, python

# A key as docs/deployment.md has one made: 50 characters, many of them distinct.
PRODUCTION = {
    "AES_ENV": "production",
    "SECRET_KEY": secrets.token_urlsafe(50)[:50],
    "ALLOWED_HOSTS": "aes.example.com",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/test",
}

# Requests through the test client as the TLS proxy (or a probe) sends them;
# prints one JSON line per request: [status, Location, Strict-Transport-Security].
# A probe's view runs (no redirect) whatever it answers: no database is needed.
REQUESTS = """
import json, django
django.setup()
from django.test import Client
client = Client(HTTP_HOST="aes.example.com", raise_request_exception=False)
for path, https in [("/health", False), ("/metrics", False), ("/ready", False),
                    ("/api/executions/", False), ("/admin/", False), ("/health", True)]:
    headers = {"HTTP_X_FORWARDED_PROTO": "https"} if https else {}
    response = client.get(path, **headers)
    print(json.dumps([path, https, response.status_code, response.headers.get("Location"),
                      response.headers.get("Strict-Transport-Security")]))
"""


def answers(env: dict[str, str]) -> dict[tuple[str, bool], list]:
    """Run REQUESTS with `env`; return [status, Location, HSTS] by (path, over HTTPS)."""
    result = python(REQUESTS, env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return {(path, https): rest for path, https, *rest in lines}


def test_production_settings_pass_the_deployment_checks():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=child_env(**PRODUCTION))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "aes.W001" not in result.stdout + result.stderr


def test_production_redirects_plain_http_except_the_probes_and_sends_hsts():
    seen = answers(child_env(**PRODUCTION))
    for probe in ("/health", "/metrics", "/ready"):
        status, location, _ = seen[(probe, False)]
        assert status != 301 and location is None, probe
    for page in ("/api/executions/", "/admin/"):
        status, location, _ = seen[(page, False)]
        assert status == 301 and location == f"https://aes.example.com{page}", page
    status, _, hsts = seen[("/health", True)]
    assert status == 200
    assert hsts == "max-age=31536000; includeSubDomains; preload"


def test_hsts_and_the_redirect_follow_their_settings():
    env = child_env(
        **PRODUCTION,
        SECURE_HSTS_SECONDS="3600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="false",
        SECURE_HSTS_PRELOAD="false",
        SECURE_SSL_REDIRECT="false",
    )
    seen = answers(env)
    assert seen[("/admin/", False)][0] != 301
    assert seen[("/health", True)][2] == "max-age=3600"


def test_development_settings_warn_that_they_are_not_for_production():
    result = manage("check", env=child_env())
    assert result.returncode == 0, result.stderr
    assert "aes.W001" in result.stderr
    assert "not for production" in result.stderr
    assert "DEBUG on" in result.stderr
    assert "insecure SECRET_KEY" in result.stderr


def test_development_settings_send_no_hsts_and_do_not_redirect():
    seen = answers(child_env(ALLOWED_HOSTS="aes.example.com"))
    assert seen[("/admin/", False)][0] != 301
    assert seen[("/health", True)][2] is None
