from importlib import import_module

from django.apps import AppConfig
from django.conf import settings


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Workflows register themselves when their module is imported; the web process
        # and every worker must see the same registry, so import them here.
        for module in getattr(settings, "WORKFLOWS_MODULES", []):
            import_module(module)
