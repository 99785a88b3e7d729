"""Django app configuration for the stand-ins."""

from __future__ import annotations

from django.apps import AppConfig


class StandinsConfig(AppConfig):
    """Only provides management commands; the stand-ins themselves are plain Python."""

    name = "standins"
    verbose_name = "Peer and LLM stand-ins"
    default_auto_field = "django.db.models.BigAutoField"
