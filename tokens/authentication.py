"""DRF authentication: `Authorization: Bearer <token>` (a tenant, not a user) and HTTP Basic.

Both go through tokens.guard: an address that keeps failing is answered 429
before its credentials are checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from drf_spectacular.authentication import BasicScheme
from rest_framework import authentication, exceptions

from tokens import guard
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
        with guard.guarded(request):
            row = self._find(token.strip())
        row.touch()
        return TenantPrincipal(row.tenant_id, row.tier, row.pk), row

    def _find(self, token: str) -> ApiToken:
        if not token:
            raise exceptions.AuthenticationFailed("Empty bearer token.")
        row = ApiToken.find(token)
        if row is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        return row

    def authenticate_header(self, request) -> str:
        return self.keyword


class GuardedBasicAuthentication(authentication.BasicAuthentication):
    """DRF's HTTP Basic, refused unchecked from an address over its failure budget."""

    def authenticate(self, request):
        # The test DRF's own authenticate() makes: other schemes pass through unguarded.
        words = authentication.get_authorization_header(request).split()
        if not words or words[0].lower() != b"basic":
            return None
        with guard.guarded(request):
            return super().authenticate(request)


class GuardedBasicScheme(BasicScheme):
    """Shows GuardedBasicAuthentication in the OpenAPI schema as DRF's own Basic (basicAuth).

    drf-spectacular matches an authenticator's exact class, not its subclasses.
    """

    target_class = "tokens.authentication.GuardedBasicAuthentication"
