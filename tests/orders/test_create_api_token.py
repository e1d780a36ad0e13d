"""`manage.py create_api_token`: makes an API client (the user, in "Intake clients")
and prints its token once; bad input is a usage error."""

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command, execute_from_command_line
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

ORDER = {
    "order_id": "new-1",
    "customer_id": "cus_good",
    "customer_email": "ada@example.com",
    "amount": "25.00",
}


def run(*args: str) -> str:
    out = StringIO()
    call_command("create_api_token", *args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()


def test_a_new_client_is_created_and_its_token_places_orders(settings, queue_capture):
    settings.LLM_PROVIDER = settings.PAYMENT_GATEWAY = "simulated"
    out, err = StringIO(), StringIO()
    call_command("create_api_token", "acme-shop", stdout=out, stderr=err)
    key = out.getvalue().strip()
    user = User.objects.get(username="acme-shop")
    assert key == Token.objects.get(user=user).key and len(key) == 40
    assert not user.has_usable_password() and not user.is_staff and user.is_active
    assert [g.name for g in user.groups.all()] == ["Intake clients"]
    assert err.getvalue().strip() == "Created user 'acme-shop' in 'Intake clients'."
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.post("/api/orders/", ORDER, format="json").status_code == 201
    assert api.get("/api/orders/new-1/").status_code == 200


def test_an_existing_user_joins_the_group_and_its_token_is_shown_once():
    user = User.objects.create_user("ada", password="ada-pass-123")
    key = run("ada")
    assert key == Token.objects.get(user=user).key and len(key) == 40
    assert user.groups.filter(name="Intake clients").exists()
    assert user.check_password("ada-pass-123")  # the existing user is left as it was

    with pytest.raises(CommandError, match=r"^'ada' already has an API token, shown when"):
        run("ada")
    assert Token.objects.get(user=user).key == key

    rotated = run("ada", "--rotate")
    assert rotated != key and Token.objects.get(user=user).key == rotated


def test_a_token_made_before_the_groups_gets_its_user_into_the_group():
    # Upgrading: clients made by the old command have a token and no group.
    user = User.objects.create_user("old-client")
    key = Token.objects.create(user=user).key
    with pytest.raises(CommandError, match="already has an API token"):
        run("old-client")
    assert user.groups.filter(name="Intake clients").exists()
    assert Token.objects.get(user=user).key == key


@pytest.mark.parametrize(
    ("username", "message"),
    [
        ("", "A username may not be empty."),
        (
            "two words",
            "Enter a valid username. This value may contain only letters, numbers, and "
            "@/./+/-/_ characters.",
        ),
        ("x" * 151, "Ensure this value has at most 150 characters (it has 151)."),
    ],
)
def test_a_bad_username_is_a_usage_error(username, message):
    with pytest.raises(CommandError) as error:
        run(username)
    assert str(error.value) == f"Error: argument username: {message}"
    assert not User.objects.exists() and not Token.objects.exists()

    with pytest.raises(SystemExit) as exit_info:
        execute_from_command_line(["manage.py", "create_api_token", username])
    assert exit_info.value.code == 2


def test_a_bad_username_prints_the_usage_and_nothing_on_stdout(capsys):
    with pytest.raises(SystemExit) as exit_info:
        execute_from_command_line(["manage.py", "create_api_token", "two words"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: manage.py create_api_token")
    assert "error: argument username: Enter a valid username." in captured.err


@pytest.mark.django_db(transaction=True)  # the command closes its connection on exit
def test_an_existing_token_exits_non_zero_with_one_line(capsys):
    Token.objects.create(user=User.objects.create_user("ada"))
    with pytest.raises(SystemExit) as exit_info:
        execute_from_command_line(["manage.py", "create_api_token", "ada"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().startswith("CommandError: 'ada' already has an API token")
    assert "\n" not in captured.err.strip()


def test_help_names_the_argument(capsys):
    with pytest.raises(SystemExit) as exit_info:
        execute_from_command_line(["manage.py", "create_api_token", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "username" in out and "--rotate" in out and "Intake clients" in out
    assert "--reviewer" in out and "Fraud reviewers" in out


def test_a_reviewer_token_reads_and_decides_reviews_but_places_no_order():
    err = StringIO()
    out = StringIO()
    call_command("create_api_token", "rita", "--reviewer", stdout=out, stderr=err)
    assert err.getvalue().strip() == "Created user 'rita' in 'Fraud reviewers'."
    user = User.objects.get(username="rita")
    assert [g.name for g in user.groups.all()] == ["Fraud reviewers"]
    assert user.has_perm("orders.decide_fraud_review") and not user.is_staff
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {out.getvalue().strip()}")
    assert api.get("/api/reviews/").status_code == 200
    assert api.post("/api/orders/", ORDER, format="json").status_code == 403
    assert api.get("/api/orders/").status_code == 403
    with pytest.raises(CommandError, match=r"^'rita' already has an API token.*'Fraud reviewers'"):
        run("rita", "--reviewer")
