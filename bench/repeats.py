"""Steps made twice: an LLM or tool call made again for a step a run had already completed.

    python -m bench.repeats   # self-check: planted repeats count, legitimate re-sends do not

bench.soak counts them after its runs, from two sources:

- the LLM stand-in's request log (`RequestLog`, one JSON line per chat
  completion request, written by `python -m bench.llm_server --request-log`):
  a request of a run whose message list equals one the stand-in had already
  answered for that run, sent after the run had recorded that answer as a
  step (an `llm` step whose `input.messages` is the request's length). A
  re-send after an answer that no step recorded (the worker was lost between
  the answer and the step) is legitimate, counted apart
  (`llm_requests_resent_after_answer`), and so is a retry after an HTTP 500;
- the journal: two `llm` steps of one execution with the same `llm_call_N`
  name, or two `tool` steps whose replay answers the same `tool_call_id`.

A repeated step is counted once however many of these find it.

Nothing here needs Django: the soak passes the steps as plain dicts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def digest(messages: list[Any]) -> str:
    """The identity of a message list: the SHA-1 of its canonical JSON."""
    text = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(text.encode()).hexdigest()


def run_key(messages: list[Any]) -> str:
    """Which run sent a request: the text of its last user message (the soak's are unique)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
    return ""


class RequestLog:
    """Appends one JSON line per chat completion request; safe from many threads.

    Each line: `run` (run_key), `messages` (how many), `digest`, `arrived`
    and `answered` (Unix seconds) and `status` (the HTTP status answered).
    Line-buffered: what was answered is on disk even if the process is killed.
    """

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, messages: list[Any], arrived: float, answered: float, status: int) -> None:
        line = json.dumps(
            {
                "run": run_key(messages),
                "messages": len(messages),
                "digest": digest(messages),
                "arrived": arrived,
                "answered": answered,
                "status": status,
            }
        )
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The log's records; a line cut short by a kill is skipped."""
    records = []
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _seconds(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def repeated_steps(
    requests: Iterable[dict[str, Any]],
    steps: Iterable[dict[str, Any]],
    runs: dict[str, str],
) -> dict[str, Any]:
    """Count the steps made twice.

    `requests`: the RequestLog's records. `steps`: the executions' steps, as
    dicts with `execution_id`, `kind`, `name`, `input`, `replay` and
    `created_at` (a datetime or Unix seconds). `runs`: each run's key (its
    message) to its execution id.
    """
    recorded: dict[tuple[str, int], tuple[float, str]] = {}  # (execution, messages) -> step
    names: dict[tuple[str, str], int] = {}
    answers: dict[tuple[str, str], int] = {}
    repeated: set[tuple[str, str, str]] = set()
    for step in steps:
        execution = str(step["execution_id"])
        if step["kind"] == "llm":
            names[(execution, step["name"])] = names.get((execution, step["name"]), 0) + 1
            count = (step.get("input") or {}).get("messages")
            if isinstance(count, int):
                at = _seconds(step["created_at"])
                key = (execution, count)
                if key not in recorded or at < recorded[key][0]:
                    recorded[key] = (at, step["name"])
        elif step["kind"] == "tool":
            message = (step.get("replay") or {}).get("message") or {}
            call = message.get("tool_call_id")
            if call:
                answers[(execution, call)] = answers.get((execution, call), 0) + 1
    duplicate_names = [key for key, n in names.items() if n > 1]
    duplicate_answers = [key for key, n in answers.items() if n > 1]
    repeated.update((execution, "llm", name) for execution, name in duplicate_names)
    repeated.update((execution, "tool", call) for execution, call in duplicate_answers)

    answered: set[tuple[str, str]] = set()
    resent = repeating = unmatched = 0
    for request in sorted(requests, key=lambda r: r["arrived"]):
        execution = runs.get(request["run"])
        if execution is None:
            unmatched += 1
            continue
        key = (execution, request["digest"])
        if key in answered:
            resent += 1
            step = recorded.get((execution, request["messages"]))
            if step is not None and step[0] <= request["arrived"]:
                repeating += 1
                repeated.add((execution, "llm", step[1]))
        if request["status"] == 200:
            answered.add(key)
    return {
        "repeated_steps": len(repeated),
        "runs_with_repeated_steps": len({execution for execution, _, _ in repeated}),
        "llm_requests_repeating_a_recorded_step": repeating,
        "llm_requests_resent_after_answer": resent,
        "llm_steps_with_a_duplicate_name": len(duplicate_names),
        "tool_steps_answering_a_duplicate_call": len(duplicate_answers),
        "llm_requests_of_no_known_run": unmatched,
    }


def self_check() -> dict[str, Any]:
    """Plant three repeated steps among legitimate re-sends; raise unless exactly three count."""
    t0 = time.time()
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "run A"}]
    b_prompt = [prompt[0], {"role": "user", "content": "run B"}]
    c_prompt = [prompt[0], {"role": "user", "content": "run C"}]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "requests.jsonl"
        log = RequestLog(path)
        # Run A: answered, recorded as llm_call_1, then sent again: a repeat.
        log.write(prompt, t0, t0 + 0.01, 200)
        log.write(prompt, t0 + 5, t0 + 5.01, 200)
        # Run B: answered, its worker lost before the step: the re-send is legitimate.
        log.write(b_prompt, t0, t0 + 0.01, 200)
        log.write(b_prompt, t0 + 5, t0 + 5.01, 200)
        # Run C: HTTP 500, then retried and answered: legitimate.
        log.write(c_prompt, t0, t0 + 0.01, 500)
        log.write(c_prompt, t0 + 1, t0 + 1.01, 200)
        log.close()
        requests = read_log(path)
    at = datetime.fromtimestamp(t0 + 0.02, UTC)
    later = datetime.fromtimestamp(t0 + 5.02, UTC)

    def llm(execution: str, name: str, created: datetime, n: int = 2) -> dict[str, Any]:
        return {
            "execution_id": execution,
            "kind": "llm",
            "name": name,
            "input": {"messages": n},
            "replay": {"message": {"role": "assistant"}},
            "created_at": created,
        }

    def tool(execution: str, call: str) -> dict[str, Any]:
        message = {"role": "tool", "tool_call_id": call, "content": "{}"}
        return {
            "execution_id": execution,
            "kind": "tool",
            "name": "knowledge_search",
            "input": {},
            "replay": {"message": message},
            "created_at": at,
        }

    steps = [
        llm("a", "llm_call_1", at),
        llm("b", "llm_call_1", later),
        llm("c", "llm_call_1", later),
        # Run D: llm_call_2 recorded twice (a stalled attempt and its successor).
        llm("d", "llm_call_1", at),
        tool("d", "call_7"),
        llm("d", "llm_call_2", at, 4),
        llm("d", "llm_call_2", later, 4),
        # Run E: one tool call answered twice; another answered once.
        llm("e", "llm_call_1", at),
        tool("e", "call_8"),
        tool("e", "call_8"),
        tool("e", "call_9"),
    ]
    runs = {"run A": "a", "run B": "b", "run C": "c"}
    found = repeated_steps(requests, steps, runs)
    wanted = {
        "repeated_steps": 3,
        "runs_with_repeated_steps": 3,
        "llm_requests_repeating_a_recorded_step": 1,
        "llm_requests_resent_after_answer": 2,
        "llm_steps_with_a_duplicate_name": 1,
        "tool_steps_answering_a_duplicate_call": 1,
        "llm_requests_of_no_known_run": 0,
    }
    if found != wanted:
        raise AssertionError(f"repeated_steps found {found}, wanted {wanted}")
    return found


def main() -> None:
    argparse.ArgumentParser(
        prog="python -m bench.repeats",
        description="Check that planted repeated steps are counted and legitimate re-sends not.",
    ).parse_args()
    try:
        found = self_check()
    except AssertionError as exc:
        print(f"self-check FAILED: {exc}")
        sys.exit(1)
    print(
        f"self-check passed: {found['repeated_steps']} repeated steps counted of 3 planted "
        "(an LLM request repeating a recorded step, a duplicate llm_call_N, a tool call "
        "answered twice); a re-send after an unrecorded answer and a retry after HTTP 500 "
        "not counted"
    )


if __name__ == "__main__":
    main()
