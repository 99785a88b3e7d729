"""DRF authentication with `Authorization: Bearer <token>`: a tenant, not a user."""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework import authentication, exceptions

from tokens.models import ApiToken


@dataclass(frozen=True)
class TenantPrincipal:
    """Who a token speaks for; stands in request.user for token requests."""

    tenant_id: str
    tier: str
    token_id: int
    is_authenticated: bool = True
    is_staff: bool = False
    is_active: bool = True

    def __str__(self) -> str:
        return f"tenant:{self.tenant_id}"


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme != self.keyword:
            return None
        token = token.strip()
        if not token:
            raise exceptions.AuthenticationFailed("Empty bearer token.")
        row = ApiToken.find(token)
        if row is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        row.touch()
        return TenantPrincipal(row.tenant_id, row.tier, row.pk), row

    def authenticate_header(self, request) -> str:
        return self.keyword
