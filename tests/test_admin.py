"""Admin pages for staff: executions with their session, the metrics page, RQ queues."""

from __future__ import annotations

import pytest

from tests.helpers import agent_run, run_one

pytestmark = pytest.mark.django_db


def test_the_metrics_page_shows_the_last_day_and_the_totals(admin_client, peers, llm):
    run_one(agent_run())
    run_one(agent_run(agent_id="no-such-bot"))
    page = admin_client.get("/admin/executions/execution/metrics/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<th>completed</th>" in html and "<th>rejected</th>" in html
    assert "<td>free</td><td>1</td><td>1</td>" in html
    assert "Runs: 2 " in html
    assert "RQ queues and workers" in html


def test_an_execution_links_to_its_sessions_other_executions(admin_client, peers, llm):
    execution = run_one(agent_run(session_id="s-admin"))
    page = admin_client.get(f"/admin/executions/execution/{execution.id}/change/")
    html = page.content.decode()
    link = "/admin/executions/execution/?session_id=s-admin&amp;tenant_id=tenant-a"
    assert link in html
    listed = admin_client.get("/admin/executions/execution/?session_id=s-admin&tenant_id=tenant-a")
    assert listed.status_code == 200
    assert str(execution.id) in listed.content.decode()


@pytest.mark.parametrize(
    "url",
    [
        "/admin/executions/execution/metrics/",
        "/admin/django_rq/dashboard/",
        "/admin/tokens/apitoken/",
    ],
)
def test_operator_pages_need_staff(client, admin_client, django_user_model, url):
    assert admin_client.get(url).status_code == 200
    assert client.get(url).status_code == 302
    client.force_login(django_user_model.objects.create_user("someone", password="pw"))
    assert client.get(url).status_code == 302
