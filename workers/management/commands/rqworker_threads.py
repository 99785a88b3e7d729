"""`python manage.py rqworker_threads QUEUE...`: one RQ worker process running
up to --slots runs at once, one thread each (workers/threaded.py).

`run_execution_worker --runs-per-worker N` starts these; run one by hand to
add capacity on another machine.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from aes_project.processes import on_stop_signals
from workers.threaded import ThreadedHost


class Command(BaseCommand):
    help = "Run up to --slots RQ jobs at once in this process, one thread each."

    def add_arguments(self, parser) -> None:
        parser.add_argument("queues", nargs="+", help="RQ queues (tiers), highest priority first.")
        parser.add_argument(
            "--slots",
            type=int,
            default=settings.AES_RUNS_PER_WORKER,
            help="Runs in flight at once (default: AES_RUNS_PER_WORKER).",
        )
        parser.add_argument("--burst", action="store_true", help="Drain the queues and exit.")

    def handle(self, *args, queues: list[str], slots: int, burst: bool, **options) -> None:
        if slots < 1:
            raise CommandError("--slots must be 1 or more")
        host = ThreadedHost(queues, slots, burst=burst)
        on_stop_signals(host.stop)
        host.run()
