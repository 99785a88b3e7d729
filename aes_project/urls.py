from django.contrib import admin
from django.urls import include, path

from executions.views import health

urlpatterns = [
    path("admin/django-rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
    path("api/", include("executions.urls")),
    path("health", health, name="health"),
]
