"""The database cache's table (`CACHES` without `REDIS_URL`), where the API throttles
count requests for every process. Created by `migrate`, so no deploy, script or test
setup needs its own `createcachetable`; the command does nothing for other backends."""

from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [("orders", "0003_order_client")]

    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop)]
