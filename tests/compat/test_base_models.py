"""base_models.models as the original declares it; each test states the original's behaviour.

The concrete models come from tests/archiver, a downstream app declared the way the original's
crawls/core apps declare theirs.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import models, transaction
from django.test.utils import isolate_apps
from django.utils import timezone

from base_models.models import (
    AutoDateTimeField,
    ModelWithConfig,
    ModelWithHealthStats,
    ModelWithNotes,
    ModelWithOutputDir,
    ModelWithUUID,
    get_or_create_system_user_pk,
    normalize_config_json_values,
)
from tests.archiver.models import ArchiveResult, Crawl, Snapshot

User = get_user_model()


def make_crawl(**fields) -> Crawl:
    return Crawl.objects.create(urls=fields.pop("urls", "https://example.com"), **fields)


def make_result(**fields) -> ArchiveResult:
    snapshot = Snapshot.objects.create(crawl=make_crawl(), url="https://example.com/a")
    return ArchiveResult.objects.create(snapshot=snapshot, plugin=fields.pop("plugin", "title"), **fields)


def test_normalize_config_json_values_unquotes_json_strings_in_a_copy():
    """Original: a dict comes back as a copy whose '"..."' strings that decode to a str are unquoted."""
    config = {"USER_AGENT": '"ArchiveBox \\"Quoted\\" Agent"', "EXTRA": 'prefix "inner" suffix', "N": 3}
    result = normalize_config_json_values(config)
    assert result == {"USER_AGENT": 'ArchiveBox "Quoted" Agent', "EXTRA": 'prefix "inner" suffix', "N": 3}
    assert result is not config and config["USER_AGENT"].startswith('"')
    not_a_dict = ["x"]
    assert normalize_config_json_values(not_a_dict) is not_a_dict
    assert normalize_config_json_values({"BROKEN": '"unterminated'}) == {"BROKEN": '"unterminated'}


@pytest.mark.django_db
def test_system_user_is_the_only_superuser_else_a_system_account():
    """Original: exactly one superuser -> its pk; otherwise get-or-create `system` (staff, superuser)."""
    system_pk = get_or_create_system_user_pk()
    system = User.objects.get(pk=system_pk)
    assert (system.username, system.is_staff, system.is_superuser) == ("system", True, True)
    assert not system.has_usable_password()
    # `system` is now the one superuser, so it is found, not created again.
    assert get_or_create_system_user_pk() == system_pk
    User.objects.create_superuser("alice", "a@example.com", "pw")
    assert get_or_create_system_user_pk() == system_pk  # two superusers: the system account
    User.objects.filter(pk=system_pk).update(is_superuser=False)
    alice = User.objects.get(username="alice")
    assert get_or_create_system_user_pk() == alice.pk  # the only superuser


@isolate_apps("base_models")
def test_model_with_uuid_fields_are_the_originals():
    """Original: id UUIDField(pk, default=uuid7, editable=False, unique=True); created_at default now,
    indexed; modified_at auto_now; created_by FK to the user model, CASCADE, not null, indexed, defaulting
    to get_or_create_system_user_pk."""

    class Thing(ModelWithUUID):
        class Meta(ModelWithUUID.Meta):
            app_label = "base_models"

    meta = Thing._meta
    uid = meta.get_field("id")
    assert isinstance(uid, models.UUIDField) and uid.primary_key and uid.unique and not uid.editable
    assert uid.default().version == 7
    created_at = meta.get_field("created_at")
    assert created_at.db_index and created_at.default is timezone.now
    assert meta.get_field("modified_at").auto_now
    owner = meta.get_field("created_by")
    # (The isolated registry has no user model to resolve the FK to: compare the setting it names.)
    assert owner.remote_field.model == settings.AUTH_USER_MODEL
    assert owner.remote_field.on_delete is models.CASCADE
    assert (owner.null, owner.db_index, owner.default) == (False, True, get_or_create_system_user_pk)
    assert ModelWithUUID._meta.abstract and not Thing._meta.abstract


@pytest.mark.django_db
def test_created_by_defaults_to_the_system_user_and_str_urls_are_the_originals():
    """Original: an inherited created_by is the system user; __str__ '[<id>] ClassName';
    admin_change_url '/admin/<app>/<model>/<pk>/change/'; api_docs_url names the app's API table."""
    result = make_result()
    assert result.created_by.username == "system"
    assert str(result) == f"[{result.id}] ArchiveResult"
    assert result.admin_change_url == f"/admin/archiver/archiveresult/{result.pk}/change/"
    assert result.api_docs_url == "/api/v1/docs#/Archiver%20Models/api_v1_archiver_get_archiver_archiveresult"
    # Ours: '' when the project has no `api-1:get_any` route (the original raises NoReverseMatch).
    assert result.api_url == ""
    # ModelWithHealthStats has admin_change_url too.
    assert ModelWithHealthStats.admin_change_url.fget(result) == result.admin_change_url


