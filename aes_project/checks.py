"""System checks of the project's settings, shown by `manage.py check`, runserver and commands."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security)
def development_settings(app_configs, **kwargs) -> list[Warning]:
    """Warn that settings not made for production (AES_ENV is not production) are in use."""
    if settings.PRODUCTION:
        return []
    facts = ["DEBUG on" if settings.DEBUG else "DEBUG off"]
    if settings.SECRET_KEY == settings.DEVELOPMENT_SECRET_KEY:
        facts.append("an insecure SECRET_KEY known to anyone with the source")
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        facts.append("SQLite")
    if not settings.SESSION_COOKIE_SECURE:
        facts.append("cookies not Secure")
    return [
        Warning(
            f"development settings (AES_ENV is not production): {', '.join(facts)}; "
            "not for production.",
            hint="Set AES_ENV=production and SECRET_KEY (docs/deployment.md).",
            id="aes.W001",
        )
    ]
