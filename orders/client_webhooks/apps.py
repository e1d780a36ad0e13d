from django.apps import AppConfig


class ClientWebhooksConfig(AppConfig):
    name = "orders.client_webhooks"
    label = "client_webhooks"
    verbose_name = "Client webhooks"
    default_auto_field = "django.db.models.BigAutoField"
