from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

DEMO_USERNAME = "admin"
DEMO_PASSWORD = "polos-demo"


class Command(BaseCommand):
    help = "Create the demo admin user (development only) and print its credentials."

    def handle(self, *args: object, **options: object) -> None:
        if not settings.DEBUG:
            raise CommandError("bootstrap_demo is for development; it refuses DJANGO_DEBUG=0")
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=DEMO_USERNAME, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        self.stdout.write(
            f"Demo admin: http://127.0.0.1:8000/admin/  user {DEMO_USERNAME!r}  "
            f"password {DEMO_PASSWORD!r}"
            + ("" if created else " (user existed; password unchanged)")
        )
