"""Webhook delivery from the rows: how soon, how fast: `python -m bench.webhooks`.

    pip install -r bench/requirements.txt   # once: the service's pins plus psutil

Starts `run_execution_worker --rq-workers 0` (its webhook sender is what is
measured), then ends --runs runs at once that each asked for a webhook, as
Execution.finish does, to a receiver in this process on 127.0.0.1 that
answers after --receiver-latency seconds (with --fail-first, each
webhook's first attempt gets a 503 and its retry, --retry-seconds later,
a 200). Reports, per webhook, the seconds from its recording to the
receiver's first request (p50, p95, max), the seconds until every one was
delivered, deliveries per second, and the attempts the rows recorded.
Uses a private SQLite file and Redis unless --database-url/--redis-url are
given. Writes the figures as one flat JSON document (`--json`, by default
bench/results/webhooks.json).
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench import figures
from bench.common import MANAGE, percentile, prepare, wait_until

TENANT = "bench-tenant"


class Receiver:
    """Records when each webhook-id first arrived and when it got a 2xx."""

    def __init__(self, latency: float, fail_first: bool) -> None:
        self.first_seen: dict[str, float] = {}
        self.delivered: dict[str, float] = {}
        self.requests = 0
        lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                webhook_id = self.headers["webhook-id"]
                with lock:
                    receiver.requests += 1
                    first = webhook_id not in receiver.first_seen
                    receiver.first_seen.setdefault(webhook_id, time.time())
                time.sleep(latency)
                status = 503 if fail_first and first else 200
                if status == 200:
                    with lock:
                        receiver.delivered.setdefault(webhook_id, time.time())
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def end_runs(count: int, url: str) -> dict[str, float]:
    """End `count` runs that asked for a webhook; return each webhook's recording time."""
    from executions.models import Execution
    from executions.outcome import LoopResult, Outcome

    recorded = {}
    for _ in range(count):
        action_id = str(uuid.uuid4())
        request = {
            "action_id": action_id,
            "tenant_id": TENANT,
            "task_id": action_id,
            "data": {"agent_id": "bench", "message": "hi", "webhook_url": url},
        }
        execution, _ = Execution.record(
            TENANT,
            action_id,
            task_id=action_id,
            tier="free",
            agent_id="bench",
            message="hi",
            request=request,
        )
        execution.finish(Outcome.completed(LoopResult(response="hello", iterations=1)))
        recorded[execution.callback["event_id"]] = time.time()
    return recorded


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.webhooks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--receiver-latency", type=float, default=0.0, help="seconds per answer")
    parser.add_argument(
        "--fail-first", action="store_true", help="answer 503 to each first attempt"
    )
    parser.add_argument(
        "--retry-seconds", type=float, default=1.0, help="AES_WEBHOOK_RETRY_SECONDS"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="AES_WEBHOOK_CONCURRENCY")
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--flush", action="store_true", help="empty the given Redis database first")
    figures.add_json_option(parser, "webhooks")
    args = parser.parse_args()
    machine = figures.machine()
    env = prepare(args.database_url, args.redis_url, flush=args.flush)
    receiver = Receiver(args.receiver_latency, args.fail_first)
    from webhooks.models import Webhook, WebhookAttempt

    service = env.start(
        [*MANAGE, "run_execution_worker", "--rq-workers", "0"],
        "service",
        AES_WEBHOOK_ALLOWED_HOSTS="127.0.0.1:*",
        AES_WEBHOOK_RETRY_SECONDS=str(args.retry_seconds),
        AES_WEBHOOK_CONCURRENCY=str(args.concurrency),
    )
    try:
        time.sleep(5)  # the service is up and its sender polling
        if service.poll() is not None:
            raise SystemExit(f"the service exited; see {env.workdir}/service.log")
        started = time.time()
        recorded = end_runs(args.runs, receiver.url)
        recording = time.time() - started
        wait_until(lambda: len(receiver.delivered) >= args.runs, 60 + args.runs, "every delivery")
        wait_until(
            lambda: Webhook.objects.filter(status="delivered").count() >= args.runs,
            30,
            "the rows to say delivered",
        )
    finally:
        env.stop_children()
        receiver.server.shutdown()
    latencies = [receiver.first_seen[event] - at for event, at in recorded.items()]
    done = max(receiver.delivered.values()) - started
    results = {
        "webhooks": args.runs,
        "recording_all_s": round(recording, 3),
        "first_attempt_after_recording_s_p50": round(percentile(latencies, 50), 3),
        "first_attempt_after_recording_s_p95": round(percentile(latencies, 95), 3),
        "first_attempt_after_recording_s_max": round(max(latencies), 3),
        "all_delivered_after_s": round(done, 3),
        "deliveries_per_s": round(args.runs / done, 1),
        "receiver_requests": receiver.requests,
        "attempts_recorded": WebhookAttempt.objects.count(),
        "webhooks_delivered": Webhook.objects.filter(status="delivered").count(),
    }
    for name, value in results.items():
        print(f"{name:40} {value}")
    figures.write(args.json, figures.document("webhooks", args, machine, results))


if __name__ == "__main__":
    main()
