import logging
from importlib import import_module

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger(__name__)


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Workflows register themselves when their module is imported; the web process
        # and every worker must see the same registry, so import them here.
        for module in getattr(settings, "WORKFLOWS_MODULES", []):
            import_module(module)
        if settings.LLM_PROVIDER == "simulated":
            reason = "asked for" if settings.OPENAI_API_KEY else "no OPENAI_API_KEY is set"
            logger.info("LLM provider: simulated (%s); agents use their stand-in models", reason)
        else:
            logger.info("LLM provider: openai at %s", settings.OPENAI_BASE_URL or "api.openai.com")
