from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"
    verbose_name = "Orders"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.urls import reverse

        from workflows.models import WorkflowRun
        from workflows.retry import DEPENDENCY_NAMES
        from workflows.services import RUN_CANCELLERS, WAIT_SWEEP_HOOKS
        from workflows.signals import run_forked
        from workflows.views import RUN_FACTS, WAIT_LINKS

        from .mail import SMTP_DEPENDENCY
        from .models import FRAUD_REVIEW_KEY, ORDER_WORKFLOW_ID
        from .payments import STRIPE_DEPENDENCY
        from .selectors import order_run_facts
        from .services.cancellation import order_run_cancel
        from .services.lifecycle import order_follow_fork
        from .services.reviews import review_reminders_send

        # What people call the dependencies an order run may wait for ("waiting for
        # Stripe (attempt 6, ...)"); the order agent's model calls wait for its provider.
        DEPENDENCY_NAMES[STRIPE_DEPENDENCY] = "Stripe"
        DEPENDENCY_NAMES[SMTP_DEPENDENCY] = "the mail server"
        DEPENDENCY_NAMES["openai"] = "the model provider"
        # A suspended order run's trace page links to the review where it is decided.
        WAIT_LINKS[FRAUD_REVIEW_KEY] = lambda wait: reverse(
            "admin:orders_fraudreview_change", args=[wait.pk]
        )
        # An order run's page says which order it is, its status and its payment's.
        RUN_FACTS[ORDER_WORKFLOW_ID] = order_run_facts
        # Cancelling an order's run cancels the order: its payment is released.
        RUN_CANCELLERS[ORDER_WORKFLOW_ID] = order_run_cancel
        # A forked order run continues the same order.
        run_forked.connect(order_follow_fork, sender=WorkflowRun, dispatch_uid="order_follow_fork")
        # The expiry sweep (every minute) also sends the fraud reviewers' reminders.
        if review_reminders_send not in WAIT_SWEEP_HOOKS:
            WAIT_SWEEP_HOOKS.append(review_reminders_send)
