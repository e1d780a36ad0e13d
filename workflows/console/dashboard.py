"""The operations dashboard as the page shows it: every panel the user may see (the
engine's and those applications registered), read and drawn. A panel that fails is
shown as an error in its box; the others still draw."""

import logging
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import AnonymousUser, User

from workflows.console.charts import Chart, chart_draw
from workflows.engine import hooks
from workflows.engine.dashboard import ENGINE_PANELS
from workflows.engine.hooks import DashboardPanel, PanelData

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PanelShown:
    key: str
    title: str
    data: PanelData | None
    chart: Chart | None
    error: str = ""


def panels_for(user: User | AnonymousUser) -> list[DashboardPanel]:
    """The panels `user` may see, in page order."""
    panels = [*ENGINE_PANELS, *hooks.registry.dashboard_panels.values()]
    return sorted(
        (p for p in panels if user.has_perm(p.permission)), key=lambda p: (p.order, p.key)
    )


def panel_shown(panel: DashboardPanel, *, now: datetime) -> PanelShown:
    try:
        data = panel.read(now=now)
    except Exception:
        logger.exception("dashboard panel %r failed", panel.key)
        return PanelShown(panel.key, panel.title, None, None, error="This panel failed to load.")
    chart = chart_draw(data, title=panel.title) if data.series else None
    return PanelShown(panel.key, panel.title, data, chart)


def dashboard_shown(user: User | AnonymousUser, *, now: datetime) -> list[PanelShown]:
    return [panel_shown(p, now=now) for p in panels_for(user)]
