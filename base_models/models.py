"""Abstract model mixins shared by the other apps. No I/O here."""

from __future__ import annotations

from django.db import models
from django.db.models import F
from django.utils import timezone
from uuid6 import uuid7


class ModelWithUUID(models.Model):
    """A UUIDv7 primary key (time-ordered: new rows sort last) and created/modified timestamps."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    modified_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class ModelWithHealthStats(models.Model):
    """Counts successes and failures of a row's uses and derives a 0..100 health score."""

    num_uses_failed = models.PositiveIntegerField(default=0)
    num_uses_succeeded = models.PositiveIntegerField(default=0)

    class Meta:
        abstract = True

    @property
    def health(self) -> int:
        """Percentage of successful uses, rounded; 0 for a row never used."""
        total = self.num_uses_failed + self.num_uses_succeeded
        return round(self.num_uses_succeeded / max(total, 1) * 100)

    def increment_health_stats(self, success: bool) -> None:
        """Count one success or failure with an F() update, so concurrent callers lose nothing."""
        field = "num_uses_succeeded" if success else "num_uses_failed"
        type(self)._default_manager.filter(pk=self.pk).update(**{field: F(field) + 1})
        # Reload just the two counters: the in-memory values may be stale after concurrent updates.
        row = (
            type(self)
            ._default_manager.filter(pk=self.pk)
            .values("num_uses_failed", "num_uses_succeeded")
            .first()
        )
        if row is not None:
            self.num_uses_failed = row["num_uses_failed"]
            self.num_uses_succeeded = row["num_uses_succeeded"]
