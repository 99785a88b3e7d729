"""The admin's metrics page draws the last 24 hours as SVG charts."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from tests.helpers import agent_run, make_execution, run_one

pytestmark = pytest.mark.django_db

PAGE = "/admin/executions/execution/metrics/"


def ended(status: str, hours_ago: int, duration_ms: int, tokens: int, cost: str | None):
    queued = timezone.now() - timedelta(hours=hours_ago)
    make_execution(
        status=status,
        queued_at=queued,
        duration_ms=duration_ms,
        total_tokens=tokens,
        cost_usd=None if cost is None else Decimal(cost),
    )
    return queued


def titles(page: str) -> list[str]:
    """The hover texts of the bars and points, in the order they are drawn."""
    shapes = r'<(?:rect class="bar"|circle class="point")[^>]*><title>([^<]*)</title>'
    return re.findall(shapes, page)


def test_the_metrics_page_draws_runs_p95_tokens_and_cost_per_hour(admin_client):
    earlier = ended("completed", 3, 1200, 100, "0.0015")
    ended("completed", 3, 800, 50, "0.0005")
    ended("failed", 3, 300, 10, None)
    now = ended("completed", 0, 2500, 40, "0.0002")
    ended("completed", 30, 999, 999, "9")  # more than a day ago: not drawn

    page = admin_client.get(PAGE).content.decode()

    assert page.count('<figure class="aes-chart">') == 4
    for title in ("Runs by status", "p95 duration", "Tokens", "Cost"):
        assert f'aria-label="{title}"' in page
    drawn = titles(page)
    h3, h0 = f"{earlier:%H}:00", f"{now:%H}:00"
    assert f"{h3} completed: 2" in drawn
    assert f"{h3} failed: 1" in drawn
    assert f"{h0} completed: 1" in drawn
    assert f"{h3}: 1200 ms" in drawn  # p95 of 300, 800, 1200
    assert f"{h0}: 2500 ms" in drawn
    assert f"{h3} tokens: 160" in drawn
    assert f"{h3} cost: 0.002000 USD" in drawn
    assert f"{h0} cost: 0.000200 USD" in drawn
    assert not any("999" in title or "9.000000" in title for title in drawn)


def test_the_bars_of_one_chart_are_as_tall_as_their_values(admin_client):
    ended("completed", 2, 100, 300, None)
    ended("completed", 1, 100, 100, None)

    page = admin_client.get(PAGE).content.decode()

    heights = {
        title: float(height)
        for height, title in re.findall(
            r'<rect class="bar"[^>]*height="([0-9.]+)"[^>]*><title>([^<]*tokens[^<]*)</title>', page
        )
    }
    (tall,) = [h for t, h in heights.items() if t.endswith("tokens: 300")]
    (short,) = [h for t, h in heights.items() if t.endswith("tokens: 100")]
    assert tall == pytest.approx(3 * short, rel=0.02)


def test_an_empty_day_says_so_in_every_chart(admin_client):
    page = admin_client.get(PAGE).content.decode()
    assert page.count('<figure class="aes-chart">') == 4
    assert page.count("· no runs") == 4
    assert titles(page) == []


def test_the_counters_since_they_began_show_cost_by_model(admin_client, peers, llm):
    run = run_one(agent_run(agent_id="plain-bot"))

    page = admin_client.get(PAGE).content.decode()

    assert f"gpt-4o-mini {run.cost_usd:.6f} USD" in page
