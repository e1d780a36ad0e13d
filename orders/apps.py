from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"
    verbose_name = "Orders"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.urls import reverse

        from workflows.views import WAIT_LINKS

        from .models import FRAUD_REVIEW_KEY

        # A suspended order run's trace page links to the review where it is decided.
        WAIT_LINKS[FRAUD_REVIEW_KEY] = lambda wait: reverse(
            "admin:orders_fraudreview_change", args=[wait.pk]
        )
