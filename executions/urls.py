from django.urls import path
from rest_framework.routers import DefaultRouter

from executions.events_views import execution_events
from executions.metrics_views import MetricsView
from executions.views import ExecutionViewSet, SessionExecutionsView

router = DefaultRouter()
router.register("executions", ExecutionViewSet, basename="execution")

urlpatterns = [
    # Ahead of the router's routes, whose detail pattern takes any id.
    path("executions/<str:pk>/events/", execution_events, name="execution-events"),
    *router.urls,
    path(
        "sessions/<str:session_id>/executions/",
        SessionExecutionsView.as_view(),
        name="session-executions",
    ),
    path("metrics/", MetricsView.as_view(), name="api-metrics"),
]
