"""What the fair floor's workers run: a run's irreducible work as one RQ job.

Importable only once Django is set up: `manage.py rqworker --worker-class
bench.floor_work.ForkingFloorWorker` (the forking shape) and
`python -m bench.floor_worker` (the threaded shape) load it. bench/floor.py
creates the table and enqueues the jobs.

One job does what any run must at least do, and nothing of the AES's own:
insert one row, update it twice (running; then completed, with the answer
and its usage), make one chat completion through the OpenAI client against
the same LLM stand-in as the AES, and LPUSH a small JSON callback. The row
is in a plain table of the bench's own, `bench_floor_run`, with a primary key
and no other index; statements go through Django's connection in autocommit,
as the AES's do. With a connection pool (threaded workers) the job holds a
connection only while it writes, as an AES run does; the call to the model
waits without one.
"""

from __future__ import annotations

import json
import uuid

from django.db import connection
from openai.types.chat import ChatCompletion
from rq.serializers import JSONSerializer
from rq.worker import Worker

from aes_project import redis_clients
from executions.agent import llm
from workers.rq_worker import ExecutionWorker
from workers.threaded import ThreadSlot

JOB = "bench.floor_work.run"
TABLE = "bench_floor_run"
# What an AES run of `plain-bot` sends the model, near enough: its system
# prompt (standins/fixtures/dev_peers.json), its model and its limits.
SYSTEM_PROMPT = "You are a friendly assistant. Keep answers short."
MODEL = "gpt-4o-mini"
LLM_TIMEOUT_SECONDS = 60.0

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id varchar(36) PRIMARY KEY,
    status varchar(16) NOT NULL,
    message text NOT NULL,
    request text NOT NULL,
    response text,
    prompt_tokens integer,
    completion_tokens integer,
    queued_at timestamp with time zone NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone
)
"""


def create_table() -> None:
    """Create the floor's table in the bench's database (once per database)."""
    with connection.cursor() as cursor:
        cursor.execute(CREATE_TABLE)


def _release_connection() -> None:
    # As executions/turns.py does (release_connection): with a pool, give the connection back
    # while waiting; without one, keep it for the next statement.
    if connection.settings_dict.get("OPTIONS", {}).get("pool"):
        connection.close()


def run(job_id: str, message: str, callback_queue: str) -> str:
    """One run's irreducible work: 1 INSERT, 2 UPDATEs, 1 chat completion, 1 LPUSH."""
    request = {"job_id": job_id, "message": message, "callback_queue": callback_queue}
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (id, status, message, request, queued_at) "
            "VALUES (%s, 'queued', %s, %s, CURRENT_TIMESTAMP)",
            [job_id, message, json.dumps(request)],
        )
        cursor.execute(
            f"UPDATE {TABLE} SET status = 'running', started_at = CURRENT_TIMESTAMP WHERE id = %s",
            [job_id],
        )
    _release_connection()
    # As executions/agent/llm.py calls the model: the client's `post`, typed answer.
    answer = llm.client().post(
        "/chat/completions",
        body={
            "model": MODEL,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": message},
            ],
            "temperature": 0.7,
            "max_tokens": 256,
        },
        cast_to=ChatCompletion,
        options={"timeout": LLM_TIMEOUT_SECONDS},
    )
    content = answer.choices[0].message.content
    usage = answer.usage
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TABLE} SET status = 'completed', response = %s, prompt_tokens = %s, "
            "completion_tokens = %s, finished_at = CURRENT_TIMESTAMP WHERE id = %s",
            [content, usage.prompt_tokens, usage.completion_tokens, job_id],
        )
    _release_connection()
    callback = {
        "event_id": str(uuid.uuid4()),
        "event_type": "execution.callback",
        "correlation_id": job_id,
        "data": {
            "execution_id": job_id,
            "status": "completed",
            "response": content,
            "iterations": 1,
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
            },
        },
    }
    redis_clients.shared().lpush(callback_queue, json.dumps(callback))
    return "completed"


class ForkingFloorWorker(ExecutionWorker):
    """The AES's forking worker (warm start, connections closed before each fork),
    taking the floor's job: ExecutionWorker itself refuses all but the AES's."""

    def execute_job(self, job, queue) -> None:
        Worker.execute_job(self, job, queue)


class FloorSlot(ThreadSlot):
    """A ThreadedHost slot as the AES's (SlotWorker), JSON jobs, the floor's job allowed."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["serializer"] = JSONSerializer
        super().__init__(*args, **kwargs)