@pytest.mark.django_db
def test_notes_and_config_fields_and_config_normalised_on_save():
    """Original: notes TextField('' default, blank); config JSONField(dict default, null, blank); save()
    unquotes JSON-quoted strings in config and adds 'config' to update_fields when it changed them."""
    notes = ModelWithNotes._meta.get_field("notes")
    assert (notes.default, notes.blank, notes.null) == ("", True, False)
    config = ModelWithConfig._meta.get_field("config")
    assert (config.default, config.null, config.blank, config.editable) == (dict, True, True, True)
    result = make_result()
    result.config = {"TIMEOUT": '"60"'}
    result.notes = "not saved: not in update_fields"
    result.save(update_fields=["notes"])
    result.refresh_from_db()
    assert result.config == {"TIMEOUT": "60"}
    assert result.notes == "not saved: not in update_fields"


@pytest.mark.django_db(transaction=True)
def test_output_dir_parts_and_directory_made_once_the_row_commits(data_dir):
    """Original: output_dir_parent '<model_name>s', output_dir_name str(id), output_dir_str
    'parent/name'; save() makes output_dir once the transaction commits."""
    crawl = Crawl(urls="https://example.com")
    assert (crawl.output_dir_parent, crawl.output_dir_name) == ("crawls", str(crawl.id))
    assert crawl.output_dir_str == f"crawls/{crawl.id}"
    with transaction.atomic():
        crawl.save()
        assert not crawl.output_dir.exists()  # not before the commit
    assert crawl.output_dir.is_dir()
    assert crawl.output_dir == data_dir.resolve() / "users" / "system" / "crawls" / str(crawl.id)


@isolate_apps("base_models")
@pytest.mark.django_db
def test_output_dir_must_be_implemented_and_nothing_is_written_without_it():
    """Original: output_dir raises NotImplementedError('<Class> must implement output_dir property');
    ours raises it before the row is written (the original wrote the row first)."""

    class NoDir(ModelWithOutputDir):
        created_by = None  # (no user model in the isolated registry)

        class Meta(ModelWithOutputDir.Meta):
            app_label = "base_models"

    row = NoDir()
    with pytest.raises(NotImplementedError, match="NoDir must implement output_dir property"):
        row.output_dir  # noqa: B018
    with pytest.raises(NotImplementedError):
        row.save()  # (no table exists: reaching the INSERT would raise a database error instead)


@pytest.mark.django_db
def test_auto_datetime_field_stamps_inserts_and_empty_values():
    """Original: AutoDateTimeField.pre_save sets now on insert or when the value is empty, else keeps it."""
    assert isinstance(Snapshot._meta.get_field("bookmarked_at"), AutoDateTimeField)
    before = timezone.now()
    snapshot = Snapshot.objects.create(crawl=make_crawl(), url="https://example.com/x")
    assert snapshot.bookmarked_at >= before
    kept = timezone.now() - timedelta(days=3)
    Snapshot.objects.filter(pk=snapshot.pk).update(bookmarked_at=kept)
    snapshot.refresh_from_db()
    snapshot.title = "t"
    snapshot.save()
    snapshot.refresh_from_db()
    assert snapshot.bookmarked_at == kept  # an update keeps a set value


@pytest.mark.django_db
def test_increment_health_stats_is_one_f_update_and_bumps_modified_at():
    """Original: increment_health_stats(success) adds 1 with an F() update and sets modified_at; ours
    also reloads both counters onto the instance (the original leaves them stale)."""
    crawl = make_crawl()
    stale = Crawl.objects.get(pk=crawl.pk)
    before = crawl.modified_at
    crawl.increment_health_stats(True)
    stale.increment_health_stats(False)  # another instance, unaware of the first update
    assert (stale.num_uses_succeeded, stale.num_uses_failed) == (1, 1)
    assert stale.health == 50
    assert Crawl.objects.get(pk=crawl.pk).modified_at > before
    assert make_crawl(urls="https://x.example").health == 0  # no uses yet
