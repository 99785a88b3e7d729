"""`python manage.py issue_api_token <tenant_id> [--tier T] [--name N]`.

Prints the token once; its last line of output is the token alone, for scripts.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tiers import lookup
from tokens.models import ApiToken


class Command(BaseCommand):
    help = "Issue an API token for a tenant and print it (shown only this once)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("tenant_id")
        parser.add_argument("--tier", default="free", help="tier of the runs it starts")
        parser.add_argument("--name", default="", help="what the token is for")

    def handle(self, *args, tenant_id: str, tier: str, name: str, **options) -> None:
        if lookup.get_tier(tier) is None:
            known = ", ".join(t.name for t in lookup.tiers_by_priority())
            raise CommandError(f"unknown tier {tier!r}; tiers: {known}")
        try:
            row, token = ApiToken.issue(tenant_id, tier, name)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stderr.write(
            f"Token {row} for tenant {tenant_id!r}, tier {tier}. It is shown only now; "
            "send it as 'Authorization: Bearer <token>'."
        )
        self.stdout.write(token)
