"""The `workflows.start_run` permission, and the "Workflow operators" group holding it.

Starting a run from the console needs this permission (superusers have it); staff
status alone only lets one read runs.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "Workflow operators"


def create_group(apps, schema_editor):
    # Permissions are normally created after all migrations; make sure ours exists now.
    app_config = apps.get_app_config("workflows")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(
        Permission.objects.get(content_type__app_label="workflows", codename="start_run")
    )


def delete_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0003_concurrency_slots"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="workflowrun",
            options={
                "ordering": ["-created_at"],
                "permissions": [("start_run", "Can start workflow runs from the console")],
            },
        ),
        migrations.RunPython(create_group, delete_group),
    ]
