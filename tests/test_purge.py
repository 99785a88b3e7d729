"""Retention: `purge_executions` deletes old ended runs, and nothing else."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from executions.models import Execution, ExecutionStep
from tests.helpers import agent_run, consume, push, run_one

pytestmark = pytest.mark.django_db


def _age(execution: Execution, days: int, **fields) -> None:
    past = timezone.now() - timedelta(days=days)
    Execution.objects.filter(pk=execution.pk).update(queued_at=past, finished_at=past, **fields)


def _purge(*args: str) -> str:
    out = StringIO()
    call_command("purge_executions", *args, stdout=out)
    return out.getvalue()


def test_purge_deletes_old_ended_runs_with_their_steps_and_nothing_else(peers, llm):
    messages = ("old", "older", "recent", "unpushed")
    old, older, recent, unpushed = (run_one(agent_run(message=m)) for m in messages)
    _age(old, 40)
    _age(older, 400)
    _age(unpushed, 40, callback_sent_at=None)  # still the reaper's to push
    push(agent_run(message="long queued"))
    consume()
    queued = Execution.objects.get(status="queued")
    Execution.objects.filter(pk=queued.pk).update(queued_at=timezone.now() - timedelta(days=40))

    assert "would delete 2 run(s)" in _purge("--older-than-days", "30", "--dry-run")
    assert Execution.objects.count() == 5
    assert "deleted 2 run(s)" in _purge("--older-than-days", "30", "--batch-size", "1")

    assert set(Execution.objects.values_list("pk", flat=True)) == {
        recent.pk,
        unpushed.pk,
        queued.pk,
    }
    assert not ExecutionStep.objects.filter(execution_id__in=[old.pk, older.pk]).exists()
    assert ExecutionStep.objects.filter(execution_id=recent.pk).exists()


def test_purge_refuses_a_window_of_no_days():
    with pytest.raises(CommandError, match="more than 0"):
        _purge("--older-than-days", "0")
