"""Executions: the durable record of every agent run, and its steps."""

from __future__ import annotations

import functools
import json
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connections, models, router, transaction
from django.db.models import Count, Max, Sum
from django.utils import timezone

from executions.outcome import Outcome
from protocol.messages import (
    FINAL_STATUSES,
    STOP_REASONS,
    ErrorInfo,
    ExecutionCallback,
    ExecutionCallbackData,
)
from webhooks.models import Webhook


class Status(models.TextChoices):
    """Where a run is: queued, running, or one of the protocol's FINAL_STATUSES."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


# Execution ids are derived from the message's tenant and action_id, so
# whoever sends a run (the API in particular) knows its id before the
# consumer records it, and two tenants' action_ids never meet. (Rows recorded
# before ids took the tenant in keep the ids they had: uuid5 of the action_id.)
EXECUTION_ID_NAMESPACE = uuid.UUID("6b1f3c1e-5d0a-4f57-9a53-2f6d1b0c7e11")

# The steps' and runs' cost columns keep ten decimal places.
COST_QUANTUM = Decimal("1e-10")


def execution_id_for(tenant_id: str, action_id: str) -> uuid.UUID:
    """Return the id the Execution of the tenant's `action_id` has, or will have."""
    # A JSON pair: no choice of the two strings can spell another pair.
    return uuid.uuid5(EXECUTION_ID_NAMESPACE, json.dumps([tenant_id, action_id]))


