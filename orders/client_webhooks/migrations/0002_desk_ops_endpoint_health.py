"""An endpoint's health, kept per attempt (last answer, failing since, failed attempts).

Real columns, added to the table the state names (`orders_webhookendpoint`, see 0001):
unlike 0001, this migration changes the database as well as the state. Existing
endpoints start healthy (0 failed attempts) and learn from their next attempt."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('client_webhooks', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='webhookendpoint',
            name='failed_attempts',
            field=models.PositiveIntegerField(default=0, help_text='Attempts failed since the last 2xx, across deliveries and their retries.'),
        ),
        migrations.AddField(
            model_name='webhookendpoint',
            name='failing_since',
            field=models.DateTimeField(blank=True, help_text='The first failed attempt since the last 2xx.', null=True),
        ),
        migrations.AddField(
            model_name='webhookendpoint',
            name='last_attempt_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='webhookendpoint',
            name='last_status',
            field=models.CharField(blank=True, help_text="The last attempt's answer: HTTP 503, or why none.", max_length=255),
        ),
    ]
