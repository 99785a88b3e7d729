"""`python manage.py reap_executions`: one reaper pass, as run_execution_worker does."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from workers import reaper


class Command(BaseCommand):
    help = "Re-enqueue lost jobs, close abandoned runs and push unsent callbacks, once."

    def handle(self, *args, **options) -> None:
        done = reaper.reap()
        if not done:
            self.stdout.write("another reaper pass is running; nothing done")
            return
        self.stdout.write(", ".join(f"{name}={count}" for name, count in done.items()))
