from __future__ import annotations

from rest_framework.throttling import SimpleRateThrottle

from executions.permissions import is_tenant


class PerCallerThrottle(SimpleRateThrottle):
    """One budget per API token, per staff user, or per address when anonymous.

    Counts live in the Redis cache, so every web process shares them.
    """

    scope = "caller"

    def get_cache_key(self, request, view) -> str:
        if is_tenant(request):
            ident = f"token:{request.user.token_id}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
