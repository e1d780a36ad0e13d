from django.db import migrations, models
from django.db.models import F


def mark_uncharged_orders_attempted(apps, schema_editor):
    """An order not yet charged may have had an attempt before this field existed,
    whose answer was lost: its next attempt looks first, as every attempt did then."""
    Order = apps.get_model("orders", "Order")
    Order.objects.filter(charge_id="").update(charge_attempted_at=F("created_at"))


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0015_desk_ui_claims"),
    ]

    operations = [
        migrations.AddField(
            model_name="order",
            name="charge_attempted_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(mark_uncharged_orders_attempted, migrations.RunPython.noop),
    ]
