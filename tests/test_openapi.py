"""The OpenAPI schema describes the API, and the API keeps to it (schemathesis).

Two runs over every operation. Input that fits the schema gets the documented
answers. Hostile input (negative mode: wrong types, missing and unexpected
parameters; NUL bytes; tampered cursors; bodies nested too deep) gets a 4xx
with the stable error body, never a 5xx.
"""

from __future__ import annotations

import base64
from urllib.parse import urlencode

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from aes_project.wsgi import application

schema = schemathesis.pytest.from_fixture("api_schema")
hostile_schema = schemathesis.pytest.from_fixture("hostile_api_schema")

ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:password").decode()}
PAGINATED = {"/api/executions/", "/api/sessions/{session_id}/executions/"}

# Strings a client may send anywhere: NUL, which PostgreSQL refuses, next to
# other characters that often break parsers, quoting or encodings.
hostile_text = st.sampled_from(
    ["\x00", "a\x00b", "%00", "\u00e9\u4e2d\U0001f600", "'\";--", "x" * 3000]
)

# Cursors the API never hands out: base64 of a tampered o(ffset), r(everse),
# p(osition), or no base64 at all.
tampered_cursors = st.one_of(
    st.dictionaries(
        st.sampled_from("opr"),
        st.one_of(st.text(max_size=30), st.integers().map(str), st.datetimes().map(str)),
        min_size=1,
    ).map(lambda tokens: base64.b64encode(urlencode(tokens).encode()).decode()),
    st.text(max_size=30),
)


def with_one_replaced(values: dict | None, replacement: st.SearchStrategy) -> st.SearchStrategy:
    """Return `values` as generated, or with one of them replaced by a `replacement`."""
    values = dict(values or {})
    if not values:
        return st.just(values)
    return st.one_of(
        st.just(values),
        st.tuples(st.sampled_from(sorted(values)), replacement).map(
            lambda pair: {**values, pair[0]: pair[1]}
        ),
    )


def nested(depth: int, leaf: object) -> object:
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


@pytest.fixture
def api_schema(transactional_db):
    loaded = schemathesis.openapi.from_wsgi("/api/schema/", application)
    # A NUL fits a bare string in the schema but is answered 400 on every
    # route (aes_project/middleware.py): the hostile run sends it.
    loaded.config.generation.update(modes=[GenerationMode.POSITIVE], allow_x00=False)
    return loaded


@pytest.fixture
def hostile_api_schema(transactional_db):
    loaded = schemathesis.openapi.from_wsgi("/api/schema/", application)
    loaded.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        allow_x00=True,
        allow_extra_parameters=True,
    )

    @loaded.hook
    def flatmap_path_parameters(context, path_parameters):
        return with_one_replaced(path_parameters, hostile_text)

    @loaded.hook
    def flatmap_query(context, query):
        replaced = with_one_replaced(query, hostile_text)
        if context.operation.path not in PAGINATED:
            return replaced
        return st.one_of(
            replaced, st.tuples(replaced, tampered_cursors).map(lambda q: {**q[0], "cursor": q[1]})
        )

    @loaded.hook
    def flatmap_body(context, body):
        if not isinstance(body, dict):
            return st.just(body)
        deep = st.sampled_from([40, 150]).map(lambda depth: {**body, "metadata": nested(depth, 1)})
        return st.one_of(st.just(body), deep)

    return loaded


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
    case.call_and_validate(
        headers=ADMIN,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@hostile_schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_hostile_input_gets_a_4xx_with_the_error_body_never_a_5xx(case, admin_user):
    response = case.call(headers=ADMIN)
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details"}, response.text
        assert error["code"].isupper(), response.text
