from __future__ import annotations

from django.db import connection
from django.http import JsonResponse
from django_filters import rest_framework as filters
from rest_framework import pagination, viewsets

from executions.models import Execution
from executions.serializers import ExecutionDetailSerializer, ExecutionSerializer


class ExecutionFilter(filters.FilterSet):
    class Meta:
        model = Execution
        fields = ["tenant_id", "session_id", "agent_id", "status", "tier", "task_id"]


class NewestFirst(pagination.CursorPagination):
    # A cursor stays stable while new runs arrive, unlike page numbers.
    ordering = ("-queued_at", "-id")
    page_size = 50


class ExecutionViewSet(viewsets.ReadOnlyModelViewSet):
    """Executions, newest first, with their steps on the detail route."""

    filterset_class = ExecutionFilter
    pagination_class = NewestFirst

    def get_queryset(self):
        # The one place that decides what a caller may see; tenant-scoped
        # tokens will narrow it here.
        queryset = Execution.objects.all()
        if self.action == "retrieve":
            queryset = queryset.prefetch_related("steps")
        return queryset

    def get_serializer_class(self):
        return ExecutionDetailSerializer if self.action == "retrieve" else ExecutionSerializer


def health(request):
    """Return 200 when the database and Redis answer, 503 otherwise."""
    from workers import redis_client

    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        redis_client.shared().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status=200 if healthy else 503,
    )
