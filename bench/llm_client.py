"""CPU of one LLM call in the calling process, by prompt length: `python -m bench.llm_client`.

    pip install -r bench/requirements.txt   # once: the service's pins plus psutil

Run from the project's root. Measures the OpenAI client as executions/agent/llm.py
calls it (`client.post` with a typed ChatCompletion answer) against
`chat.completions.create`, the SDK's typed method, which first walks the
request through a type-driven transform. The LLM stand-in runs in its own
process, so only the client's CPU is counted. Prints a table and writes the
figures as one flat JSON document (`--json`, by default
bench/results/llm_client.json).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

import openai
from openai.types.chat import ChatCompletion

from aes_project import processes
from bench import figures
from bench.common import PYTHON, ROOT


def prompt(messages: int) -> list[dict[str, str]]:
    turns = [
        {"role": "user" if n % 2 == 0 else "assistant", "content": f"message {n} of the history"}
        for n in range(messages - 1)
    ]
    return [{"role": "system", "content": "You are a helpful agent."}, *turns]


def cpu_ms_per_call(call, calls: int) -> float:
    for _ in range(20):
        call()
    start = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - start) * 1000 / calls


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.llm_client", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--messages", type=int, nargs="+", default=[2, 10, 40, 100])
    figures.add_json_option(parser, "llm_client")
    args = parser.parse_args()
    machine = figures.machine()
    server = processes.start(
        [PYTHON, "-m", "bench.llm_server", "--latency", "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    measured: dict[str, float] = {}
    try:
        url = server.stdout.readline().split()[1]
        client = openai.OpenAI(api_key="bench", base_url=url, max_retries=0)
        print(f"{'messages':>8} {'create() ms':>12} {'post() ms':>10}  (CPU per call)")
        for count in args.messages:
            body = {"model": "stand-in", "messages": prompt(count)}

            def create(body=body):
                return client.chat.completions.create(**body, timeout=30)

            def post(body=body):
                return client.post(
                    "/chat/completions",
                    body=body,
                    cast_to=ChatCompletion,
                    options={"timeout": 30},
                )

            created = round(cpu_ms_per_call(create, args.calls), 3)
            posted = round(cpu_ms_per_call(post, args.calls), 3)
            measured[f"create_cpu_ms_per_call.{count}_messages"] = created
            measured[f"post_cpu_ms_per_call.{count}_messages"] = posted
            print(f"{count:>8} {created:>12.2f} {posted:>10.2f}")
    finally:
        processes.stop(server, 10)
    figures.write(args.json, figures.document("llm_client", args, machine, measured))


if __name__ == "__main__":
    main()
