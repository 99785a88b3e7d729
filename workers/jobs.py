"""RQ jobs: one agent run per job. Jobs take an execution id and load the rest."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import django_rq
from django.conf import settings
from rq.job import Job

from executions.agent_loop import AgentLoop, Step
from executions.exceptions import (
    AgentInactive,
    ExecutionTimeout,
    InvalidAction,
    RunError,
    TierInsufficient,
    UpstreamTimeout,
)
from executions.models import Execution
from tiers import lookup
from workers import callbacks, llm, peers
from workers.callbacks import Outcome
from workers.protocol import AgentConfig, AgentRunData

log = logging.getLogger(__name__)

# Seconds RQ lets a job run past the run's own deadline before killing it;
# the run stops itself at the deadline, this only catches a stuck process.
JOB_TIMEOUT_MARGIN_SECONDS = 30
# Seconds RQ keeps a finished or failed job's record (the row is the record).
RESULT_TTL_SECONDS = 3600
FAILURE_TTL_SECONDS = 7 * 24 * 3600


def enqueue(execution: Execution) -> None:
    """Put the execution's job on its tier's RQ queue, unless it is there already."""
    queue = django_rq.get_queue(execution.tier)
    job_id = str(execution.id)
    if Job.exists(job_id, connection=queue.connection):
        return
    tier = lookup.get_tier(execution.tier)
    timeout = tier.timeout_seconds if tier else 60
    queue.enqueue_call(
        "workers.jobs.run_execution",
        args=(job_id,),
        job_id=job_id,
        timeout=timeout + JOB_TIMEOUT_MARGIN_SECONDS,
        result_ttl=RESULT_TTL_SECONDS,
        failure_ttl=FAILURE_TTL_SECONDS,
    )


def run_execution(execution_id: str) -> str:
    """Run one execution to its final status and send its callback; return the status."""
    execution = Execution.objects.filter(pk=execution_id).first()
    if execution is None:
        log.warning("job for unknown execution %s dropped", execution_id)
        return "missing"
    if execution.is_final:
        # A redelivered job: the run is over, make sure its callback went out.
        callbacks.deliver(execution)
        return execution.status
    tier = lookup.get_tier(execution.tier)
    if tier is None:
        callbacks.conclude(
            execution, Outcome.from_error(InvalidAction(f"unknown tier {execution.tier!r}"))
        )
        return execution.status
    if not execution.start(tier.limits()):
        return "not-claimed"
    callbacks.conclude(execution, _run(execution))
    return execution.status


def _run(execution: Execution) -> Outcome:
    """1. deadline, 2. agent and checks, 3. history, 4. agent loop, 5. save messages."""
    limits: dict[str, Any] = execution.limits
    data = AgentRunData.model_validate(execution.request["data"])
    timeout = min(limits["timeout_seconds"], data.timeout or math.inf)
    deadline = time.monotonic() + timeout
    caller = peers.Caller(
        task_id=execution.task_id,
        tenant_id=execution.tenant_id,
        tier=execution.tier,
        session_id=execution.session_id,
    )
    result = None
    try:
        agent = peers.get_agent_config(
            caller, execution.agent_id, limits["agent_config_cache_ttl"], deadline
        )
        _check_permissions(execution, agent)
        history = []
        if execution.session_id:
            history = peers.get_history(
                caller,
                execution.session_id,
                limits["max_history_messages"],
                limits["history_cache_ttl"],
                deadline,
            )
        loop = AgentLoop(
            complete=llm.completer(
                model=agent.model or settings.AES_DEFAULT_MODEL,
                temperature=agent.temperature,
                max_tokens=min(agent.max_tokens or limits["max_tokens"], limits["max_tokens"]),
            ),
            tools={},
            max_iterations=min(limits["max_iterations"], data.max_iterations or math.inf),
            deadline=deadline,
            record=lambda step: _record(execution, step),
        )
        result = loop.run(_prompt(agent, data, [m.model_dump() for m in history]))
        _save_messages(execution, caller, data, result.response, limits, deadline)
        return Outcome(
            status="completed",
            response=result.response,
            iterations=result.iterations,
            usage=result.usage,
            tool_calls=result.tool_calls,
            sources=result.sources,
            agent_id=agent.agent_id,
        )
    except RunError as error:
        if isinstance(error, UpstreamTimeout) and time.monotonic() >= deadline:
            error = ExecutionTimeout(f"the run's deadline of {timeout}s passed ({error.message})")
        partial = error.partial or result
        if partial is None:
            return Outcome.from_error(error)
        return Outcome.from_error(
            error,
            response=partial.response,
            iterations=partial.iterations,
            usage=partial.usage,
            tool_calls=partial.tool_calls,
            sources=partial.sources,
        )
    except Exception as exc:
        log.exception("execution %s crashed", execution.id)
        return Outcome(status="failed", error_code="INTERNAL", error_message=type(exc).__name__)


def _check_permissions(execution: Execution, agent: AgentConfig) -> None:
    if not agent.is_active:
        raise AgentInactive(f"agent {agent.agent_id!r} is not active")
    tenant_tier = lookup.get_tier(execution.tier)
    minimum = lookup.get_tier(agent.minimum_tier)
    if minimum is None or tenant_tier is None or not tenant_tier.reaches(minimum):
        raise TierInsufficient(
            f"agent {agent.agent_id!r} needs tier {agent.minimum_tier!r} or higher"
        )


def _prompt(agent: AgentConfig, data: AgentRunData, history: list[dict]) -> list[dict]:
    messages: list[dict[str, Any]] = []
    if agent.system_prompt:
        messages.append({"role": "system", "content": agent.system_prompt})
    if data.user_info:
        messages.append(
            {"role": "system", "content": "About the user: " + json.dumps(data.user_info)}
        )
    messages.extend({"role": m["role"], "content": m["content"]} for m in history)
    messages.append({"role": "user", "content": data.message})
    return messages


def _record(execution: Execution, step: Step) -> None:
    execution.add_step(
        step.kind,
        step.name,
        input=step.input,
        output=step.output,
        error=step.error,
        prompt_tokens=step.prompt_tokens,
        completion_tokens=step.completion_tokens,
        duration_ms=step.duration_ms,
    )


def _save_messages(
    execution: Execution,
    caller: peers.Caller,
    data: AgentRunData,
    response: str | None,
    limits: dict[str, Any],
    deadline: float,
) -> None:
    if not execution.session_id:
        return
    saved = []
    for role, content in (("user", data.message), ("assistant", response)):
        if content is None:
            continue
        message = {
            "session_id": execution.session_id,
            "role": role,
            "content": content,
            "message_type": data.message_type,
            "agent_id": execution.agent_id,
            "task_id": execution.task_id,
            "metadata": {"execution_id": str(execution.id)},
        }
        peers.save_message(caller, message, wait=limits["wait_for_persistence"], deadline=deadline)
        saved.append({"role": role, "content": content})
    peers.append_to_history(caller, execution.session_id, saved, limits["max_history_messages"])


def close_abandoned(execution_id: str, reason: str) -> None:
    """End an execution whose job died before finishing it, with one callback."""
    execution = Execution.objects.filter(pk=execution_id).first()
    if execution is None or execution.is_final:
        return
    log.error("execution %s abandoned: %s", execution_id, reason)
    callbacks.conclude(
        execution, Outcome(status="failed", error_code="INTERNAL", error_message=reason)
    )
