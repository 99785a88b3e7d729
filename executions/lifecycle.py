"""A run's life on its row: submitted, recorded, started, ended, cancelled, abandoned.

Every status change of an Execution goes through here, so its one callback
is sent, its gates are freed and the runs waiting behind it are woken in one
place. Whoever wins a status transition (a conditional UPDATE on the row)
does what follows it; the loser does nothing.
"""

from __future__ import annotations

import json
import logging
import math
import uuid

import redis

from aes_project import redis_clients
from executions import admission, cancels, events, gates, leases, outbox, queues
from executions.exceptions import Cancelled, InvalidAction, Superseded
from executions.models import FINAL_STATUSES, Execution, Status, execution_id_for
from executions.outcome import Outcome
from protocol import keys
from protocol.messages import AGENT_RUN, AgentRunData, Envelope, RunRequest
from tiers.models import Tier

log = logging.getLogger(__name__)

# Seconds a cancel flag outlives the request: longer than any run.
CANCEL_FLAG_TTL_SECONDS = 24 * 3600


def submit(
    run: RunRequest,
    *,
    tenant_id: str,
    tier: str,
    action_id: str | None = None,
    own_queues_only: bool,
) -> tuple[str, uuid.UUID]:
    """Push an execution.agent_run onto the tier's list; return (action_id, execution id).

    The API's door: the message passes the consumer's own checks
    (executions/admission.py) first, so what the API accepts the consumer
    records; `own_queues_only` (a tenant's run) keeps its callback queue
    under the tenant's prefix. Raises admission.Refused.
    """
    action_id = action_id or str(uuid.uuid4())
    message = Envelope(
        action_id=action_id,
        action_type=AGENT_RUN,
        task_id=run.task_id or action_id,
        tenant_id=tenant_id,
        tenant_tier=tier,
        session_id=run.session_id,
        callback_queue=run.callback_queue,
        data=run.run_data(),
        metadata=run.metadata or {},
    )
    raw = json.dumps(message.dump()).encode()
    action, request = admission.parse(raw)
    admission.agent_run(action, request)
    if own_queues_only:
        admission.check_tenant_queue(action.callback_queue, tenant_id)
    execution_id = execution_id_for(tenant_id, action_id)
    pipe = redis_clients.shared().pipeline(transaction=False)
    # Lets the tenant follow the run's events before the consumer records it.
    pipe.set(keys.submitted(str(execution_id)), tenant_id, ex=keys.SUBMITTED_TTL_SECONDS)
    pipe.lpush(keys.actions(tier), raw)
    pipe.execute()
    return action_id, execution_id


def accept(run: admission.AgentRun, tier: str) -> Execution:
    """Record a checked run from the tier's action list (once per action) and enqueue its job.

    A redelivered message finds the row it made before; its job is enqueued
    again only if RQ lost it while the run was still queued.
    """
    action = run.action
    execution, created = Execution.record(
        action.tenant_id,
        action.action_id,
        task_id=action.task_id,
        tier=tier,
        session_id=action.session_id,
        correlation_id=action.correlation_id,
        agent_id=run.agent_id,
        conversation_id=run.data.conversation_id,
        callback_queue=action.callback_queue,
        message=run.data.message,
        request=run.request,
    )
    if not created:
        log.info("action %s seen before: execution %s", action.action_id, execution.id)
    if execution.session_id:
        # Runs of a session start in the order they were recorded.
        gates.join_session(execution.tenant_id, execution.session_id, str(execution.id))
    # The list's tier is the run's; the message's own names it only by chance.
    known = run.tier if run.tier.name == tier else None
    if created:
        run_events = events.of(execution)
        run_events.expect_new_stream()
        run_events.add(events.STATUS, status=Status.QUEUED)
        queues.enqueue(execution, tier=known, known_new=True, send=run_events.execute)
    elif execution.status == Status.QUEUED:
        queues.enqueue(execution, tier=known)
    return execution


def begin(execution: Execution, tier: Tier) -> str | None:
    """Start the run if its gates let it; return None when started, else why it did not.

    A run that must wait for its session's turn or a tenant slot stays
    `queued`; the run ahead of it wakes it by enqueueing its job again.
    """
    execution_id = str(execution.id)
    if execution.session_id and not _session_turn(execution):
        return "waiting-for-session"
    if not gates.acquire_slot(
        execution.tenant_id, execution_id, tier.max_concurrent_executions, tier.timeout_seconds
    ):
        return "waiting-for-slot"
    requested = AgentRunData.model_validate(execution.request["data"]).timeout
    if not execution.start(tier.limits(), min(tier.timeout_seconds, requested or math.inf)):
        return "not-claimed"
    run_events = events.of(execution)
    run_events.expect_queued_only()
    run_events.add(events.STATUS, status=Status.RUNNING)
    leases.heartbeat().take(execution_id, execution.resumes, send=run_events.flush)
    cancels.watcher().watch(execution_id)
    return None


