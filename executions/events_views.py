"""GET /api/executions/{id}/events/: a run's events as Server-Sent Events (PROTOCOL.md §8).

The route is async: a client following a run waits in the event loop on an
`XREAD BLOCK`, holding a Redis connection but no thread and no database
connection. Who may read what is decided first, by the same DRF
authentication, permission, throttle and error body as every API route
(`EventsAccess`, run in a thread).

- A run the tenant cannot see answers 404, another tenant's like one that
  does not exist.
- A run the tenant submitted through the API that the consumer has not
  recorded yet (its id is known from the POST) is followed from its first
  event: the stream simply has none yet.
- A run whose stream has expired is answered from the database: its steps
  as `step` events numbered 1..n, then `done` as n + 1 (sent whatever
  `after` says, so that a client always learns that the run ended).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django import db
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from aes_project import redis_clients
from executions import events
from executions.models import FINAL_STATUSES, Execution
from executions.permissions import StaffOrTenantToken, is_tenant
from executions.views import scoped
from protocol import keys

# At most this many events go out per XREAD.
READ_COUNT = 100
MAX_SEQ = 2**63 - 1


class _JsonOnly(DefaultContentNegotiation):
    """Errors are JSON whatever the client accepts (an EventSource sends text/event-stream)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class EventsAccess(APIView):
    """Decide whether the caller may follow the run; answer where its events start."""

    permission_classes = [StaffOrTenantToken]
    content_negotiation_class = _JsonOnly

    def get(self, request, pk: str) -> Response:
        try:
            return Response({"after": _after(request), "pending": not self._visible(request, pk)})
        finally:
            # A follower waits long: it must not hold a database connection meanwhile.
            if not db.connection.in_atomic_block:
                db.connection.close()

    @staticmethod
    def _visible(request, pk: str) -> bool:
        """Return True when the run is recorded, False when it is submitted but not yet."""
        try:
            uuid.UUID(pk)
        except ValueError:
            raise NotFound() from None
        if scoped(request).filter(pk=pk).exists():
            return True
        # Submitted through the API and not recorded yet (lifecycle.submit).
        submitter = redis_clients.shared().get(keys.submitted(pk))
        if submitter is not None and (
            not is_tenant(request) or submitter.decode() == request.user.tenant_id
        ):
            return False
        raise NotFound()


def _after(request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query_params.get("after") or "0"
    try:
        after = int(raw)
    except ValueError:
        after = -1
    # A stream id's parts are 64-bit: a larger one would be a Redis error.
    if not 0 <= after <= MAX_SEQ:
        raise ValidationError({"after": ["A non-negative integer, the seq of the last event."]})
    return after


_access = EventsAccess.as_view()


async def execution_events(request: HttpRequest, pk: str) -> HttpResponse:
    """Answer the run's events as text/event-stream, ending after `done`."""
    try:
        # One spelling of the id for the keys: UUID() takes braces, no hyphens, capitals.
        pk = str(uuid.UUID(pk))
    except ValueError:
        pass  # answered 404 by EventsAccess, in the API's error body
    answer = await sync_to_async(_access)(request, pk=pk)
    if answer.status_code != 200:
        return answer
    response = StreamingHttpResponse(
        _frames(pk, answer.data["after"]), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    # nginx would otherwise buffer the stream.
    response["X-Accel-Buffering"] = "no"
    return response


def frame(seq: int, event_type: str, data: str) -> str:
    """Return one Server-Sent Event."""
    return f"id: {seq}\nevent: {event_type}\ndata: {data}\n\n"


async def _frames(execution_id: str, after: int) -> AsyncIterator[str]:
    keepalive = settings.AES_EVENTS_KEEPALIVE_SECONDS
    client = redis_clients.async_blocking(keepalive)
    stream = keys.events(execution_id)
    # Sent at once, so the client knows it is connected before the first event.
    yield ": following\n\n"
    if await _ended_before(client, stream, after):
        return  # a reconnection after `done`: nothing more will come
    while True:
        if not await client.exists(stream):
            recorded, ended = await sync_to_async(_ended_from_database)(execution_id, after)
            if ended:
                for text in ended:
                    yield text
                return
            if not recorded and not await client.exists(stream, keys.submitted(execution_id)):
                # Neither recorded nor waiting to be (a dead-lettered submission).
                return
        read = await client.xread(
            {stream: f"0-{after}"}, count=READ_COUNT, block=int(keepalive * 1000)
        )
        if not read:
            yield ": keep-alive\n\n"
            continue
        for _, fields in read[0][1]:
            raw = fields[b"event"].decode()
            event = json.loads(raw)
            after = event["seq"]
            yield frame(after, event["type"], raw)
            if event["type"] == events.DONE:
                return


async def _ended_before(client, stream: str, after: int) -> bool:
    """Return True when the stream's last event is a `done` at or before seq `after`."""
    last = await client.xrevrange(stream, count=1)
    if not last:
        return False
    event = json.loads(last[0][1][b"event"])
    return event["type"] == events.DONE and event["seq"] <= after


def _ended_from_database(execution_id: str, after: int) -> tuple[bool, list[str]]:
    """Return whether the run is recorded and, once it has ended, its frames from the rows."""
    try:
        execution = Execution.objects.filter(pk=execution_id).first()
        if execution is None or execution.status not in FINAL_STATUSES:
            return execution is not None, []
        steps = list(execution.steps.all())
        texts = []
        for seq, step in enumerate(steps, start=1):
            if seq > after:
                texts.append(_event(execution, seq, events.STEP, step.created_at, step=step))
        callback = (execution.callback or {}).get("data", {})
        texts.append(
            _event(execution, len(steps) + 1, events.DONE, execution.finished_at, callback=callback)
        )
        return True, texts
    finally:
        if not db.connection.in_atomic_block:
            db.connection.close()


def _event(execution: Execution, seq: int, event_type: str, at: Any, **fields: Any) -> str:
    if "step" in fields:
        fields["step"] = events.step_fields(fields["step"])
    data = {
        "seq": seq,
        "execution_id": str(execution.id),
        "type": event_type,
        "at": at.isoformat() if at else None,
        **fields,
    }
    return frame(seq, event_type, json.dumps(data, separators=(",", ":"), default=str))
