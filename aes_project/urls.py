from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from aes_project.health import health, ready
from executions.metrics_views import prometheus_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include("executions.urls")),
    path("health", health, name="health"),
    path("ready", ready, name="ready"),
    path("metrics", prometheus_view, name="prometheus-metrics"),
]
