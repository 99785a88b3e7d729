"""Declared tools: parallel calls, call cost, MCP listing, fitting: `python -m bench.tool_calls`.

Run from the project's root. Drives the agent loop as a run does (tools built
by executions.agent.tools.build, the loop's dispatch, steps kept in memory)
against the stand-in tool servers of standins/tool_servers.py on 127.0.0.1;
the model is a script, so only the tools' side is measured. Uses REDIS_URL
(or a private server) for the MCP tool list cache. Prints a table and writes
the figures as one flat JSON document (`--json`, by default
bench/results/tool_calls.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aes_project.settings")
django.setup()

from django.conf import settings  # noqa: E402

from aes_project import redis_clients  # noqa: E402
from bench.common import ROOT  # noqa: E402
from executions.agent import context, tools  # noqa: E402
from executions.agent.loop import AgentLoop, Completion, ToolCall  # noqa: E402
from executions.agent.peers import Caller  # noqa: E402
from protocol import keys  # noqa: E402
from protocol.messages import AgentConfig  # noqa: E402
from standins.tool_servers import HttpToolServer, McpStandin  # noqa: E402


def batch_seconds(toolset: dict, name: str, arguments: dict, count: int) -> float:
    """Wall seconds of one model answer asking for `count` calls of `name`."""
    calls = [ToolCall(f"call_{i}", name, json.dumps(arguments)) for i in range(count)]
    answers = [Completion(None, calls), Completion("done", [])]
    loop = AgentLoop(
        complete=lambda *args: answers.pop(0),
        tools=toolset,
        max_iterations=3,
        deadline=time.monotonic() + 120,
        save_step=lambda step: None,
    )
    began = time.monotonic()
    loop.run([{"role": "user", "content": "go"}])
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="how long each slow call takes")
    parser.add_argument("--calls", type=int, default=50, help="calls timed one by one")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "tool_calls.json"))
    options = parser.parse_args()

    http, mcp = HttpToolServer(), McpStandin("crm")
    http.routes["/slow"] = lambda body, headers: (time.sleep(body["seconds"]) or 200, {"ok": 1})
    http.routes["/echo"] = lambda body, headers: (200, body)
    http.start()
    mcp.start()
    settings.AES_TOOL_ALLOWED_HOSTS = ",".join(
        f"127.0.0.1:{url.split(':')[2].split('/')[0]}" for url in (http.url, mcp.url)
    )
    agent = AgentConfig.model_validate(
        {
            "agent_id": "bench",
            "http_tools": [
                {"name": "slow", "url": f"{http.url}/slow"},
                {"name": "echo", "url": f"{http.url}/echo"},
            ],
            "mcp_servers": [{"name": "crm", "url": mcp.url}],
        }
    )
    caller = Caller("bench", "bench-tenant", "enterprise", None)
    redis = redis_clients.shared()
    figures: dict[str, float] = {}
    try:
        for key in redis.scan_iter(keys.mcp_tools("bench-tenant", "*")):
            redis.delete(key)
        cold = tools.ToolContext(caller, agent, [], deadline=time.monotonic() + 60)
        began = time.monotonic()
        toolset, _ = tools.build(cold, None)
        figures["mcp_list_cold_ms"] = (time.monotonic() - began) * 1000
        warm = tools.ToolContext(caller, agent, [], deadline=time.monotonic() + 60)
        began = time.monotonic()
        tools.build(warm, None)
        figures["mcp_list_cached_ms"] = (time.monotonic() - began) * 1000
        warm.close()

        slow = {"seconds": options.seconds}
        for count in (1, 2, 4, 8):
            figures[f"http_{count}_calls_of_{options.seconds}s_s"] = batch_seconds(
                toolset, "slow", slow, count
            )
            figures[f"mcp_{count}_calls_of_{options.seconds}s_s"] = batch_seconds(
                toolset, "crm__wait", slow, count
            )
        for name, arguments in (
            ("echo", {"q": "x"}),
            ("crm__lookup_order", {"order_id": "A-1001"}),
        ):
            times = []
            for _ in range(options.calls):
                began = time.monotonic()
                toolset[name].call(arguments, time.monotonic() + 30)
                times.append((time.monotonic() - began) * 1000)
            figures[f"{name}_call_median_ms"] = statistics.median(times)
        cold.close()

        history = [{"role": "user", "content": "h " * 400} for _ in range(100)]
        messages = [{"role": "system", "content": "s"}, *history, {"role": "user", "content": "q"}]
        began = time.process_time()
        for _ in range(100):
            context.fit(messages, [], context_window=8000, reserve=500, history=(1, 101))
        figures["context_fit_100_messages_cpu_ms"] = (time.process_time() - began) * 10
        began = time.process_time()
        for _ in range(100):
            context.fit(messages, [], context_window=10**6, reserve=500, history=(1, 101))
        figures["context_fits_already_cpu_ms"] = (time.process_time() - began) * 10
    finally:
        http.stop()
        mcp.stop()
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:10.3f}")
    with open(options.json, "w", encoding="utf-8") as fh:
        json.dump({k: round(v, 3) for k, v in figures.items()}, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
