"""Abstract model bases shared by the other apps (and by downstream apps, as in the original).

No I/O here beyond what the original's bases do: `ModelWithOutputDir` makes its output directory
once the row is committed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import models, transaction
from django.db.models import F
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from uuid6 import uuid7

#: The user a row belongs to when nobody in particular created it.
SYSTEM_USERNAME = "system"


def normalize_config_json_values(config: Any) -> Any:
    """A copy of a config dict whose JSON-quoted strings (`'"abc"'`) are unquoted; anything else as is."""
    if not isinstance(config, dict):
        return config
    normalized = dict(config)
    for key, value in config.items():
        if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                decoded = json.loads(value)
            except ValueError:
                continue
            if isinstance(decoded, str):
                normalized[key] = decoded
    return normalized


def get_or_create_system_user_pk(username: str = SYSTEM_USERNAME):
    """The pk of the only superuser if there is exactly one, else of the `system` user (created if missing).

    The default owner of `ModelWithUUID.created_by`. The system user cannot log in (unusable password).
    """
    user_model = get_user_model()
    superusers = list(user_model._default_manager.filter(is_superuser=True).values_list("pk", flat=True)[:2])
    if len(superusers) == 1:
        return superusers[0]
    user, _created = user_model._default_manager.get_or_create(
        **{user_model.USERNAME_FIELD: username},
        defaults={"is_staff": True, "is_superuser": True, "email": "", "password": "!"},
    )
    return user.pk


class AutoDateTimeField(models.DateTimeField):
    """A DateTimeField stamped with now when the row is inserted or the value is empty."""

    def pre_save(self, model_instance, add):
        if add or not getattr(model_instance, self.attname, None):
            value = timezone.now()
            setattr(model_instance, self.attname, value)
            return value
        return super().pre_save(model_instance, add)


def _admin_change_url(obj: models.Model) -> str:
    return f"/admin/{obj._meta.app_label}/{obj._meta.model_name}/{obj.pk}/change/"


class ModelWithUUIDv7(models.Model):
    """A UUIDv7 primary key (time-ordered: new rows sort last) and created/modified timestamps.

    `ModelWithUUID` without the `created_by` owner: the machine app's own rows describe hosts and
    processes, not user content, and (as in the original) have no owner column.
    """

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    modified_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"[{self.id}] {type(self).__name__}"

    @property
    def admin_change_url(self) -> str:
        """Path of this row's change page in the Django admin."""
        return _admin_change_url(self)

    @property
    def api_url(self) -> str:
        """This row's REST API URL (the project's `api-1:get_any` route), or '' when there is none."""
        try:
            return reverse("api-1:get_any", args=[self.id])
        except NoReverseMatch:
            return ""

    @property
    def api_docs_url(self) -> str:
        """Where the API docs describe this model."""
        app = self._meta.app_label
        return f"/api/v1/docs#/{app.title()}%20Models/api_v1_{app}_get_{self._meta.db_table}"


class ModelWithUUID(ModelWithUUIDv7):
    """UUIDv7 id, timestamps and the user who created the row (the system user by default)."""

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        default=get_or_create_system_user_pk,
        null=False,
        db_index=True,
    )

    class Meta(ModelWithUUIDv7.Meta):
        abstract = True


class ModelWithNotes(models.Model):
    """Free-text notes an operator keeps on a row."""

    notes = models.TextField(blank=True, null=False, default="")

    class Meta:
        abstract = True


class ModelWithConfig(models.Model):
    """Per-row config overrides (JSON), with JSON-quoted string values unquoted on save."""

    config = models.JSONField(default=dict, null=True, blank=True, editable=True)

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        normalized = normalize_config_json_values(self.config)
        if normalized != self.config:
            self.config = normalized
            update_fields = kwargs.get("update_fields")
            if update_fields is not None and "config" not in update_fields:
                kwargs["update_fields"] = (*update_fields, "config")
        super().save(*args, **kwargs)


class ModelWithHealthStats(models.Model):
    """Counts successes and failures of a row's uses and derives a 0..100 health score."""

    num_uses_failed = models.PositiveIntegerField(default=0)
    num_uses_succeeded = models.PositiveIntegerField(default=0)

    class Meta:
        abstract = True

    @property
    def admin_change_url(self) -> str:
        """Path of this row's change page in the Django admin."""
        return _admin_change_url(self)

    @property
    def health(self) -> int:
        """Percentage of successful uses, rounded; 0 for a row never used."""
        total = self.num_uses_failed + self.num_uses_succeeded
        return round(self.num_uses_succeeded / max(total, 1) * 100)

    def increment_health_stats(self, success: bool) -> None:
        """Count one success or failure with an F() update (no lost updates), then reload both counters."""
        field = "num_uses_succeeded" if success else "num_uses_failed"
        values: dict[str, Any] = {field: F(field) + 1}
        if any(f.name == "modified_at" for f in self._meta.concrete_fields):
            values["modified_at"] = timezone.now()
        manager = type(self)._default_manager
        manager.filter(pk=self.pk).update(**values)
        # The in-memory counters may be stale after concurrent updates: read back the real ones.
        row = manager.filter(pk=self.pk).values("num_uses_failed", "num_uses_succeeded").first()
        if row is not None:
            self.num_uses_failed = row["num_uses_failed"]
            self.num_uses_succeeded = row["num_uses_succeeded"]
        if "modified_at" in values:
            self.modified_at = values["modified_at"]


class ModelWithOutputDir(ModelWithUUID):
    """A row with a directory of its own on disk; subclasses say where (`output_dir`).

    Saving the row makes the directory once the transaction commits (so a rolled-back row leaves
    no directory behind).
    """

    class Meta(ModelWithUUID.Meta):
        abstract = True

    def save(self, *args, **kwargs):
        output_dir = Path(self.output_dir)  # before the write: a subclass without one fails cleanly
        super().save(*args, **kwargs)
        transaction.on_commit(lambda: output_dir.mkdir(parents=True, exist_ok=True))

    @property
    def output_dir_parent(self) -> str:
        """The folder that groups rows of this model, e.g. `crawls`."""
        return f"{self._meta.model_name}s"

    @property
    def output_dir_name(self) -> str:
        """This row's own folder name: its id."""
        return str(self.id)

    @property
    def output_dir_str(self) -> str:
        """`<output_dir_parent>/<output_dir_name>`, relative to the data directory."""
        return f"{self.output_dir_parent}/{self.output_dir_name}"

    @property
    def output_dir(self) -> Path:
        """The absolute directory of this row; every concrete subclass defines it."""
        raise NotImplementedError(f"{type(self).__name__} must implement output_dir property")