def take_over(execution: Execution) -> bool:
    """Take a running run's lease for its current attempt; False when another process holds it.

    A resumed run's job finds its row `running` with `resumes` already
    counted (recovery.recover); a stray second job of a live run finds the
    lease held, or the run never resumed.
    """
    if execution.resumes == 0:
        return False
    if not leases.heartbeat().take(str(execution.id), execution.resumes):
        return False
    cancels.watcher().watch(str(execution.id))
    log.warning("execution %s resumed: attempt %d", execution.id, execution.resumes + 1)
    # Sent with the run's next round trip (its first cancel check).
    events.of(execution).add(events.STATUS, status=Status.RUNNING, resumed=True)
    return True


def conclude(execution: Execution, outcome: Outcome) -> bool:
    """End the run with `outcome`: one callback, its gates freed; False if it had ended."""
    won = execution.finish(outcome)
    leases.heartbeat().release(str(execution.id), execution.resumes)
    if (
        not won
        and not Execution.objects.filter(pk=execution.pk, status__in=FINAL_STATUSES).exists()
    ):
        # A later attempt holds the run (§9): its gates are its own.
        return False
    if won:
        log.info(
            "execution %s ended %s%s",
            execution.id,
            outcome.status,
            f" ({outcome.error_code}: {outcome.error_message})" if outcome.error_code else "",
        )
        try:
            outbox.deliver(execution)
        except redis.RedisError as exc:
            # Recorded, not pushed: the reaper pushes it once Redis is back.
            log.warning("callback of %s not pushed yet: %s", execution.id, exc)
    release(execution)
    return won


def reject_unknown_tier(execution: Execution) -> None:
    """End a run whose tier no longer exists."""
    conclude(execution, Outcome.from_error(InvalidAction(f"unknown tier {execution.tier!r}")))


def release(execution: Execution) -> None:
    """Free the run's session turn and tenant slot, and wake the runs waiting for them."""
    me = str(execution.id)
    woken = set()
    if execution.session_id:
        woken.add(gates.leave_session(execution.tenant_id, execution.session_id, me))
    # A run that started on a tier without a limit took no slot (begin).
    limits = execution.limits or {}
    held = (
        "max_concurrent_executions" not in limits or limits["max_concurrent_executions"] is not None
    )
    woken.add(gates.release_slot(execution.tenant_id, me, held=held))
    for execution_id in woken - {None, me}:
        waiting = Execution.objects.filter(pk=execution_id, status=Status.QUEUED).first()
        if waiting is not None:
            queues.enqueue(waiting, wake=True)


def _session_turn(execution: Execution) -> bool:
    """Return True when the run is first in its session's line.

    A head that has already ended (its end crashed before it left the line)
    is taken out, so a session never stays blocked behind a finished run.
    """
    tenant, session, me = execution.tenant_id, execution.session_id, str(execution.id)
    while True:
        head = gates.session_head(tenant, session)
        if head is None:
            gates.join_session(tenant, session, me)
            continue
        if head == me:
            return True
        ahead = Execution.objects.filter(pk=head).values_list("status", flat=True).first()
        if ahead is not None and ahead not in FINAL_STATUSES:
            return False
        gates.leave_session(tenant, session, head)


def cancel(execution: Execution) -> bool:
    """Cancel the run: a queued one at once, a running one at its next step.

    Sets `execution:cancel:{id}` and tells every process's cancel watcher
    (executions/cancels.py), which the running job asks before every step
    and every second of an LLM call. Return False when it had ended.
    """
    if execution.is_final:
        return False
    pipe = redis_clients.shared().pipeline(transaction=False)
    pipe.set(keys.cancel_flag(str(execution.id)), "1", ex=CANCEL_FLAG_TTL_SECONDS)
    cancels.announce(pipe, str(execution.id))
    pipe.execute()
    if execution.status == Status.QUEUED:
        conclude(execution, Outcome.from_error(Cancelled("cancelled while queued")))
    return True


def run_checker(execution: Execution):
    """Return the check a running attempt makes before every step and every second it waits.

    It raises Superseded once this process's lease on the run was found lost
    (the heartbeat found it), and Cancelled once this process's cancel
    watcher heard of a cancel: neither asks Redis. The run's queued events
    (the steps recorded since the last check) go out with it.
    """
    heartbeat, execution_id, attempt = leases.heartbeat(), str(execution.id), execution.resumes
    run_events, watcher = events.of(execution), cancels.watcher()

    def check() -> None:
        if heartbeat.lost(execution_id, attempt):
            raise Superseded(f"execution {execution_id} is held by a later attempt")
        run_events.flush()
        if watcher.cancelled(execution_id):
            raise Cancelled("the run was cancelled")

    return check
