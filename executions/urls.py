from rest_framework.routers import DefaultRouter

from executions.views import ExecutionViewSet

router = DefaultRouter()
router.register("executions", ExecutionViewSet, basename="execution")

urlpatterns = router.urls
