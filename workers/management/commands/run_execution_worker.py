"""`python manage.py run_execution_worker`: the service's consumer and its RQ workers."""

from __future__ import annotations

import logging
import sys
import threading
import time

import redis
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

from aes_project import redis_clients
from aes_project.processes import on_stop_signals
from protocol import keys
from tiers import lookup
from webhooks.sender import Sender
from workers import liveness, reaper
from workers.consumer import Consumer
from workers.supervisor import WorkerPool

log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Consume execution actions from Redis and supervise RQ workers that run them."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--rq-workers",
            type=int,
            default=1,
            help="RQ worker processes to start and supervise (0: run them elsewhere).",
        )
        parser.add_argument(
            "--runs-per-worker",
            type=int,
            default=settings.AES_RUNS_PER_WORKER,
            help="Runs each RQ worker process executes at once, in threads; 1 forks a "
            "work-horse per run (default: AES_RUNS_PER_WORKER, 500).",
        )
        parser.add_argument(
            "--burst",
            action="store_true",
            help="Drain the action lists, then the RQ queues, send the webhooks due, and exit.",
        )

    def handle(self, *args, rq_workers: int, runs_per_worker: int, burst: bool, **options) -> None:
        if rq_workers < 0:
            raise CommandError("--rq-workers must be 0 or more")
        if runs_per_worker < 1:
            raise CommandError("--runs-per-worker must be 1 or more")
        # A socket timeout shorter than a blocking read's wait would raise
        # spurious TimeoutErrors and look like a dead Redis; none at all
        # could hang forever on a dead link.
        timeout = redis_clients.blocking().connection_pool.connection_kwargs.get("socket_timeout")
        if timeout is None or timeout <= keys.BLOCK_SECONDS:
            raise CommandError(
                f"blocking Redis reads wait {keys.BLOCK_SECONDS}s but their socket "
                f"timeout is {timeout}: it must be longer"
            )
        tiers = [tier.name for tier in lookup.tiers_by_priority()]
        if not tiers:
            raise CommandError("no tiers are defined: run `python manage.py migrate` first")
        consumer = Consumer(tiers)
        pool = WorkerPool(rq_workers, tiers, burst=burst, runs_per_worker=runs_per_worker)
        on_stop_signals(consumer.stop)
        try:
            if burst:
                consumer.run(burst=True)
                pool.start()
                pool.wait()
                Sender(consumer.stopping).drain()
                return
            pool.start()
            supervisor = threading.Thread(
                target=self._supervise, args=(pool, consumer), name="supervisor", daemon=True
            )
            supervisor.start()
            # Webhooks go out beside the consumer, never in its loop or in a run.
            sender = threading.Thread(
                target=Sender(consumer.stopping).run, name="webhook-sender", daemon=True
            )
            sender.start()
            consumer.run()
            sender.join(timeout=settings.AES_WEBHOOK_TIMEOUT_SECONDS + 5)
        except redis.ConnectionError as exc:
            self.stderr.write(f"Redis is unreachable: {exc}")
            sys.exit(1)
        finally:
            pool.stop()

    @staticmethod
    def _supervise(pool: WorkerPool, consumer: Consumer) -> None:
        """Restart dead RQ workers; look for lost runs every third of AES_RUN_HEARTBEAT_TTL;
        reap every AES_REAPER_INTERVAL_SECONDS."""
        passes = [
            (liveness.find_lost, settings.AES_RUN_HEARTBEAT_TTL / 3),
            (reaper.reap, settings.AES_REAPER_INTERVAL_SECONDS),
        ]
        due = [0.0] * len(passes)
        while not consumer.stopping.wait(0.5):
            pool.supervise()
            for index, (run_pass, interval) in enumerate(passes):
                if time.monotonic() < due[index]:
                    continue
                due[index] = time.monotonic() + interval
                try:
                    run_pass()
                except Exception:
                    log.exception("%s failed; trying again later", run_pass.__qualname__)
                finally:
                    close_old_connections()
