from django.apps import AppConfig


class LLMModelsConfig(AppConfig):
    name = "llm_models"
    verbose_name = "LLM models"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from llm_models import lookup

        lookup.connect_signals()
