from typing import TYPE_CHECKING

from django.apps import AppConfig

if TYPE_CHECKING:  # models import only once the apps are loaded
    from workflows.models import Wait


def _fraud_review_link(wait: "Wait") -> str:
    from django.urls import reverse

    return reverse("admin:orders_fraudreview_change", args=[wait.pk])


class OrdersConfig(AppConfig):
    name = "orders"
    verbose_name = "Orders"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Every engine hook of the orders app, registered here and nowhere else (see
        `workflows.engine.hooks`)."""
        from workflows.engine import hooks

        from .dashboard import ORDER_PANELS
        from .mail import SMTP_DEPENDENCY
        from .metrics import OrdersCollector
        from .models import FRAUD_REVIEW_KEY, ORDER_WORKFLOW_ID
        from .ops_selectors import order_run_facts, order_run_ids_matching, order_runs_retained
        from .payments import STRIPE_DEPENDENCY
        from .services.cancellation import order_run_cancel
        from .services.lifecycle import order_follow_fork
        from .services.retention import order_history_archive
        from .services.reviews import review_reminders_send

        # What people call the dependencies an order run may wait for ("waiting for
        # Stripe (attempt 6, ...)"); the order agent's model calls wait for its provider.
        hooks.register_dependency_name(STRIPE_DEPENDENCY, "Stripe")
        hooks.register_dependency_name(SMTP_DEPENDENCY, "the mail server")
        hooks.register_dependency_name("openai", "the model provider")
        # A suspended order run's trace page links to the review where it is decided.
        hooks.register_wait_link(FRAUD_REVIEW_KEY, _fraud_review_link)
        # An order run's page says which order it is, its status and its payment's.
        hooks.register_run_facts(ORDER_WORKFLOW_ID, order_run_facts)
        # Cancelling an order's run cancels the order: its payment is released.
        hooks.register_run_canceller(ORDER_WORKFLOW_ID, order_run_cancel)
        # A forked order run continues the same order.
        hooks.register_fork_hook(order_follow_fork)
        # The expiry sweep (every minute) also sends the fraud reviewers' reminders.
        hooks.register_wait_sweep_hook(review_reminders_send)
        # Retention prunes an order run's history only once the order is settled and its
        # money at rest; the order keeps its review's record first.
        hooks.register_retention_veto(ORDER_WORKFLOW_ID, order_runs_retained)
        hooks.register_history_archiver(ORDER_WORKFLOW_ID, order_history_archive)
        # The review queue's size and age on `GET /metrics`.
        hooks.register_metrics_collector(OrdersCollector())
        # The console's run search finds an order's runs by order id or customer id.
        hooks.register_run_search("orders", order_run_ids_matching)
        # The orders' panels on the console's dashboard.
        for panel in ORDER_PANELS:
            hooks.register_dashboard_panel(panel)
