from django.apps import AppConfig


class AesProjectConfig(AppConfig):
    """The project itself, installed only for its system checks: no models, no URLs."""

    name = "aes_project"
    verbose_name = "Agent Execution Service"

    def ready(self) -> None:
        from aes_project import checks  # noqa: F401  (registers them)
