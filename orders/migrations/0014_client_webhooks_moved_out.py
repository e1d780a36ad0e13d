from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0013_email_kinds"),
    ]

    # The client webhooks' models moved to their own app (`client_webhooks`), keeping
    # their tables: Django forgets them here and learns them there, and the database is
    # not touched (no copy, no rename).
    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(
                    model_name="webhookdelivery",
                    name="endpoint",
                ),
                migrations.RemoveField(
                    model_name="webhookdelivery",
                    name="order",
                ),
                migrations.RemoveField(
                    model_name="webhookdelivery",
                    name="run",
                ),
                migrations.RemoveField(
                    model_name="webhookendpoint",
                    name="client",
                ),
                migrations.DeleteModel(
                    name="WebhookAttempt",
                ),
                migrations.DeleteModel(
                    name="WebhookDelivery",
                ),
                migrations.DeleteModel(
                    name="WebhookEndpoint",
                ),
            ],
            database_operations=[],
        ),
    ]
