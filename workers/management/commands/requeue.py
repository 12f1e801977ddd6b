"""`manage.py requeue`: make failed rows due now again (parked ones by default) and forget their failures."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from workers.failures import requeue
from workers.models import TickFailure


class Command(BaseCommand):
    help = (
        "Re-queue rows whose ticks failed: the parked ones (default), or with --all also those backing "
        "off. Each becomes due now and its failure record is deleted."
    )

    def add_arguments(self, parser):
        parser.add_argument("ids", nargs="*", help="Only these rows (primary keys; default: every one)")
        parser.add_argument("--model", default="", help="Only rows of this model, e.g. machine.Binary")
        parser.add_argument(
            "--all", action="store_true", help="Also rows backing off, not only parked ones (default: False)"
        )
        parser.add_argument("--dry-run", action="store_true", help="Only say what would be re-queued")

    def handle(self, *, ids, model, all, dry_run, **_):
        records = TickFailure.objects.all()
        if not all:
            records = records.filter(parked_at__isnull=False)
        if model:
            matching = [
                label
                for label in records.values_list("model", flat=True).distinct()
                if label.lower() == model.lower()
            ]
            if not matching and not TickFailure.objects.filter(model__iexact=model).exists():
                raise CommandError(f"no failed rows of {model!r}")
            records = records.filter(model__in=matching)
        if ids:
            records = records.filter(object_id__in=ids)
        if dry_run:
            self.stdout.write(f"Would re-queue {records.count()} row(s)")
            return
        count = requeue(records)
        self.stdout.write(f"Re-queued {count} row(s)")
