"""`manage.py create_api_token`: prints a user's token, the same one every time."""

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command, execute_from_command_line
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("create_api_token", *args, stdout=out)
    return out.getvalue().strip()


def test_creates_then_prints_the_existing_token():
    user = User.objects.create_user("ada")
    key = run("ada")
    assert key == Token.objects.get(user=user).key and len(key) == 40
    assert run("ada") == key
    assert Token.objects.filter(user=user).count() == 1


def test_unknown_user_is_a_command_error():
    with pytest.raises(CommandError, match=r"^No user named 'nobody'; create it first\.$"):
        run("nobody")
    assert not Token.objects.exists()


@pytest.mark.django_db(transaction=True)  # the command closes its connection on exit
def test_unknown_user_exits_non_zero_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        execute_from_command_line(["manage.py", "create_api_token", "nobody"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "CommandError: No user named 'nobody'; create it first."


def test_help_names_the_argument(capsys):
    with pytest.raises(SystemExit) as exit_info:
        execute_from_command_line(["manage.py", "create_api_token", "--help"])
    assert exit_info.value.code == 0
    assert "username" in capsys.readouterr().out
