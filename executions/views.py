"""The REST API: executions for polling dashboards and clients, scoped by tenant."""

from __future__ import annotations

from datetime import UTC

from django.core.exceptions import ValidationError as DjangoValidationError
from django_filters import rest_framework as filters
from django_filters.fields import IsoDateTimeField
from drf_spectacular.utils import extend_schema
from pydantic import ValidationError as PydanticValidationError
from rest_framework import generics, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.filters import OrderingFilter
from rest_framework.response import Response
from rest_framework.reverse import reverse

from aes_project.errors import error_body
from executions import lifecycle
from executions.admission import Refused
from executions.models import Execution
from executions.pagination import NewestFirst, OldestFirst
from executions.permissions import StaffOrTenantToken, is_tenant
from executions.serializers import (
    CancelSerializer,
    ExecutionDetailSerializer,
    ExecutionSerializer,
    ExecutionStepSerializer,
    RunAcceptedSerializer,
)
from protocol.messages import RunRequest
from webhooks.serializers import WebhookSerializer


class UtcDateTimeField(IsoDateTimeField):
    """An ISO-8601 time, turned to UTC: PostgreSQL refuses offsets beyond ±16 h."""

    def to_python(self, value):
        value = super().to_python(value)
        try:
            return value.astimezone(UTC) if value else value
        except OverflowError:
            raise DjangoValidationError("This time is out of range.", code="invalid") from None


class UtcDateTimeFilter(filters.IsoDateTimeFilter):
    field_class = UtcDateTimeField


class ExecutionFilter(filters.FilterSet):
    created_after = UtcDateTimeFilter(field_name="queued_at", lookup_expr="gte")
    created_before = UtcDateTimeFilter(field_name="queued_at", lookup_expr="lt")

    class Meta:
        model = Execution
        fields = ["tenant_id", "session_id", "agent_id", "status", "stop_reason", "tier", "task_id"]


def scoped(request):
    """Return the executions the caller may see: all for staff, its tenant's for a token."""
    queryset = Execution.objects.all()
    if is_tenant(request):
        queryset = queryset.filter(tenant_id=request.user.tenant_id)
    return queryset


class ExecutionViewSet(viewsets.ReadOnlyModelViewSet):
    """Executions, newest first; another tenant's id answers 404 on every route."""

    permission_classes = [StaffOrTenantToken]
    filterset_class = ExecutionFilter
    filter_backends = [filters.DjangoFilterBackend, OrderingFilter]
    ordering_fields = ["queued_at", "finished_at"]
    pagination_class = NewestFirst
    # Any id reaches the view, so a malformed one is a JSON 404 like any other.
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        queryset = scoped(self.request)
        if self.action == "retrieve":
            queryset = queryset.prefetch_related("steps")
        return queryset

    def get_serializer_class(self):
        return ExecutionDetailSerializer if self.action == "retrieve" else ExecutionSerializer

    @extend_schema(request=RunRequest, responses={202: RunAcceptedSerializer})
    def create(self, request):
        """Start a run through the tier's action list; poll the returned url."""
        run = _run_request(request.data)
        if is_tenant(request):
            tenant_id, tier = request.user.tenant_id, request.user.tier
        else:
            tenant_id, tier = run.tenant_id, run.tier
            if not tenant_id or not tier:
                raise ValidationError({"tenant_id": "Staff must name tenant_id and tier."})
        try:
            action_id, execution_id = lifecycle.submit(
                run,
                tenant_id=tenant_id,
                tier=tier,
                action_id=request.headers.get("Idempotency-Key"),
                own_queues_only=is_tenant(request),
            )
        except Refused as refusal:
            return _refused(refusal)
        url = reverse("execution-detail", args=[execution_id], request=request)
        body = {"id": execution_id, "action_id": action_id, "status": "accepted", "url": url}
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": url})

    @extend_schema(request=None, responses={200: ExecutionStepSerializer(many=True)})
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def steps(self, request, pk=None):
        """The execution's LLM and tool calls, in order."""
        execution = self.get_object()
        return Response(ExecutionStepSerializer(execution.steps.all(), many=True).data)

    @extend_schema(request=None, responses={200: WebhookSerializer(many=True)})
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def webhooks(self, request, pk=None):
        """The run's webhook deliveries and every attempt: empty until the run has ended."""
        execution = self.get_object()
        deliveries = execution.webhooks.prefetch_related("attempts").order_by("created_at")
        return Response(WebhookSerializer(deliveries, many=True).data)

    @extend_schema(request=None, responses={202: CancelSerializer})
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def cancel(self, request, pk=None):
        """Cancel a run: a queued one at once, a running one at its next step."""
        execution = self.get_object()
        if not lifecycle.cancel(execution):
            return Response(
                {"error": {"code": "ALREADY_FINISHED", "message": "The run has ended."}},
                status=status.HTTP_409_CONFLICT,
            )
        execution.refresh_from_db(fields=["status"])
        return Response({"id": execution.id, "status": execution.status}, status=202)


def _run_request(body: object) -> RunRequest:
    """Return the POST body as a RunRequest, or raise a 400 naming each bad field."""
    try:
        return RunRequest.model_validate(body)
    except PydanticValidationError as exc:
        details: dict[str, list[str]] = {}
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "non_field_errors"
            details.setdefault(field, []).append(error["msg"])
        raise ValidationError(details) from None


# Where a field of the queued message comes from in a POST.
_REQUEST_FIELDS = {"tenant_tier": "tier", "action_id": "Idempotency-Key"}


def _refused(refusal: Refused) -> Response:
    """Answer a run the consumer would refuse: 413 when too large, else 400 naming the field."""
    if refusal.code == "MESSAGE_TOO_LARGE":
        code, status_code = refusal.code, status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    elif refusal.code == "INVALID_CALLBACK_QUEUE":
        code, status_code = refusal.code, status.HTTP_400_BAD_REQUEST
    else:
        code, status_code = "INVALID", status.HTTP_400_BAD_REQUEST
    field = refusal.field or "non_field_errors"
    field = _REQUEST_FIELDS.get(field, field.removeprefix("data."))
    body = error_body(code, refusal.message, {field: [refusal.message]})
    return Response(body, status=status_code)


class SessionExecutionsView(generics.ListAPIView):
    """A session's executions, oldest first: the conversation as it happened."""

    permission_classes = [StaffOrTenantToken]
    serializer_class = ExecutionSerializer
    pagination_class = OldestFirst

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Execution.objects.none()
        return scoped(self.request).filter(session_id=self.kwargs["session_id"])

    def list(self, request, *args, **kwargs):
        if not self.get_queryset().exists():
            raise NotFound("No executions in this session.")
        return super().list(request, *args, **kwargs)
