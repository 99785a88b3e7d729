"""Cursor pagination of executions, refusing a cursor the API did not hand out with a 400."""

from __future__ import annotations

from datetime import UTC

from django.utils.dateparse import parse_datetime
from django.utils.timezone import is_naive, make_aware
from rest_framework import exceptions, pagination


class InvalidCursor(exceptions.APIException):
    status_code = 400
    default_detail = "Invalid cursor: follow the next and previous links as given."
    default_code = "invalid_cursor"


class NewestFirst(pagination.CursorPagination):
    """Executions, newest first.

    A cursor stays stable while new runs arrive, unlike page numbers. Every
    ordering offered (`queued_at`, `finished_at`) is on a time, so a cursor's
    position must be one.
    """

    ordering = ("-queued_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request):
        """Return the request's cursor with its position in UTC, or raise InvalidCursor.

        DRF answers 404 to a cursor that does not decode and lets a position
        that is no time reach the database (a 500); both are a 400 here.
        """
        try:
            cursor = super().decode_cursor(request)
        except exceptions.NotFound:
            raise InvalidCursor() from None
        if cursor is None or cursor.position is None:
            return cursor
        return cursor._replace(position=utc_position(cursor.position))


class OldestFirst(NewestFirst):
    """Executions, oldest first: a session's conversation as it happened."""

    ordering = ("queued_at", "id")


def utc_position(position: str) -> str:
    """Return a cursor position as an ISO-8601 time in UTC, or raise InvalidCursor.

    In UTC because PostgreSQL refuses offsets beyond ±16 h; a naive time is
    taken as UTC, as the service writes none.
    """
    try:
        moment = parse_datetime(position)
    except ValueError:  # well formed but impossible: month 13, hour 99, offset +99:00
        moment = None
    if moment is None:
        raise InvalidCursor()
    if is_naive(moment):
        moment = make_aware(moment, UTC)
    try:
        return moment.astimezone(UTC).isoformat()
    except OverflowError:  # before year 1 or after 9999 once in UTC
        raise InvalidCursor() from None
