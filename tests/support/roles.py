"""The roles' users as the tests make them."""

from django.contrib.auth.models import Group, Permission, User
from django.test import Client


def operators_group() -> Group:
    """The "Workflow operators" group, made again as its migration makes it when a
    transactional test's flush dropped it: it may read runs."""
    group, _ = Group.objects.get_or_create(name="Workflow operators")
    group.permissions.add(
        Permission.objects.get(codename="view_workflowrun", content_type__app_label="workflows")
    )
    return group


def operator_client(username: str = "olga") -> Client:
    """Signed in as a member of "Workflow operators" and nothing else."""
    user = User.objects.create_user(username, password="x", is_staff=True)
    user.groups.add(operators_group())
    client = Client()
    client.force_login(user)
    return client
