from django.apps import AppConfig


class TiersConfig(AppConfig):
    name = "tiers"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tiers import lookup

        lookup.connect_signals()
