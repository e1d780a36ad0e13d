import logging
import os
import sys
from importlib import import_module
from typing import Protocol, cast

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger(__name__)

SERVER_COMMANDS = {"runserver", "serve", "qcluster"}


class _PooledConnection(Protocol):
    """The PostgreSQL backend's wrapper with a pool (Django's stubs lack `close_pool`)."""

    def close(self) -> None: ...

    def close_pool(self) -> None: ...


def _serves_requests_or_tasks() -> bool:
    """Whether this process is a web server or a worker: only those announce which model
    provider they use (one line at start-up, not one per management command)."""
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    return "gunicorn" in program or bool(SERVER_COMMANDS & set(sys.argv[1:2]))


def _close_pools_before_fork() -> None:
    """A forked child must not share its parent's pooled connections (one socket, two
    processes): close the pools before django-q2 forks; each process opens its own on
    first use."""
    from django.db import connections

    for alias in connections:
        wrapper = connections[alias]
        # `wrapper.pool` would open a pool; only close one that exists.
        if alias in getattr(type(wrapper), "_connection_pools", {}):
            pooled = cast(_PooledConnection, wrapper)
            pooled.close()
            pooled.close_pool()


class WorkflowsConfig(AppConfig):
    name = "workflows"
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Workflows register themselves when their module is imported; the web process
        # and every worker must see the same registry, so import them here.
        for module in getattr(settings, "WORKFLOWS_MODULES", []):
            import_module(module)
        os.register_at_fork(before=_close_pools_before_fork)
        if not _serves_requests_or_tasks():
            return
        if settings.LLM_PROVIDER == "simulated":
            reason = "asked for" if settings.OPENAI_API_KEY else "no OPENAI_API_KEY is set"
            logger.info("LLM provider: simulated (%s); agents use their stand-in models", reason)
        else:
            logger.info("LLM provider: openai at %s", settings.OPENAI_BASE_URL or "api.openai.com")
