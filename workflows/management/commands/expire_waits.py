from django.core.management.base import BaseCommand

from workflows.engine.services import waits_expire


class Command(BaseCommand):
    help = (
        "Resume every suspended run whose wait passed its deadline, with "
        '{"data": {}, "timed_out": true}. Also runs every minute as a django-q2 schedule.'
    )

    def handle(self, *args: object, **options: object) -> None:
        expired = waits_expire()
        self.stdout.write(f"expired {len(expired)} wait(s)")
        for wait in expired:
            self.stdout.write(f"  run {wait.run_id} at {wait.key!r}")
