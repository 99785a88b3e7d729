"""`manage.py run_dev_peers`: play AMS, CS, ES and QS over Redis for local runs."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from aes_project import processes
from standins.peers import SERVICES, DevPeers, load_fixture

# Used only when the Tier table is empty (e.g. migrations not run yet), so a demo still works.
FALLBACK_TIERS = ["enterprise", "professional", "advance", "free"]


class Command(BaseCommand):
    help = "Run the stand-in peer services (AMS, CS, ES, QS) until SIGTERM/SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--fixture", help="JSON fixture (default: standins/fixtures/...)")
        parser.add_argument(
            "--silent",
            default="",
            help=f"comma-separated services that take messages but never answer: {SERVICES}",
        )
        parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")

    def handle(self, *args: Any, **options: Any) -> None:
        from tiers.models import Tier  # the tiers app owns the table; import once apps are ready

        silent = frozenset(s.strip() for s in options["silent"].split(",") if s.strip())
        if silent - set(SERVICES):
            raise CommandError(f"--silent takes services among {', '.join(SERVICES)}")
        try:
            fixture = load_fixture(options["fixture"])
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read fixture: {exc}") from exc
        tiers = list(Tier.objects.order_by("priority").values_list("name", flat=True))
        if not tiers:
            self.stderr.write(f"No tiers in the database; serving {FALLBACK_TIERS}")
            tiers = FALLBACK_TIERS
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

        client = redis.Redis.from_url(settings.REDIS_URL)
        peers = DevPeers(client, tiers, fixture, silent=silent, delay_seconds=options["delay"])
        stop = threading.Event()
        processes.on_stop_signals(stop.set)
        quiet = f" (silent: {', '.join(sorted(silent))})" if silent else ""
        self.stdout.write(f"Dev peers serving {', '.join(peers.queues)}{quiet}")
        self.stdout.flush()
        peers.serve(stop)
        self.stdout.write("Dev peers stopped.")
