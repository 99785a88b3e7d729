"""The model table: where an agent's model is served, what its calls cost, how fast they may go."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from aes_project import redis_clients
from executions.models import Execution
from llm_models import limits
from llm_models.lookup import Route
from llm_models.models import LLMModel
from protocol import keys
from standins.llm import LLMStandin
from tests.helpers import agent_run, callbacks, consume, push, run_one, wait_for
from workers.threaded import ThreadedHost

pytestmark = pytest.mark.django_db


def set_prices(name: str, prompt: Decimal | None, completion: Decimal | None) -> None:
    row = LLMModel.objects.get(name=name)
    row.input_price_per_million, row.output_price_per_million = prompt, completion
    row.save()  # the save signal clears this process's cache


def add_agent(peers, agent_id: str, model: str, **fields) -> None:
    """Let AMS serve an agent on `model` (no tools: one LLM call per run)."""
    peers.fixture["agents"]["*"][agent_id] = {
        "agent_id": agent_id,
        "name": agent_id,
        "is_active": True,
        "minimum_tier": "free",
        "system_prompt": "You are a friendly assistant. Keep answers short.",
        "model": model,
        "max_tokens": 64,
        "tools": [],
        **fields,
    }


class TimedStandin(LLMStandin):
    """The stand-in LLM, noting when each request arrived and the tokens it answered with."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.received: list[tuple[float, int]] = []

    def answer(self, body):
        arrived = time.time()  # the Redis server's clock is the wall clock too
        status, answer, headers = super().answer(body)
        with self._lock:
            self.received.append((arrived, answer.get("usage", {}).get("total_tokens", 0)))
        return status, answer, headers


@pytest.fixture
def second_llm():
    """A second provider on its own port, which wants its own key."""
    with TimedStandin(api_key="sk-second-provider") as server:
        yield server


def test_a_model_in_the_table_goes_to_its_provider_with_its_upstream_id_and_key(
    peers, llm, second_llm, monkeypatch
):
    monkeypatch.setenv("SECOND_PROVIDER_KEY", "sk-second-provider")
    LLMModel.objects.create(
        name="house-small",
        base_url=second_llm.url,
        api_key_env="SECOND_PROVIDER_KEY",
        upstream_model="smollm2-135m-instruct",
    )
    add_agent(peers, "house-bot", "house-small")

    execution = run_one(agent_run(agent_id="house-bot", message="Hi"))

    assert execution.status == "completed", execution.error_message
    assert [request["model"] for request in second_llm.requests] == ["smollm2-135m-instruct"]
    assert llm.requests == []
    assert execution.model == "house-small"
    assert execution.steps.get(kind="llm").model == "house-small"
    assert not execution.steps.filter(name="model_fallback").exists()


def test_the_wrong_key_in_the_named_variable_is_refused_by_the_provider(
    peers, llm, second_llm, monkeypatch
):
    monkeypatch.setenv("SECOND_PROVIDER_KEY", "sk-somebody-elses")
    LLMModel.objects.create(
        name="house-small", base_url=second_llm.url, api_key_env="SECOND_PROVIDER_KEY"
    )
    add_agent(peers, "house-bot", "house-small")

    execution = run_one(agent_run(agent_id="house-bot"))

    assert (execution.status, execution.error_code) == ("failed", "LLM_ERROR")
    assert second_llm.requests == []


def test_a_key_variable_that_is_not_set_fails_the_run_before_any_call(peers, llm, second_llm):
    LLMModel.objects.create(
        name="house-small", base_url=second_llm.url, api_key_env="NO_SUCH_KEY_VARIABLE"
    )
    add_agent(peers, "house-bot", "house-small")

    execution = run_one(agent_run(agent_id="house-bot"))

    assert (execution.status, execution.error_code) == ("failed", "LLM_ERROR")
    assert "key of model 'house-small' is not set" in execution.error_message
    assert "NO_SUCH_KEY_VARIABLE" not in callbacks()[0]["data"]["error"]["message"]
    assert second_llm.requests == [] and llm.requests == []


def test_an_unknown_model_name_goes_to_the_default_model_on_the_default_provider(
    peers, llm, second_llm, settings
):
    settings.AES_DEFAULT_MODEL = "house-default"
    LLMModel.objects.create(name="house-small", base_url=second_llm.url)
    add_agent(peers, "old-bot", "gpt-3.5-turbo-0301")

    execution = run_one(agent_run(agent_id="old-bot"))

    assert execution.status == "completed"
    assert [request["model"] for request in llm.requests] == ["house-default"]
    assert second_llm.requests == []
    assert execution.model == "house-default"
    note = execution.steps.get(kind="note", name="model_fallback")
    assert note.output == {
        "asked": "gpt-3.5-turbo-0301",
        "used": "house-default",
        "reason": "not in the model table",
    }
    # No row, no prices.
    assert execution.cost_usd is None
    assert callbacks()[0]["data"]["usage"]["cost_usd"] is None


