"""The OpenAPI schema describes the API, and the API keeps to it (schemathesis)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from aes_project.wsgi import application

schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture
def api_schema(transactional_db):
    return schemathesis.openapi.from_wsgi("/api/schema/", application)


@pytest.mark.django_db
def test_the_schema_and_its_docs_page_are_served(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    for path in (
        "/api/executions/",
        "/api/executions/{id}/",
        "/api/executions/{id}/steps/",
        "/api/executions/{id}/cancel/",
        "/api/sessions/{session_id}/executions/",
        "/api/metrics/",
    ):
        assert path in document["paths"], path
    assert client.get("/api/docs/").status_code == 200


# Through the real WSGI handler, which closes database connections after each
# request: hence a transactional database rather than a rolled-back one.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_the_api_keeps_to_its_schema(case, admin_user):
    import base64

    credentials = base64.b64encode(b"admin:password").decode()
    case.call_and_validate(
        headers={"Authorization": f"Basic {credentials}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
