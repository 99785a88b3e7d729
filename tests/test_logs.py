"""Log records of a run carry its ids, as text or as JSON lines."""

from __future__ import annotations

import json
import logging

import pytest

from aes_project.logs import JsonFormatter, run_context
from tests.helpers import agent_run, run_one


def record(message: str) -> logging.LogRecord:
    logger = logging.getLogger("executions.jobs")
    return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)


@pytest.mark.django_free
def test_a_record_made_during_a_run_carries_its_ids_in_json():
    with run_context(execution_id="e-1", task_id="t-1", tenant_id="acme"):
        line = JsonFormatter().format(record("slow peer"))
    entry = json.loads(line)
    assert entry["message"] == "slow peer"
    assert entry["level"] == "WARNING"
    assert (entry["execution_id"], entry["task_id"], entry["tenant_id"]) == ("e-1", "t-1", "acme")


@pytest.mark.django_free
def test_a_record_outside_a_run_has_no_ids():
    entry = json.loads(JsonFormatter().format(record("idle")))
    assert "execution_id" not in entry
    assert record("idle").run_context == ""


@pytest.mark.django_db
def test_a_jobs_warnings_name_its_execution(peers, llm, caplog):
    llm.push_error(400, "refused")
    with caplog.at_level(logging.INFO):
        execution = run_one(agent_run(message="a secret question"))
    tagged = [r for r in caplog.records if getattr(r, "execution_id", None) == str(execution.id)]
    assert tagged, "no record carried the execution id"
    assert all(r.tenant_id == "tenant-a" for r in tagged)
    # Prompts stay out of the logs unless AES_LOG_CONTENT is on.
    assert not any("a secret question" in r.getMessage() for r in caplog.records)