def test_an_unknown_name_takes_the_default_models_row_when_the_table_has_one(
    peers, llm, second_llm, settings
):
    settings.AES_DEFAULT_MODEL = "house-small"
    LLMModel.objects.create(name="house-small", base_url=second_llm.url, upstream_model="tiny")
    second_llm.api_key = None
    add_agent(peers, "old-bot", "gpt-3.5-turbo-0301")

    execution = run_one(agent_run(agent_id="old-bot"))

    assert execution.status == "completed"
    assert [request["model"] for request in second_llm.requests] == ["tiny"]


def test_an_edit_in_the_table_applies_to_the_next_run(peers, llm, second_llm):
    second_llm.api_key = None
    row = LLMModel.objects.create(name="house-small", upstream_model="first-id")
    add_agent(peers, "house-bot", "house-small")
    run_one(agent_run(agent_id="house-bot"))

    row.base_url, row.upstream_model = second_llm.url, "second-id"
    row.save()  # the save signal clears this process's cache
    run_one(agent_run(agent_id="house-bot"))

    assert [request["model"] for request in llm.requests] == ["first-id"]
    assert [request["model"] for request in second_llm.requests] == ["second-id"]


# --- Cost ------------------------------------------------------------------------------


def expected_cost(prompt_tokens: int, completion_tokens: int) -> Decimal:
    # The prices below: 3 USD per million prompt tokens, 15 per million completion tokens.
    return (prompt_tokens * Decimal(3) + completion_tokens * Decimal(15)) / Decimal(1_000_000)


def test_each_call_and_the_run_carry_their_cost_in_the_callback_api_and_admin(
    peers, llm, admin_client
):
    set_prices("gpt-4o-mini", Decimal(3), Decimal(15))
    llm.push_tool_call("knowledge_search", {"query": "refunds"})
    execution = run_one(agent_run(agent_id="support-bot", message="How do refunds work?"))

    assert execution.status == "completed"
    calls = list(execution.steps.filter(kind="llm"))
    assert len(calls) == 2
    for call in calls:
        assert call.model == "gpt-4o-mini"
        assert call.cost_usd == expected_cost(call.prompt_tokens, call.completion_tokens)
    total = expected_cost(execution.prompt_tokens, execution.completion_tokens)
    assert total > 0
    assert execution.cost_usd == total
    assert callbacks()[0]["data"]["usage"]["cost_usd"] == pytest.approx(float(total))

    body = admin_client.get(f"/api/executions/{execution.pk}/").json()
    assert body["usage"]["cost_usd"] == pytest.approx(float(total))
    assert body["model"] == "gpt-4o-mini"
    llm_steps = [step for step in body["steps"] if step["kind"] == "llm"]
    assert [step["cost_usd"] for step in llm_steps] == [
        pytest.approx(float(call.cost_usd)) for call in calls
    ]

    shown = f"{total:.10f}"
    assert shown in admin_client.get("/admin/executions/execution/").content.decode()
    page = admin_client.get(f"/admin/executions/execution/{execution.pk}/change/").content.decode()
    assert shown in page


def test_a_model_without_prices_has_no_cost(peers, llm):
    set_prices("gpt-4o-mini", None, Decimal(15))
    execution = run_one(agent_run(agent_id="plain-bot"))

    assert execution.status == "completed"
    assert execution.cost_usd is None
    assert execution.steps.get(kind="llm").cost_usd is None
    assert callbacks()[0]["data"]["usage"]["cost_usd"] is None


def test_prometheus_counts_cost_by_tier_and_model(peers, llm, client):
    set_prices("gpt-4o-mini", Decimal(3), Decimal(15))
    runs = [run_one(agent_run(agent_id="plain-bot", message=f"run {n}")) for n in range(2)]
    total = sum(run.cost_usd for run in runs)

    text = client.get("/metrics").content.decode()

    line = next(line for line in text.splitlines() if line.startswith("aes_cost_usd_total{"))
    assert 'model="gpt-4o-mini"' in line and 'tier="free"' in line
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(float(total))


# --- Limits ------------------------------------------------------------------------------


