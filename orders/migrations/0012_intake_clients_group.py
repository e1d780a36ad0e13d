"""The "Intake clients" group: an API token's user in it may place orders
(`orders.add_order`) and read its own (`orders.view_order`). A token alone may not."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "Intake clients"
CODENAMES = ["add_order", "view_order"]


def create_group(apps, schema_editor):
    # Permissions are normally created after all migrations; make sure ours exist now.
    app_config = apps.get_app_config("orders")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(
        *Permission.objects.filter(content_type__app_label="orders", codename__in=CODENAMES)
    )
    # Until now a token was the only thing an API client needed, and tokens were made for
    # clients: the non-staff users who hold one join the group, so an upgrade breaks no
    # working client. Staff tokens get no intake rights they were never meant to have.
    User = apps.get_model("auth", "User")
    group.user_set.add(
        *User.objects.filter(auth_token__isnull=False, is_staff=False, is_superuser=False)
    )


def delete_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0011_order_refunded_amount_and_dispute_memory"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("authtoken", "0004_alter_tokenproxy_options"),
    ]

    operations = [migrations.RunPython(create_group, delete_group)]
