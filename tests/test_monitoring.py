"""The monitoring profile's dashboard asks Prometheus only for series the service exports."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import PROJECT, agent_run, run_one

pytestmark = pytest.mark.django_db

DASHBOARD = PROJECT / "deploy" / "monitoring" / "grafana" / "dashboards" / "aes.json"


def test_every_series_the_dashboard_draws_is_on_the_metrics_page(peers, llm, client):
    run_one(agent_run(agent_id="plain-bot"))  # so that every counter has a series
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in client.get("/metrics").content.decode().splitlines()
        if line and not line.startswith("#")
    }
    queries = [
        target["expr"]
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        for target in panel["targets"]
    ]
    asked = {name for query in queries for name in re.findall(r"\baes_[a-z_]+", query)}

    assert {"aes_runs_total", "aes_tokens_total", "aes_cost_usd_total"} <= asked
    assert asked <= exported
