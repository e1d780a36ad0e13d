from django.apps import AppConfig


class ClientWebhooksConfig(AppConfig):
    name = "orders.client_webhooks"
    label = "client_webhooks"
    verbose_name = "Client webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Every engine hook of the client webhooks (see `workflows.engine.hooks`)."""
        from workflows.engine import hooks

        from ..dashboard import WEBHOOK_PANELS
        from .selectors import delivery_run_ids_matching
        from .services import WEBHOOK_DELIVERY_WORKFLOW_ID

        # Delivery runs are many and in the background: lists show them apart from the
        # order runs (the console's tab, `runs --group`, their own `ops_status` line).
        hooks.register_run_group(
            hooks.RunGroup(
                key=WEBHOOK_DELIVERY_GROUP,
                label="Webhook deliveries",
                workflow_ids=(WEBHOOK_DELIVERY_WORKFLOW_ID,),
            )
        )
        # Searching the console for an order id or customer id finds its deliveries too.
        hooks.register_run_search("client_webhooks", delivery_run_ids_matching)
        for panel in WEBHOOK_PANELS:
            hooks.register_dashboard_panel(panel)


WEBHOOK_DELIVERY_GROUP = "deliveries"
