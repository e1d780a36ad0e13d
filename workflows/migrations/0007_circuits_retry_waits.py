"""Circuits per dependency, steps waiting for a dependency (`Wait.kind` "retry"), and the
`workflows.retry_run` permission, given to the "Workflow operators" group (made by 0004).
"""

import django.utils.timezone
from django.contrib.auth.management import create_permissions
from django.db import migrations, models

GROUP = "Workflow operators"


def grant_retry(apps, schema_editor):
    # Permissions are normally created after all migrations; make sure ours exists now.
    app_config = apps.get_app_config("workflows")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(
        Permission.objects.get(content_type__app_label="workflows", codename="retry_run")
    )


def revoke_retry(apps, schema_editor):
    apps.get_model("auth", "Permission").objects.filter(
        content_type__app_label="workflows", codename="retry_run"
    ).delete()


class Migration(migrations.Migration):

    dependencies = [
        ('workflows', '0006_operators_view_runs'),
        ('auth', '0012_alter_user_first_name_max_length'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        migrations.CreateModel(
            name='Circuit',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('dependency', models.CharField(max_length=100, unique=True)),
                ('state', models.CharField(choices=[('closed', 'Closed'), ('open', 'Open'), ('half_open', 'half-open')], default='closed', max_length=10)),
                ('consecutive_failures', models.PositiveIntegerField(default=0)),
                ('opened_at', models.DateTimeField(blank=True, null=True)),
                ('probe_at', models.DateTimeField(blank=True, null=True)),
                ('probe_interval', models.FloatField(default=0)),
                ('probe_holder', models.CharField(blank=True, max_length=64)),
                ('probe_expires_at', models.DateTimeField(blank=True, null=True)),
                ('last_error', models.TextField(blank=True)),
                ('last_failure_at', models.DateTimeField(blank=True, null=True)),
                ('updated_at', models.DateTimeField(default=django.utils.timezone.now)),
            ],
        ),
        migrations.AlterModelOptions(
            name='workflowrun',
            options={'ordering': ['-created_at'], 'permissions': [('start_run', 'Can start workflow runs from the console'), ('retry_run', 'Can retry failed workflow runs')]},
        ),
        migrations.AlterField(
            model_name='wait',
            name='kind',
            field=models.CharField(choices=[('suspend', 'suspend'), ('sleep', 'sleep'), ('retry', 'retry')], default='suspend', max_length=10),
        ),
        migrations.RunPython(grant_retry, revoke_retry),
    ]
