from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

DEMO_USERNAME = "admin"
DEMO_PASSWORD = "polos-demo"
# Reviewer alerts go to superusers when nobody else holds the reviewer's permission with
# an address (orders.selectors.reviewers_to_tell): without one, the demo's reviews
# would open unannounced. Printed by the console email backend, or caught by any SMTP
# sink (example.com delivers nowhere).
DEMO_EMAIL = "admin@example.com"


class Command(BaseCommand):
    help = (
        "Create the demo admin user (development only), with an email address for the "
        "reviewers' alerts, and print its credentials and the admin's link (SITE_URL)."
    )

    def handle(self, *args: object, **options: object) -> None:
        if not settings.DEBUG:
            raise CommandError("bootstrap_demo is for development; it refuses DJANGO_DEBUG=0")
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=DEMO_USERNAME,
            defaults={"is_staff": True, "is_superuser": True, "email": DEMO_EMAIL},
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        elif not user.email:  # made before the demo admin had an address
            user.email = DEMO_EMAIL
            user.save(update_fields=["email"])
        self.stdout.write(
            f"Demo admin: {settings.SITE_URL.rstrip('/')}/admin/  user {DEMO_USERNAME!r}  "
            f"password {DEMO_PASSWORD!r}  email {user.email}"
            + ("" if created else " (user existed; password unchanged)")
        )
