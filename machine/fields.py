"""Model fields that store secrets masked (machine.redaction) while the instance keeps the real values.

All deconstruct as the plain Django field they extend: masking is no schema change.
"""

from __future__ import annotations

from django.db import models

from machine import sealing
from machine.redaction import mask_cmd, mask_env, mask_nested
from machine.sealing import SealedField

__all__ = ["MaskedCmdField", "MaskedEnvField", "MaskedJSONField", "RedactedEnvField", "SealedField"]


def _save_secrets(instance) -> list[str]:
    """The secret values a save masks by value: the row's own argv/env and this process's environment."""
    return sealing.mask_values(instance)


class MaskedCmdField(models.JSONField):
    """The argv, stored masked (redaction.mask_cmd); the in-memory list keeps the real values.

    Deconstructs as a plain JSONField: no schema change.
    """

    def pre_save(self, model_instance, add):
        value = getattr(model_instance, self.attname)
        if isinstance(value, list | tuple):
            return mask_cmd(value, _save_secrets(model_instance))
        return value

    def get_prep_value(self, value):
        if isinstance(value, list | tuple):  # also what QuerySet.update() writes
            value = mask_cmd(value)
        return super().get_prep_value(value)

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.JSONField", args, kwargs


class MaskedEnvField(models.JSONField):
    """The env overlay, stored masked (redaction.mask_env); the in-memory dict keeps the real values.

    So a row built with a real token can still launch with it (and a queued one carries it sealed),
    while the database (and anything that reads the row back) never sees it. Deconstructs as a
    plain JSONField: no schema change.
    """

    def pre_save(self, model_instance, add):
        value = getattr(model_instance, self.attname)
        if isinstance(value, dict):
            return mask_env(value, _save_secrets(model_instance))
        return value

    def get_prep_value(self, value):
        if isinstance(value, dict):
            value = mask_env(value)
        return super().get_prep_value(value)

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.JSONField", args, kwargs


#: The older name of MaskedEnvField.
RedactedEnvField = MaskedEnvField


class MaskedJSONField(models.JSONField):
    """A JSON value stored with its secrets masked at any depth (redaction.mask_nested)."""

    def get_prep_value(self, value):
        if isinstance(value, dict | list):
            value = mask_nested(value)[0]
        return super().get_prep_value(value)

    def deconstruct(self):
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.JSONField", args, kwargs
