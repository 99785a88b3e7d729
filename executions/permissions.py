from __future__ import annotations

from rest_framework.permissions import BasePermission

from tokens.authentication import TenantPrincipal


class StaffOrTenantToken(BasePermission):
    """Staff see everything; a tenant token sees its tenant's runs only."""

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and (user.is_staff or is_tenant(request)))


def is_tenant(request) -> bool:
    return isinstance(request.user, TenantPrincipal)
