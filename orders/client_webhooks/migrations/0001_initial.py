from typing import Any

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

MODELS = ["webhookendpoint", "webhookdelivery", "webhookattempt"]


def _content_types_relabel(apps: Any, schema_editor: Any, *, old: str, new: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    types = ContentType.objects.using(schema_editor.connection.alias)
    for model in MODELS:
        if not types.filter(app_label=new, model=model).exists():
            types.filter(app_label=old, model=model).update(app_label=new)


def content_types_move(apps: Any, schema_editor: Any) -> None:
    _content_types_relabel(apps, schema_editor, old="orders", new="client_webhooks")


def content_types_move_back(apps: Any, schema_editor: Any) -> None:
    _content_types_relabel(apps, schema_editor, old="client_webhooks", new="orders")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("orders", "0014_client_webhooks_moved_out"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("workflows", "0007_circuits_retry_waits"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    # The tables are the `orders` app's (`db_table`): state only, see orders' 0014. The
    # content types move too, so that the permissions granted on them stay granted.
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="WebhookDelivery",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("event_id", models.CharField(max_length=64)),
                        (
                            "event_type",
                            models.CharField(
                                choices=[
                                    ("order.created", "Created"),
                                    ("order.awaiting_review", "Awaiting Review"),
                                    ("order.completed", "Completed"),
                                    ("order.rejected", "Rejected"),
                                    ("order.failed", "Failed"),
                                    ("order.refunded", "Refunded"),
                                    ("order.disputed", "Disputed"),
                                    ("order.canceled", "Canceled"),
                                ],
                                max_length=40,
                            ),
                        ),
                        ("payload", models.JSONField(default=dict)),
                        (
                            "status",
                            models.CharField(
                                choices=[
                                    ("pending", "Pending"),
                                    ("delivered", "Delivered"),
                                    ("failed", "Failed"),
                                ],
                                default="pending",
                                max_length=10,
                            ),
                        ),
                        ("attempts", models.PositiveIntegerField(default=0)),
                        ("next_attempt_at", models.DateTimeField(blank=True, null=True)),
                        ("last_attempt_at", models.DateTimeField(blank=True, null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "order",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="webhook_deliveries",
                                to="orders.order",
                            ),
                        ),
                        (
                            "run",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="webhook_deliveries",
                                to="workflows.workflowrun",
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "webhook delivery",
                        "verbose_name_plural": "webhook deliveries",
                        "db_table": "orders_webhookdelivery",
                        "ordering": ["-created_at"],
                    },
                ),
                migrations.CreateModel(
                    name="WebhookAttempt",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("number", models.PositiveIntegerField()),
                        ("status_code", models.PositiveIntegerField(blank=True, null=True)),
                        ("latency_ms", models.PositiveIntegerField(blank=True, null=True)),
                        (
                            "response_head",
                            models.TextField(
                                blank=True, help_text="The first bytes of the answer."
                            ),
                        ),
                        ("error", models.TextField(blank=True)),
                        ("at", models.DateTimeField(default=django.utils.timezone.now)),
                        (
                            "delivery",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="attempt_records",
                                to="client_webhooks.webhookdelivery",
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "webhook attempt",
                        "db_table": "orders_webhookattempt",
                        "ordering": ["delivery", "number"],
                    },
                ),
                migrations.CreateModel(
                    name="WebhookEndpoint",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("url", models.URLField(max_length=2048)),
                        (
                            "events",
                            models.JSONField(
                                default=list, help_text="Event types sent to this URL."
                            ),
                        ),
                        ("secret", models.CharField(max_length=100)),
                        ("enabled", models.BooleanField(default=True)),
                        ("disabled_reason", models.CharField(blank=True, max_length=255)),
                        ("consecutive_failures", models.PositiveIntegerField(default=0)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "client",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE,
                                related_name="webhook_endpoints",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "verbose_name": "webhook endpoint",
                        "db_table": "orders_webhookendpoint",
                        "ordering": ["-created_at"],
                    },
                ),
                migrations.AddField(
                    model_name="webhookdelivery",
                    name="endpoint",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="deliveries",
                        to="client_webhooks.webhookendpoint",
                    ),
                ),
                migrations.AddIndex(
                    model_name="webhookdelivery",
                    index=models.Index(
                        fields=["status", "-created_at"], name="webhook_delivery_status_idx"
                    ),
                ),
                migrations.AddConstraint(
                    model_name="webhookdelivery",
                    constraint=models.UniqueConstraint(
                        fields=("endpoint", "event_id"), name="webhook_delivery_once_per_endpoint"
                    ),
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_move, content_types_move_back),
    ]
