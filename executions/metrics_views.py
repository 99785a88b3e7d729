from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from executions.permissions import StaffOrTenantToken, is_tenant


class MetricsView(APIView):
    """Run counts by status and tier, duration p50/p95, tokens, and (for staff) queue depths.

    Counters since they began, kept in Redis and shared by every process:
    cheap enough to poll. Durations are bucket estimates (the bucket's upper
    bound, in ms). A token sees its own tenant's figures only.
    """

    permission_classes = [StaffOrTenantToken]

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request):
        from tiers import lookup
        from workers import metrics

        if is_tenant(request):
            return Response(metrics.summary(tenant_id=request.user.tenant_id))
        body = metrics.summary()
        body["queues"] = metrics.queue_depths([t.name for t in lookup.tiers_by_priority()])
        return Response(body)
