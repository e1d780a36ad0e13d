from django.core.management.base import BaseCommand

from workflows.engine.services import runs_reap


class Command(BaseCommand):
    help = (
        "Re-queue runs whose worker died (running with an expired lease) and pending runs "
        "never picked up. Also runs every minute as a django-q2 schedule."
    )

    def handle(self, *args: object, **options: object) -> None:
        requeued = runs_reap()
        self.stdout.write(f"re-queued {len(requeued)} run(s)")
        for run_id in requeued:
            self.stdout.write(f"  {run_id}")