def test_a_requests_per_minute_limit_that_cannot_be_met_in_time_fails_rate_limited(peers, llm):
    LLMModel.objects.create(name="metered", requests_per_minute=1)
    add_agent(peers, "metered-bot", "metered")

    first = run_one(agent_run(agent_id="metered-bot", message="first"))
    # Room comes back a minute after the first call; the free tier's deadline is 30 s.
    second = run_one(agent_run(agent_id="metered-bot", message="second"))

    assert first.status == "completed"
    assert (second.status, second.error_code) == ("failed", "RATE_LIMITED")
    assert len(llm.requests) == 1
    assert callbacks()[1]["data"]["error"]["code"] == "RATE_LIMITED"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_workers_sharing_a_tokens_per_minute_limit_stay_within_it(
    peers, llm, monkeypatch, settings
):
    window, tpm, runs = 2.0, 300, 8
    monkeypatch.setattr(limits, "WINDOW_MS", int(window * 1000))
    timed = TimedStandin()
    settings.OPENAI_BASE_URL = timed.start()
    try:
        LLMModel.objects.create(name="metered", tokens_per_minute=tpm)
        # About 100 prompt tokens a call, as the stand-in counts (characters / 4).
        prompt = "You are a friendly assistant. Keep answers short. " * 8
        add_agent(peers, "metered-bot", "metered", max_tokens=20, system_prompt=prompt)
        for number in range(runs):
            message = agent_run(agent_id="metered-bot", tier="enterprise", message=f"n{number}")
            push(message, tier="enterprise")
        consume()

        hosts = [ThreadedHost(["enterprise"], 2, burst=True) for _ in range(2)]
        threads = [threading.Thread(target=host.run) for host in hosts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
        assert wait_for(lambda: len(callbacks()) == runs, timeout=30)
    finally:
        timed.stop()

    assert [row.status for row in Execution.objects.all()] == ["completed"] * runs
    received = sorted(timed.received)
    assert len(received) == runs
    # The limit mattered: everything at once would have been over it.
    assert sum(tokens for _, tokens in received) > tpm
    # In every window's worth of time, what the LLM received stays within the limit.
    for start, _ in received:
        within = sum(tokens for at, tokens in received if start <= at < start + window)
        assert within <= tpm, (start, within, received)


# --- The admin --------------------------------------------------------------------------


def _add(admin_client, **fields):
    form = {
        "name": "llama",
        "upstream_model": "",
        "context_window": "",
        "base_url": "",
        "api_key_env": "",
        "input_price_per_million": "",
        "output_price_per_million": "",
        "requests_per_minute": "",
        "tokens_per_minute": "",
        **fields,
    }
    return admin_client.post("/admin/llm_models/llmmodel/add/", form)


def test_the_admin_adds_a_model_on_an_internal_host_with_its_key_variable(admin_client):
    response = _add(
        admin_client,
        base_url="http://llama:8080/v1",
        api_key_env="LLAMA_API_KEY",
        input_price_per_million="0.05",
        output_price_per_million="0.10",
        tokens_per_minute="60000",
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    row = LLMModel.objects.get(name="llama")
    assert (row.base_url, row.api_key_env, row.tokens_per_minute) == (
        "http://llama:8080/v1",
        "LLAMA_API_KEY",
        60000,
    )
    listing = admin_client.get("/admin/llm_models/llmmodel/").content.decode()
    assert "LLAMA_API_KEY" in listing and "http://llama:8080/v1" in listing


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_key_env", "SECRET_KEY"),  # the service's own secret, not a provider's key
        ("api_key_env", "sk-live-1234"),  # a key pasted where its variable's name belongs
        ("base_url", "ftp://llama/v1"),
        ("base_url", "http://:8080/v1"),
        ("tokens_per_minute", "0"),
        ("input_price_per_million", "-1"),
    ],
)
def test_the_admin_refuses_what_cannot_work(admin_client, field, value):
    response = _add(admin_client, **{field: value})
    assert response.status_code == 200  # the form again, with its errors
    assert "errorlist" in response.content.decode()
    assert not LLMModel.objects.filter(name="llama").exists()


def test_a_call_that_waited_is_served_before_one_that_came_later(monkeypatch):
    monkeypatch.setattr(limits, "WINDOW_MS", 1500)
    model = Route(name="metered", base_url=None, api_key=None, model="m", requests_per_minute=1)
    limits.acquire(model, 10, time.monotonic() + 5)  # the window's one call
    served: list[str] = []

    def call(name: str) -> None:
        limits.acquire(model, 10, time.monotonic() + 10)
        served.append(name)

    first = threading.Thread(target=call, args=("waiting first",))
    first.start()
    wait_for(lambda: redis_clients.shared().zcard(keys.model_line("metered")) == 1)
    # A newcomer arrives while the first waits, and looks often: it still comes second.
    monkeypatch.setattr(limits, "BEHIND_POLL_MS", 10)
    second = threading.Thread(target=call, args=("came later",))
    second.start()
    first.join(timeout=10)
    assert served == ["waiting first"]
    assert second.is_alive()  # the window holds the first's call now
    second.join(timeout=10)
    assert served == ["waiting first", "came later"]


def test_a_refused_call_leaves_the_line(monkeypatch):
    model = Route(name="metered", base_url=None, api_key=None, model="m", requests_per_minute=1)
    limits.acquire(model, 10, time.monotonic() + 5)
    with pytest.raises(limits.OverLimit):
        limits.acquire(model, 10, time.monotonic() + 5)  # room in a minute: past the deadline
    assert redis_clients.shared().zcard(keys.model_line("metered")) == 0
