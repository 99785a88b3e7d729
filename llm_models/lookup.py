"""The one way to resolve a model name: the LLMModel table, cached briefly in-process.

An agent's `model` is looked up by name. A name the table does not know (or
no name) means AES_DEFAULT_MODEL: its row when the table has one, else the
default provider (OPENAI_BASE_URL, OPENAI_API_KEY) with that model id and no
prices or limits. Every process keeps the rows for at most
AES_MODEL_CACHE_SECONDS, so an admin edit is seen everywhere within seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from aes_project.table_cache import TableCache
from llm_models.models import LLMModel

MILLION = Decimal(1_000_000)


class Unconfigured(Exception):
    """The model's row names a key variable that is not set in this process."""


@dataclass(frozen=True)
class Route:
    """Where one model's calls go and what they cost: a row of the table, resolved."""

    name: str  # the table's name, or AES_DEFAULT_MODEL
    base_url: str | None  # None: OPENAI_DEFAULT_BASE_URL, as the client decides
    api_key: str | None
    model: str  # the id the provider is sent
    context_window: int | None = None
    input_price_per_million: Decimal | None = None
    output_price_per_million: Decimal | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> Decimal | None:
        """Return what a call of these tokens costs, or None when a price is unknown."""
        if self.input_price_per_million is None or self.output_price_per_million is None:
            return None
        return (
            prompt_tokens * self.input_price_per_million
            + completion_tokens * self.output_price_per_million
        ) / MILLION


_table: TableCache[LLMModel] = TableCache(
    lambda: {row.name: row for row in LLMModel.objects.all()},
    lambda: settings.AES_MODEL_CACHE_SECONDS,
)


def resolve(name: str | None) -> Route:
    """Return the route of the model called `name`; raise Unconfigured when its key is missing."""
    rows = _table.rows()
    row = rows.get(name or "") or rows.get(settings.AES_DEFAULT_MODEL)
    if row is None:
        return Route(
            name=settings.AES_DEFAULT_MODEL,
            base_url=settings.OPENAI_BASE_URL,
            api_key=settings.OPENAI_API_KEY,
            model=settings.AES_DEFAULT_MODEL,
        )
    if row.base_url:
        api_key = os.environ.get(row.api_key_env) if row.api_key_env else None
        base_url = row.base_url
    else:
        api_key = os.environ.get(row.api_key_env) if row.api_key_env else settings.OPENAI_API_KEY
        base_url = settings.OPENAI_BASE_URL
    if row.api_key_env and not api_key:
        raise Unconfigured(f"the key of model {row.name!r} is not set on this worker")
    return Route(
        name=row.name,
        base_url=base_url,
        api_key=api_key,
        model=row.upstream_model or row.name,
        context_window=row.context_window,
        input_price_per_million=row.input_price_per_million,
        output_price_per_million=row.output_price_per_million,
        requests_per_minute=row.requests_per_minute,
        tokens_per_minute=row.tokens_per_minute,
    )


def clear() -> None:
    """Forget the cached rows (after an edit in this process, and in tests)."""
    _table.clear()


def connect_signals() -> None:
    _table.clear_on_change(LLMModel)