class Execution(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    action_id = models.CharField(max_length=255, help_text="Idempotency key, per tenant.")
    task_id = models.CharField(max_length=255, db_index=True)
    tenant_id = models.CharField(max_length=255)
    tier = models.CharField(max_length=32)
    session_id = models.CharField(max_length=255, null=True, blank=True)
    correlation_id = models.CharField(max_length=255, null=True, blank=True)
    agent_id = models.CharField(max_length=255)
    conversation_id = models.CharField(max_length=255, null=True, blank=True)
    callback_queue = models.CharField(max_length=512, null=True, blank=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    message = models.TextField()
    response = models.TextField(null=True, blank=True)
    error_code = models.CharField(max_length=64, null=True, blank=True)
    error_message = models.TextField(null=True, blank=True)
    stop_reason = models.CharField(
        max_length=16,
        choices=[(reason, reason) for reason in STOP_REASONS],
        null=True,
        blank=True,
        help_text="Why the run stopped (protocol §4), once final.",
    )

    iterations = models.PositiveIntegerField(default=0)
    resumes = models.PositiveIntegerField(
        default=0, help_text="Times the run was resumed after its worker was lost."
    )
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    model = models.CharField(
        max_length=255, null=True, blank=True, help_text="The model its LLM calls used."
    )
    cost_usd = models.DecimalField(
        "cost (USD)",
        max_digits=20,
        decimal_places=10,
        null=True,
        blank=True,
        help_text="What its LLM calls cost at the model table's prices; empty when unknown.",
    )

    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    deadline_at = models.DateTimeField(
        null=True, blank=True, help_text="When the run must have ended, set when it starts."
    )

    request = models.JSONField(help_text="The DomainAction as received.")
    limits = models.JSONField(null=True, blank=True, help_text="Tier limits when it started.")
    callback = models.JSONField(null=True, blank=True, help_text="The callback, once final.")
    callback_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-queued_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant_id", "action_id"], name="exec_tenant_action")
        ]
        indexes = [
            models.Index(fields=["tenant_id", "-queued_at"], name="exec_tenant_recent"),
            models.Index(fields=["session_id", "queued_at"], name="exec_session_order"),
            models.Index(fields=["agent_id", "-queued_at"], name="exec_agent_recent"),
            models.Index(fields=["status", "-queued_at"], name="exec_status_recent"),
            models.Index(fields=["tier", "-queued_at"], name="exec_tier_recent"),
            # The reaper's scans: stale queued and running runs, unsent callbacks.
            models.Index(fields=["status", "queued_at"], name="exec_status_age"),
            models.Index(
                fields=["finished_at"],
                name="exec_callback_unsent",
                condition=models.Q(callback__isnull=False, callback_sent_at__isnull=True),
            ),
        ]

    # What the LLM calls this instance recorded cost, as (model, cost) pairs:
    # set by a won `start`, so a first attempt's end adds its costs up
    # without reading its steps back (None: read them, see `_spent`).
    _calls: list[tuple[str | None, Decimal | None]] | None = None

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @classmethod
    def record(cls, tenant_id: str, action_id: str, **fields: Any) -> tuple[Execution, bool]:
        """Return the tenant's execution of `action_id`, creating it queued; True if created.

        The unique (tenant_id, action_id) makes a redelivered or duplicated
        message find the row it already made instead of running twice.
        """
        execution = cls(
            id=execution_id_for(tenant_id, action_id),
            tenant_id=tenant_id,
            action_id=action_id,
            **fields,
        )
        # Insert first: a new action_id (the common case) costs one query.
        try:
            with transaction.atomic():
                _insert(execution)
            return execution, True
        except IntegrityError:
            return cls.objects.get(tenant_id=tenant_id, action_id=action_id), False

    @classmethod
    def load(cls, pk: uuid.UUID | str) -> Execution:
        """Return the execution `pk`, as `objects.get(pk=pk)` does; raise DoesNotExist.

        Every job starts with this read: the statement's text and each
        column's conversions are prepared once per connection, not compiled
        by the ORM per run (which cost a worker about three times the read).
        """
        connection = connections[router.db_for_read(cls)]
        sql, converters = _load_plan(connection.alias)
        with connection.cursor() as cursor:
            cursor.execute(sql, [cls._meta.pk.get_db_prep_value(pk, connection)])
            row = cursor.fetchone()
        if row is None:
            raise cls.DoesNotExist(f"no execution {pk}")
        values = list(row)
        for position, column, functions in converters:
            for convert in functions:
                values[position] = convert(values[position], column, connection)
        return cls.from_db(connection.alias, _LOADED_FIELDS, values)

    @classmethod
    def purge(cls, finished_before: Any, *, batch_size: int = 1000, dry_run: bool = False) -> int:
        """Delete ended runs finished before `finished_before`, with their steps; return how many.

        Only runs whose callback was pushed: an unpushed one is still the
        reaper's. Oldest first, in batches, so that no statement holds many
        rows for long; the `queued_at` bound lets the (status, queued_at)
        index find them.
        """
        ended = cls.objects.filter(
            status__in=FINAL_STATUSES,
            queued_at__lt=finished_before,
            finished_at__lt=finished_before,
            callback_sent_at__isnull=False,
        ).order_by("queued_at")
        if dry_run:
            return ended.count()
        deleted = 0
        while ids := list(ended.values_list("pk", flat=True)[:batch_size]):
            cls.objects.filter(pk__in=ids).delete()
            deleted += len(ids)
        return deleted

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def _claim(self, from_statuses: list[str], *, fence: bool = False, **changes: Any) -> bool:
        # A conditional UPDATE instead of a lock: of two processes racing for
        # the same transition, exactly one sees a row count of 1 and goes on.
        # With `fence`, only while no later attempt took the run over (§9).
        where = {"status": from_statuses, **({"resumes": self.resumes} if fence else {})}
        won = _update_row(self.pk, where, changes) == 1
        if won:
            for field, value in changes.items():
                setattr(self, field, value)
        return won

    def start(self, limits: dict[str, Any], timeout_seconds: float) -> bool:
        """Mark the execution running with the tier limits in force; False if not queued."""
        now = timezone.now()
        started = self._claim(
            [Status.QUEUED],
            status=Status.RUNNING,
            started_at=now,
            deadline_at=now + timedelta(seconds=timeout_seconds),
            limits=limits,
        )
        if started:
            self._calls = []
        return started

    def finish(self, outcome: Outcome) -> bool:
        """Record how the run ended and the callback that says so; False if it had ended.

        The callback is built from the row as this UPDATE leaves it and
        stored with the status, so whoever wins the transition owns the one
        callback there will ever be (executions/outbox.py pushes it), and
        the one webhook when the run asked for one (webhooks/sender.py sends it).
        """
        assert outcome.status in FINAL_STATUSES, outcome.status
        result, now = outcome.result, timezone.now()
        begun = self.started_at or self.queued_at
        model, cost = self._spent()
        ended = {
            "status": outcome.status,
            "response": result.response,
            "error_code": outcome.error_code,
            "error_message": outcome.error_message,
            "stop_reason": outcome.stop_reason,
            "iterations": result.iterations,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
            "model": model,
            "cost_usd": cost,
            "finished_at": now,
            "duration_ms": max(0, int((now - begun).total_seconds() * 1000)),
        }
        data = ExecutionCallbackData(
            execution_id=str(self.id),
            status=ended["status"],
            agent_id=self.agent_id,
            conversation_id=self.conversation_id,
            response=ended["response"],
            tool_calls=result.tool_calls,
            sources=result.sources,
            iterations=ended["iterations"],
            usage={**result.usage, "cost_usd": None if cost is None else float(cost)},
            stop_reason=ended["stop_reason"],
            execution_time_ms=ended["duration_ms"],
            resumes=self.resumes,
            error=ErrorInfo(code=outcome.error_code, message=outcome.error_message or "")
            if outcome.error_code
            else None,
        )
        callback = ExecutionCallback.answering(self.request, self.tier, data).dump()
        webhook_url = (self.request.get("data") or {}).get("webhook_url")
        if not webhook_url:
            return self._claim(
                [Status.QUEUED, Status.RUNNING], fence=True, **ended, callback=callback
            )
        # The webhook is the callback's second outbox entry: both or neither.
        with transaction.atomic():
            won = self._claim(
                [Status.QUEUED, Status.RUNNING], fence=True, **ended, callback=callback
            )
            if won:
                Webhook.record(self, webhook_url, callback)
        return won

    def _spent(self) -> tuple[str | None, Decimal | None]:
        """Return the model of the run's LLM calls and what they all cost, from its steps.

        Every call any attempt made counts, journaled or not: each was paid
        for. The cost is unknown (None) when any call's price was. A first
        attempt started by this instance recorded every call itself.
        """
        if self._calls is not None and self.resumes == 0:
            models_used = [model for model, _ in self._calls if model is not None]
            costs = [cost for _, cost in self._calls]
            model = max(models_used, default=None)
            if None in costs:
                return model, None
            return model, sum(costs, Decimal(0))
        calls = self.steps.filter(kind=ExecutionStep.Kind.LLM).aggregate(
            calls=Count("id"), priced=Count("cost_usd"), cost=Sum("cost_usd"), model=Max("model")
        )
        if calls["priced"] < calls["calls"]:
            return calls["model"], None
        return calls["model"], calls["cost"] or Decimal(0)

    def resume(self) -> bool:
        """Hand the running run to a new attempt (its worker was lost); False if it moved on."""
        return self._claim([Status.RUNNING], fence=True, resumes=self.resumes + 1)

    def mark_callback_sent(self) -> None:
        """Mark the stored callback as delivered to its queue."""
        self.callback_sent_at = timezone.now()
        _update_row(self.pk, {}, {"callback_sent_at": self.callback_sent_at})

    def add_step(self, kind: str, name: str, **fields: Any) -> ExecutionStep:
        """Record one LLM call, tool call or note of this execution's current attempt."""
        if fields.get("cost_usd") is not None:
            # As the column keeps it, so a sum here is the database's sum.
            fields["cost_usd"] = fields["cost_usd"].quantize(COST_QUANTUM)
        step = ExecutionStep(
            execution=self, kind=kind, name=name, attempt=self.resumes + 1, **fields
        )
        _insert(step)
        if self._calls is not None and kind == ExecutionStep.Kind.LLM:
            self._calls.append((step.model, step.cost_usd))
        return step

    def journal(self) -> list[ExecutionStep]:
        """Return the steps a resumed attempt goes on from, in order."""
        return list(self.steps.filter(replay__isnull=False))


_LOADED_FIELDS = [field.attname for field in Execution._meta.concrete_fields]


@functools.cache
def _load_plan(alias: str) -> tuple[str, list[tuple[int, Any, list]]]:
    """Return what `Execution.load` sends on connection `alias`: its SQL and, per
    column that needs them, the converters the ORM's compiler would apply."""
    connection, meta = connections[alias], Execution._meta
    quote = connection.ops.quote_name
    columns = [field.get_col(meta.db_table) for field in meta.concrete_fields]
    converters = []
    for position, column in enumerate(columns):
        functions = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if functions:
            converters.append((position, column, functions))
    names = ", ".join(quote(column.target.column) for column in columns)
    sql = f"SELECT {names} FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column)} = %s"
    return sql, converters


def _insert(row: models.Model) -> None:
    """INSERT a new Execution or step as `row.save()` would (no signal listens to them).

    Every run is one, and each of its LLM calls, tool calls and notes: the
    statement's text is built once per connection, each field's value
    prepared as the ORM's. A step's id comes back from the database.
    """
    model = type(row)
    meta = model._meta
    connection = connections[router.db_for_write(model)]
    sql, fields, returning = _insert_plan(connection.alias, model)
    params = [field.get_db_prep_save(field.pre_save(row, True), connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if returning:
            row.pk = cursor.fetchone()[0]
        elif row.pk is None:
            row.pk = connection.ops.last_insert_id(cursor, meta.db_table, meta.pk.column)
    row._state.adding, row._state.db = False, connection.alias


@functools.cache
def _insert_plan(alias: str, model: type[models.Model]) -> tuple[str, list, bool]:
    """Return `_insert`'s statement for `model` on connection `alias`: its SQL,
    its fields, and whether it returns the new id (one the database makes)."""
    connection, meta = connections[alias], model._meta
    quote = connection.ops.quote_name
    made = meta.pk is meta.auto_field  # by the database
    fields = [field for field in meta.concrete_fields if not (made and field is meta.pk)]
    returning = made and connection.features.can_return_columns_from_insert
    sql = (
        f"INSERT INTO {quote(meta.db_table)} "
        f"({', '.join(quote(field.column) for field in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
        + (f" RETURNING {quote(meta.pk.column)}" if returning else "")
    )
    return sql, fields, returning


def _update_row(pk: uuid.UUID, where: dict[str, Any], changes: dict[str, Any]) -> int:
    """UPDATE one Execution row: `changes` where its pk and `where` match; return the row count.

    What `Execution.objects.filter(pk=pk, **where).update(**changes)` does
    (a list in `where` is `__in`), with the statement's text built once per
    shape: every run makes three of these, and building them through the
    ORM's query compiler cost a worker more than sending them. Values go
    through each field's own preparation for the database, as the ORM's do.
    """
    connection = connections[router.db_for_write(Execution)]
    matched = tuple(
        (name, len(value) if isinstance(value, list) else None) for name, value in where.items()
    )
    sql = _update_sql(connection.alias, tuple(changes), matched)
    fields = Execution._meta
    params = [
        fields.get_field(name).get_db_prep_save(value, connection)
        for name, value in changes.items()
    ]
    params.append(fields.pk.get_db_prep_value(pk, connection))
    for name, value in where.items():
        field = fields.get_field(name)
        for item in value if isinstance(value, list) else [value]:
            params.append(field.get_db_prep_value(item, connection))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


@functools.cache
def _update_sql(alias: str, changed: tuple[str, ...], matched: tuple) -> str:
    """Return `_update_row`'s statement on connection `alias` for the changed
    fields and the matched ones (with the length of a matched list)."""
    meta, quote = Execution._meta, connections[alias].ops.quote_name
    sets = ", ".join(f"{quote(meta.get_field(name).column)} = %s" for name in changed)
    conditions = [f"{quote(meta.pk.column)} = %s"]
    for name, count in matched:
        column = quote(meta.get_field(name).column)
        if count is None:
            conditions.append(f"{column} = %s")
        else:
            conditions.append(f"{column} IN ({', '.join(['%s'] * count)})")
    return f"UPDATE {quote(meta.db_table)} SET {sets} WHERE {' AND '.join(conditions)}"


# The fields of a step that people read, in the admin and the API.
STEP_FIELDS = (
    "attempt",
    "kind",
    "name",
    "input",
    "output",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "model",
    "cost_usd",
    "duration_ms",
    "created_at",
)


class ExecutionStep(models.Model):
    class Kind(models.TextChoices):
        LLM = "llm"
        TOOL = "tool"
        NOTE = "note"

    execution = models.ForeignKey(Execution, on_delete=models.CASCADE, related_name="steps")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    name = models.CharField(max_length=255)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    model = models.CharField(
        max_length=255, null=True, blank=True, help_text="For an LLM call: the model it used."
    )
    cost_usd = models.DecimalField(
        "cost (USD)",
        max_digits=20,
        decimal_places=10,
        null=True,
        blank=True,
        help_text="For an LLM call: its cost at the model's prices; empty when unknown.",
    )
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    attempt = models.PositiveIntegerField(
        default=1, help_text="1 for the run's first attempt, 2 after one resume, and so on."
    )
    replay = models.JSONField(
        null=True, blank=True, help_text="What a resumed attempt needs to go on from this step."
    )

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"
