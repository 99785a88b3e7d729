"""`python manage.py resend_callbacks`: list undelivered callbacks, or push callbacks again."""

from __future__ import annotations

import uuid

from django.core.management.base import BaseCommand, CommandError

from executions import outbox
from executions.models import Execution


class Command(BaseCommand):
    help = (
        "Without arguments, list final runs whose callback was not pushed. "
        "With execution ids, push their callbacks (again). "
        "With --undelivered, push every callback not yet pushed."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("execution_ids", nargs="*")
        parser.add_argument("--undelivered", action="store_true")

    def handle(self, *args, execution_ids: list[str], undelivered: bool, **options) -> None:
        pending = Execution.objects.filter(callback__isnull=False, callback_sent_at__isnull=True)
        if not execution_ids and not undelivered:
            for execution in pending.order_by("finished_at"):
                self.stdout.write(
                    f"{execution.id} {execution.status} {execution.callback_queue or '-'} "
                    f"finished {execution.finished_at:%Y-%m-%d %H:%M:%S}"
                )
            self.stdout.write(f"{pending.count()} undelivered")
            return
        if undelivered:
            runs = list(pending)
        else:
            for value in execution_ids:
                try:
                    uuid.UUID(value)
                except ValueError:
                    raise CommandError(f"not an execution id: {value!r}") from None
            runs = list(Execution.objects.filter(pk__in=execution_ids))
            missing = set(execution_ids) - {str(e.id) for e in runs}
            if missing:
                raise CommandError(f"no such execution: {', '.join(sorted(missing))}")
        for execution in runs:
            if execution.callback is None:
                self.stderr.write(f"{execution.id}: still {execution.status}, no callback yet")
                continue
            outbox.deliver(execution, again=not undelivered)
            self.stdout.write(f"{execution.id}: pushed to {execution.callback_queue or '(none)'}")
