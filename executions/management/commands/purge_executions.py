"""`python manage.py purge_executions --older-than-days N`: delete old ended runs."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from executions.models import Execution


class Command(BaseCommand):
    help = (
        "Delete ended runs (with their steps) that finished more than N days ago and whose "
        "callback was pushed. A message redelivered after its run is deleted runs again."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--older-than-days", type=float, required=True)
        parser.add_argument("--batch-size", type=int, default=1000)
        parser.add_argument("--dry-run", action="store_true", help="count, delete nothing")

    def handle(self, *args, older_than_days: float, batch_size: int, dry_run: bool, **options):
        if older_than_days <= 0:
            raise CommandError("--older-than-days must be more than 0")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        before = timezone.now() - timedelta(days=older_than_days)
        count = Execution.purge(before, batch_size=batch_size, dry_run=dry_run)
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(f"{verb} {count} run(s) finished before {before:%Y-%m-%d %H:%M:%S} UTC")
