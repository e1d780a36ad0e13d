"""`manage.py qcluster`: django-q2's command, on the cluster `workflows.worker.cluster`
extends (Django finds commands only here)."""

from typing import Any

from django_q.management.commands.qcluster import Command as DjangoQCommand

from workflows.worker.cluster import cluster_extend


class Command(DjangoQCommand):
    help = "Starts a django-q2 cluster whose workers each run many workflow segments."

    def handle(self, *args: Any, **options: Any) -> None:
        cluster_extend()
        super().handle(*args, **options)
