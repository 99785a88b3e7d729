"""Typed readers for environment variables that fail loudly on bad values."""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured


def env_str(name: str, default: str | None = None) -> str | None:
    """Return the variable, or `default` when it is unset or empty."""
    value = os.environ.get(name, "")
    return value if value != "" else default


def env_bool(name: str, default: bool) -> bool:
    """Return a boolean written as 1/0, true/false, yes/no or on/off."""
    value = env_str(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}")


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    """Return a number not below `minimum`."""
    value = env_str(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    """Return a comma-separated list, blanks dropped."""
    value = env_str(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_floats(name: str, default: list[float]) -> list[float]:
    """Return a comma-separated list of positive numbers."""
    numbers = []
    for item in env_list(name, [str(number) for number in default]):
        try:
            number = float(item)
        except ValueError:
            raise ImproperlyConfigured(f"{name} must list numbers, got {item!r}") from None
        if not 0 < number < float("inf"):
            raise ImproperlyConfigured(f"{name} must list positive numbers, got {item!r}")
        numbers.append(number)
    return numbers
