"""The "Workflow operators" group may read runs and their traces on the console
(`workflows.view_workflowrun`), which staff status alone no longer allows."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "Workflow operators"


def grant(apps, schema_editor):
    # Permissions are normally created after all migrations; make sure ours exists now.
    app_config = apps.get_app_config("workflows")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(
        Permission.objects.get(content_type__app_label="workflows", codename="view_workflowrun")
    )


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for group in Group.objects.filter(name=GROUP):
        group.permissions.remove(
            *Permission.objects.filter(
                content_type__app_label="workflows", codename="view_workflowrun"
            )
        )


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0005_run_forks"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
