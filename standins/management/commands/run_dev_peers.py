"""`manage.py run_dev_peers`: play AMS, CS, ES and QS over Redis for local runs."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from aes_project import processes
from standins.peers import SERVICES, DevPeers, load_fixture
from tiers import lookup


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
        silent = frozenset(s.strip() for s in options["silent"].split(",") if s.strip())
        if silent - set(SERVICES):
            raise CommandError(f"--silent takes services among {', '.join(SERVICES)}")
        try:
            fixture = load_fixture(options["fixture"])
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read fixture: {exc}") from exc
        tiers = _tier_names()
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


def _tier_names() -> list[str]:
    """The tiers of the Tier table, the one served first first: the lists the peers serve."""
    try:
        tiers = [tier.name for tier in lookup.tiers_by_priority()]
    except DatabaseError as exc:
        reason = str(exc).strip().split("\n", 1)[0] or type(exc).__name__
        raise CommandError(
            f"cannot read the Tier table ({reason}): is the database up and migrated?"
        ) from exc
    if not tiers:
        raise CommandError("no tiers are defined: run `python manage.py migrate` first")
    return tiers
