"""`python manage.py webhook_secret <tenant_id> [--rotate [--overlap-hours H]]`.

Prints the tenant's webhook signing secret as its last line, creating it if
the tenant has none; with --rotate, a new one, while the one it replaces
keeps signing beside it for --overlap-hours (24 by default; 0 stops it now).
"""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from webhooks.models import ROTATION_OVERLAP, SigningSecret


class Command(BaseCommand):
    help = "Print a tenant's webhook signing secret (created if none), or rotate it."

    def add_arguments(self, parser) -> None:
        parser.add_argument("tenant_id")
        parser.add_argument(
            "--rotate", action="store_true", help="make a new secret; the old one signs too a while"
        )
        parser.add_argument(
            "--overlap-hours",
            type=float,
            default=ROTATION_OVERLAP.total_seconds() / 3600,
            help="hours the replaced secret keeps signing beside the new one (default 24)",
        )

    def handle(self, *args, tenant_id: str, rotate: bool, overlap_hours: float, **options) -> None:
        if not tenant_id.strip() or "\x00" in tenant_id or len(tenant_id) > 255:
            raise CommandError("a tenant id is 1 to 255 characters, without NUL")
        if not 0 <= overlap_hours <= 24 * 365:
            raise CommandError("--overlap-hours must lie between 0 and a year")
        if rotate:
            secret = SigningSecret.rotate(tenant_id, timedelta(hours=overlap_hours))
            self.stderr.write(
                f"New webhook signing secret for tenant {tenant_id!r}; the one it replaces "
                f"signs beside it for {overlap_hours:g} hour(s)."
            )
        else:
            secret = SigningSecret.current(tenant_id)
            self.stderr.write(f"Webhook signing secret of tenant {tenant_id!r}:")
        self.stdout.write(secret.secret)
