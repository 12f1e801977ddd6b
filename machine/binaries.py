"""Binary behaviour: JSON in/out, the provider-hook install run, outcome bookkeeping, lib/bin links.

`BinaryMixin` is mixed into `machine.models.Binary`; this module never imports `machine.models`
(it reaches Machine and Process through the model's own relations). It runs hooks through
`machine.hook_runs`, which does read `machine.models`, so it binds that module, not its names:
either module may then be imported first.

Outcome of an install run (`Binary.run()`), each written by one UPDATE so a row is never half done:
- success: abspath/version/sha256/binprovider filled, status `installed`, retry_at cleared, one
  success counted, the binary linked into `<lib_dir>/bin`;
- failure: status stays `queued`, retry_at = now + RETRY_DELAY, one failure counted.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.db import IntegrityError, models, transaction
from django.utils import timezone
from django.utils.functional import classproperty

from hooks.discovery import discover_hooks, plugin_name_for
from hooks.overrides import override_problems
from hooks.records import MAX_REQUEST_RECORDS, binary_config_key, records_for_request
from machine import hook_runs, signals
from machine.choices import BinaryStatus
from machine.conf import machine_settings
from machine.processes import refuse_foreign_machine
from machine.redaction import mask_text
from machine.statemachines import BinaryInstallError
from workers.fencing import fenced, fenced_update

logger = logging.getLogger(__name__)

JSON_SCHEMA_VERSION = "0.9.0"
#: How long a failed install waits before a worker tries it again.
RETRY_DELAY = timedelta(minutes=5)
#: Extra lease on a claimed Binary beyond the install budget: killing a timed-out hook tree and
#: writing the outcome must also finish before another worker may take the row.
CLAIM_MARGIN_SECONDS = 60
BINARY_REQUEST_EVENT = "BinaryRequest"
#: Record fields a hook's `Binary` record fills in.
RESULT_FIELDS = ("abspath", "version", "sha256", "binprovider")


class BinaryLinkError(ValueError):
    """A name or path that would make a lib/bin link point or land somewhere unsafe."""


def parse_binproviders(value: Any) -> set[str] | None:
    """A comma list (or list) of provider names as a set; None for "any" (empty or `*`)."""
    if isinstance(value, (list, tuple, set)):
        parts = [str(part) for part in value]
    else:
        parts = str(value or "").split(",")
    names = {part.strip() for part in parts if part.strip()}
    if not names or "*" in names:
        return None
    return names


def format_binproviders(value: Any) -> str:
    """The comma-list form of a binproviders value (a string or a list), order kept."""
    parts = value if isinstance(value, (list, tuple)) else str(value or "").split(",")
    return ",".join(dict.fromkeys(str(part).strip() for part in parts if str(part).strip()))


def install_budget_seconds() -> int:
    """Seconds one `Binary.run()` may spend in provider hooks, all hooks together."""
    return max(1, int(machine_settings.INSTALL_TIMEOUT))


def claim_lease_seconds(requested: int = 60) -> int:
    """The lease a worker takes on a Binary: never shorter than the whole install may run."""
    return max(int(requested), install_budget_seconds() + CLAIM_MARGIN_SECONDS)


def install_hook_config() -> dict[str, str]:
    """The environment the provider hooks get: the lib dir, and the index/registry when set."""
    config = {"LIB_DIR": str(machine_settings.lib_dir)}
    if machine_settings.PIP_INDEX_URL:
        config["PIP_INDEX_URL"] = str(machine_settings.PIP_INDEX_URL)
    if machine_settings.NPM_REGISTRY:
        config["NPM_CONFIG_REGISTRY"] = str(machine_settings.NPM_REGISTRY)
    return config


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def canonical_binary_name(name: Any) -> str:
    """The name a binary is known by: a path-like reference (`/x/venv/bin/tool`, `~/bin/tool`) gives its
    file name; anything else is returned stripped; None gives ''."""
    text = str(name or "").strip()
    if "/" in text or "\\" in text or text.startswith("~"):
        try:
            return Path(text).expanduser().name
        except RuntimeError:  # `~` without a home directory
            return Path(text).name
    return text


def is_safe_binary_name(name: str) -> bool:
    """One plain file name: not empty, not . or .., no path separator or NUL (it names a folder and a link)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in ("/", "\\", "\0"))


def safe_link_path(lib_bin_dir: str | Path, name: str) -> Path:
    """`<lib_bin_dir>/<name>`, or BinaryLinkError when `name` is not one plain file name."""
    if not isinstance(name, str) or not name or name in (".", "..") or "\0" in name:
        raise BinaryLinkError(f"invalid binary name for a lib/bin link: {name!r}")
    if "/" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise BinaryLinkError(f"binary name must not contain a path separator: {name!r}")
    bin_dir = Path(lib_bin_dir).expanduser().resolve()
    link = bin_dir / name
    if link.parent != bin_dir:  # belt and braces: the checks above already ensure this
        raise BinaryLinkError(f"link for {name!r} would land outside {bin_dir}")
    return link


def safe_link_target(abspath: str) -> Path:
    """The real file a lib/bin link should point to (every symlink resolved), or BinaryLinkError.

    The abspath must be absolute and resolve (no symlink loop) to an existing file. Pointing at the
    real file means a link never points at itself or at another of our links.
    """
    if not isinstance(abspath, str) or not abspath or "\0" in abspath:
        raise BinaryLinkError(f"invalid abspath: {abspath!r}")
    path = Path(abspath)
    if not path.is_absolute():
        raise BinaryLinkError(f"abspath must be absolute: {abspath!r}")
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as err:  # missing file, or a symlink loop
        raise BinaryLinkError(f"abspath does not resolve to a file: {abspath!r} ({err})") from None
    if not real.is_file():
        raise BinaryLinkError(f"abspath is not a file: {abspath!r}")
    return real


def _in_app_bundle(target: Path) -> bool:
    """True for a macOS app bundle executable (`.../X.app/Contents/MacOS/...`)."""
    parts = target.parts
    return any(
        part.endswith(".app") and parts[i + 1 : i + 3] == ("Contents", "MacOS")
        for i, part in enumerate(parts)
    )


def write_symlink(link: Path, target: Path) -> Path:
    """Create or atomically replace the symlink `link` -> `target`; never overwrite a real file."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.exists() or link.is_symlink():
        if not link.is_symlink():
            raise BinaryLinkError(f"{link} exists and is not a symlink; refusing to replace it")
        if os.readlink(link) == str(target):
            return link
    tmp = link.parent / f".{link.name}.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return link


def absorb_duplicate(keep, duplicate) -> None:
    """The same binary was recorded under another row: move that row's hook history to `keep` and
    drop it, so (machine, name, abspath, version, sha256) stays unique."""
    duplicate.process_set.update(binary=keep)
    duplicate.delete()


class BinaryManagerMixin:
    """The database half of `BinaryManager.get_from_db_or_cache` (the cache lives in models.py)."""

    def record_binary(
        self,
        machine,
        name: str,
        abspath: str = "",
        version: str = "",
        sha256: str = "",
        binprovider: str = "env",
    ):
        """Get or create the row for exactly this binary; installed when abspath and version are known."""
        if not isinstance(name, str) or not is_safe_binary_name(name):
            raise ValueError(f"invalid binary name: {name!r} (one file name, no path)")
        key = {
            "machine": machine,
            "name": name,
            "abspath": abspath or "",
            "version": version or "",
            "sha256": sha256 or "",
        }
        installed = bool(abspath and version)
        defaults = {
            "binprovider": binprovider or "",
            "status": BinaryStatus.INSTALLED if installed else BinaryStatus.QUEUED,
            "retry_at": None if installed else timezone.now(),
        }
        binary, _created = self.get_or_create(**key, defaults=defaults)
        return binary


class BinaryMixin:
    """Behaviour of `machine.models.Binary` (see the module docstring for the install outcome)."""

    # -- views ---------------------------------------------------------------------------------

    @property
    def binary_info(self) -> dict[str, Any]:
        """The identifying facts of this binary as a plain dict."""
        return {
            "name": self.name,
            "abspath": self.abspath,
            "version": self.version,
            "sha256": self.sha256,
            "binprovider": self.binprovider,
            "binproviders": self.binproviders,
            "overrides": self.overrides,
            "is_valid": self.is_valid,
        }

    def to_json(self) -> dict[str, Any]:
        """A `Binary` record when abspath and version are known, else a `BinaryRequest` record."""
        base = {
            "schema_version": JSON_SCHEMA_VERSION,
            "id": str(self.id),
            "machine_id": str(self.machine_id),
            "name": self.name,
            "binproviders": self.binproviders,
            "overrides": self.overrides,
        }
        if not (self.abspath and self.version):
            return {"type": "BinaryRequest", **base, "status": self.status, "retry_at": _iso(self.retry_at)}
        return {
            "type": "Binary",
            **base,
            "binprovider": self.binprovider,
            "abspath": self.abspath,
            "version": self.version,
            "sha256": self.sha256,
            "status": self.status,
            "retry_at": _iso(self.retry_at),
            "num_uses_succeeded": self.num_uses_succeeded,
            "num_uses_failed": self.num_uses_failed,
            "created_at": _iso(self.created_at),
            "modified_at": _iso(self.modified_at),
        }

    @classmethod
    def _current_machine(cls):
        return cls._meta.get_field("machine").related_model.current()

    @classmethod
    def apply_record(cls, record: dict[str, Any]):
        """What `Binary.from_json()` does (see there); None for an unusable record, nothing written.

        On top of the original's rules: a name that is not one safe file name, or an abspath the
        column cannot hold whole, is refused; a request for a row a worker holds leaves its claim.
        """
        if not isinstance(record, dict):
            return None
        name = canonical_binary_name(record.get("name"))
        if not is_safe_binary_name(name) or len(name) > cls._meta.get_field("name").max_length:
            return None
        abspath = str(record.get("abspath") or "").strip()
        version = str(record.get("version") or "").strip()
        if len(abspath) > cls._meta.get_field("abspath").max_length:
            return None  # a path the row cannot hold whole: refused rather than cut
        overrides = record.get("overrides")
        overrides = overrides if isinstance(overrides, dict) else {}
        problems = override_problems(overrides)
        if problems:  # refused before anything is written or run
            logger.warning("Binary record for %r refused: %s", name, mask_text("; ".join(problems)))
            return None
        installed: dict[str, Any] | None = None
        request: dict[str, Any] = {}
        if abspath and version:
            installed = {
                "abspath": abspath,
                "version": version[:32],
                "sha256": str(record.get("sha256") or "").strip()[:64],
                "binprovider": str(record.get("binprovider") or "env")[:31],
                "status": BinaryStatus.INSTALLED,
                "retry_at": None,
            }
        if installed is not None and record.get("binproviders"):
            installed["binproviders"] = format_binproviders(record["binproviders"])
        elif "binproviders" in record or ("overrides" in record and not abspath):
            installed = None
            providers = record.get("binproviders", "env")
            request = {
                "binproviders": format_binproviders(providers) if providers is not None else "env",
                "overrides": overrides,
            }
        elif installed is None:
            return None
        machine = cls._current_machine()
        with transaction.atomic():
            # Lock the machine row: two processes sending a record for the same name must not both insert.
            machine.lock_row()
            existing = (
                cls._default_manager.filter(machine=machine, name=name)
                .order_by("-modified_at", "-created_at")
                .first()
            )
            if installed is None:
                return cls._apply_request(machine, existing, name, request)
            binary = cls._apply_installed(machine, existing, name, installed)
        binary.symlink_to_lib_bin_after_commit(machine_settings.lib_dir / "bin")
        return binary

    @classmethod
    def _apply_installed(cls, machine, existing, name: str, values: dict[str, Any]):
        """Fill the (newest) row of this name with an installed binary's facts, or create it."""
        if existing is None:
            return cls._default_manager.create(machine=machine, name=name, **values)
        manager = cls._default_manager
        facts = {key: values[key] for key in ("abspath", "version", "sha256")}
        duplicate = manager.filter(machine=machine, name=name, **facts).exclude(pk=existing.pk).first()
        if duplicate is not None:
            absorb_duplicate(existing, duplicate)
        manager.filter(pk=existing.pk).update(**values, modified_at=timezone.now())
        existing.refresh_from_db()
        return existing

    @classmethod
    def _apply_request(cls, machine, existing, name: str, request: dict[str, Any]):
        """Queue the (newest) row of this name with the request, or create it queued and due now."""
        now = timezone.now()
        manager = cls._default_manager
        if existing is None:
            return manager.create(
                machine=machine, name=name, status=BinaryStatus.QUEUED, retry_at=now, **request
            )
        # An installed row is queued again (to be checked again); its facts stay until a run replaces them.
        requeued = manager.filter(pk=existing.pk, status=BinaryStatus.INSTALLED).update(
            **request, status=BinaryStatus.QUEUED, retry_at=now, modified_at=now
        )
        if requeued:
            existing.refresh_from_db()
            return existing
        # Queued: only the request columns change (not modified_at: see is_backing_off); retry_at is
        # left to retry_now(), which never takes a row away from a worker that holds it.
        manager.filter(pk=existing.pk).update(**request)
        existing.refresh_from_db()
        existing.retry_now()
        return existing

    @property
    def is_backing_off(self) -> bool:
        """Queued after a failed install and waiting out RETRY_DELAY (not held by a worker).

        _record_failure writes retry_at = modified_at + RETRY_DELAY from one clock reading; a
        worker's claim moves retry_at without touching modified_at, so the two never look alike.
        """
        return (
            self.status == BinaryStatus.QUEUED
            and self.retry_at is not None
            and self.modified_at is not None
            and self.retry_at == self.modified_at + RETRY_DELAY
        )

    def retry_now(self) -> bool:
        """Make a queued row due now, unless a worker holds it; True when it is due now."""
        if self.status != BinaryStatus.QUEUED:
            return False
        now = timezone.now()
        if self.retry_at is not None and self.retry_at <= now:
            return True
        if self.retry_at is not None and not self.is_backing_off:
            return False  # claimed by a worker: its lease must hold
        guard = {"retry_at__isnull": True} if self.retry_at is None else {"retry_at": self.retry_at}
        updated = (
            type(self)
            ._default_manager.filter(
                pk=self.pk, status=BinaryStatus.QUEUED, modified_at=self.modified_at, **guard
            )
            .update(retry_at=now)
        )
        if updated:
            self.retry_at = now
        return bool(updated)

    def update_and_requeue(self, **kwargs) -> bool:
        """Set the given fields, bump modified_at and save (always); True."""
        known = {f.name for f in self._meta.concrete_fields} | {f.attname for f in self._meta.concrete_fields}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown Binary field(s): {', '.join(unknown)}")
        for field, value in kwargs.items():
            setattr(self, field, value)
        self.modified_at = timezone.now()
        self.save()
        return True

    def _allowed_binproviders(self) -> set[str] | None:
        """The providers this binary may be installed with; None (any) when empty or exactly `*`."""
        value = str(self.binproviders or "").strip()
        if not value or value == "*":
            return None
        return {part.strip() for part in value.split(",") if part.strip()}

    # -- the install run -----------------------------------------------------------------------

    @classproperty
    def claim_seconds(cls) -> int:
        """The lease a runner should take on a Binary (workers.runner reads `claim_seconds`)."""
        return claim_lease_seconds()

    @classmethod
    def claim_for_worker(cls, obj, lock_seconds: int = 60) -> bool:
        """Claim for at least the whole install budget, so no second worker installs concurrently."""
        return super().claim_for_worker(obj, lock_seconds=claim_lease_seconds(lock_seconds))

    @classmethod
    def claim_batch(cls, limit: int = 10, lock_seconds: int = 60, filters=None) -> list:
        """Claim due rows for at least the whole install budget (see claim_for_worker)."""
        return super().claim_batch(
            limit=limit, lock_seconds=claim_lease_seconds(lock_seconds), filters=filters
        )

    def tick_claimed(self, lock_seconds: int = 60) -> bool:
        """Claim, then tick once; a failed install is an outcome recorded on the row, not an error."""
        try:
            return super().tick_claimed(lock_seconds=lock_seconds)
        except BinaryInstallError as err:
            logger.info("%s", err)
            return True

    def _hook_kwargs(self) -> dict[str, Any]:
        overrides = self.overrides if isinstance(self.overrides, dict) else {}
        min_version = overrides.get("min_version")
        return {
            "binary_id": str(self.id),
            "machine_id": str(self.machine_id),
            "name": self.name,
            "binproviders": self.binproviders,
            "overrides": json.dumps(overrides, separators=(",", ":")),
            "min_version": str(min_version) if min_version else None,
        }

    def provider_hooks(self) -> list[Path]:
        """The `on_BinaryRequest__*` hooks whose plugin (provider) this binary allows, in run order."""
        allowed = self._allowed_binproviders()
        hooks = discover_hooks(BINARY_REQUEST_EVENT, [Path(d) for d in machine_settings.HOOK_DIRS])
        return [hook for hook in hooks if allowed is None or plugin_name_for(hook) in allowed]

    def run(self) -> bool:
        """Run the allowed provider hooks in order until one reports this binary; record the outcome.

        True when installed (row filled, success counted, linked into lib/bin); False when no hook
        succeeded (row stays queued, retry_at pushed back, failure counted). Never raises for a
        hook that crashes, hangs or prints garbage.
        """
        deadline = time.monotonic() + install_budget_seconds()
        problems = override_problems(self.overrides)
        if problems:  # refused before any installer runs
            logger.warning("not installing %s: %s", self.name, mask_text("; ".join(problems)))
            self._record_failure()
            return False
        config = install_hook_config()
        parent = self._parent_process()
        for hook in self.provider_hooks():
            remaining = deadline - time.monotonic()
            if remaining < 1:
                logger.warning("install budget spent before %s could run for %s", hook.name, self.name)
                break
            try:
                process = hook_runs.run_hook(
                    hook,
                    self.output_dir,
                    config=config,
                    timeout=int(remaining),
                    parent=parent,
                    **self._hook_kwargs(),
                )
            except Exception:  # a bad hook must cost one failed attempt, not the worker
                logger.exception("could not run %s for %s", hook, self.name)
                continue
            # A hook is trusted with its own request only: this binary's record and its *_BINARY
            # config key; everything else it printed is dropped, and reading stops at the budget.
            # (From the log file when the row stores only its tail: the first records count.)
            trusted = records_for_request(process.iter_records(), self.name, deadline=deadline)
            if trusted.dropped or trusted.cut_short:
                self._report_dropped(process, hook, trusted)
            result = self._pick_result(trusted.kept)
            if (
                process.exit_code == 0
                and result is not None
                and self._record_success(result, plugin_name_for(hook))
            ):
                # Its config key only counts from the hook that installed the binary.
                hook_runs.dispatch_records([r for r in trusted.kept if r.get("type") == "Machine"])
                return True
        self._record_failure()
        return False

    def _report_dropped(self, process, hook: Path, trusted) -> None:
        """One warning line (log and the hook row's stderr) for the records a hook was not trusted with."""
        line = (
            f"[machine] {hook.name}: dropped {trusted.dropped} record(s) outside its request for "
            f"{self.name!r} (only this binary's Binary record and {binary_config_key(self.name)} are "
            "accepted)" + (f"; stopped reading after {MAX_REQUEST_RECORDS} records or at the deadline"
            if trusted.cut_short else "")
        )  # fmt: skip
        logger.warning("%s", line)
        stderr = process.stderr or ""
        stderr = f"{stderr}{'' if not stderr or stderr.endswith(chr(10)) else chr(10)}{line}\n"
        type(process)._default_manager.filter(pk=process.pk).update(stderr=stderr)
        process.stderr = stderr

    def _is_own_result(self, record: dict) -> bool:
        return record.get("type") == "Binary" and str(record.get("name") or self.name) == self.name

    def _pick_result(self, records: list[dict]) -> dict | None:
        for record in records:
            if self._is_own_result(record) and record.get("abspath"):
                return record
        return None

    def _record_success(self, record: dict, hook_provider: str) -> bool:
        """Fill this row from a hook's Binary record in one update; False if the record is unusable."""
        values = {
            "abspath": str(record.get("abspath") or "")[:255],
            "version": str(record.get("version") or "")[:32],
            "sha256": str(record.get("sha256") or "")[:64],
            "binprovider": str(record.get("binprovider") or hook_provider)[:31],
        }
        if not values["abspath"].startswith("/") or not values["version"]:
            logger.warning(
                "hook %s printed an unusable Binary record for %s: %r", hook_provider, self.name, record
            )
            return False
        now = timezone.now()
        values.update(status=BinaryStatus.INSTALLED, retry_at=None, modified_at=now)
        manager = type(self)._default_manager
        with fenced(self):  # in a runner's tick: only while its claim holds (workers.fencing)
            key = {k: values[k] for k in ("abspath", "version", "sha256")}
            duplicate = (
                manager.filter(machine_id=self.machine_id, name=self.name, **key).exclude(pk=self.pk).first()
            )
            if duplicate is not None:
                absorb_duplicate(self, duplicate)
            try:
                fenced_update(self, **values)
            except IntegrityError:
                logger.exception("could not record the install of %s", self.name)
                return False
        for field, value in values.items():
            setattr(self, field, value)
        self.increment_health_stats(True)
        self.symlink_to_lib_bin(machine_settings.lib_dir / "bin")
        signals.binary_installed.send_robust(type(self), binary=self)
        return True

    def _record_failure(self) -> None:
        """Stay queued, due again after RETRY_DELAY, one failure counted: one UPDATE plus the counter."""
        now = timezone.now()  # one clock reading for both: see is_backing_off
        values = {"status": BinaryStatus.QUEUED, "retry_at": now + RETRY_DELAY, "modified_at": now}
        manager = type(self)._default_manager
        fenced_update(self, **values, num_uses_failed=models.F("num_uses_failed") + 1)
        for field, value in values.items():
            setattr(self, field, value)
        self.num_uses_failed = (
            manager.filter(pk=self.pk).values_list("num_uses_failed", flat=True).first() or 0
        )
        signals.binary_install_failed.send_robust(type(self), binary=self)

    @classmethod
    def _process_model(cls):
        return cls._meta.get_field("machine").related_model._meta.get_field("process_set").related_model

    def _parent_process(self):
        """This process's own Process row, the parent of the hook runs (None if it cannot be had)."""
        try:
            return self._process_model().current()
        except Exception:  # bookkeeping only: an install must not fail because of it
            logger.exception("no Process row for the installing process")
            return None

    def hook_processes(self) -> models.QuerySet:
        """The hook Process rows run for this binary (they run in its output_dir), oldest first."""
        process_model = self._process_model()
        # By the id at the end of the path, so rows written under another DATA_DIR still count.
        suffix = f"/binaries/{self.name}/{self.id}"
        return process_model._default_manager.filter(process_type="hook", pwd__endswith=suffix).order_by(
            "created_at"
        )

    def cleanup(self) -> int:
        """Stop this binary's hook processes that still run, and delete the `*.pid` files under
        output_dir; the number of processes stopped. Another machine's binary is refused."""
        machine_model = self._meta.get_field("machine").related_model
        refuse_foreign_machine(self.machine, machine_model.current(), f"clean up binary {self.name!r}")
        stopped = 0
        for process in self.hook_processes().filter(status="running", machine_id=self.machine_id):
            terminate = getattr(process, "terminate", None)
            if terminate is not None and terminate():
                stopped += 1
        output_dir = self.output_dir
        if output_dir.is_dir():
            for folder, _dirs, files in os.walk(output_dir):  # does not follow links out of the tree
                for file_name in files:
                    if file_name.endswith(".pid"):
                        Path(folder, file_name).unlink(missing_ok=True)
        return stopped

    def symlink_to_lib_bin(self, lib_bin_dir: str | Path) -> Path | None:
        """Link `<lib_bin_dir>/<name>` to this binary's real file; the link, or None if refused/failed.

        The link is named after the canonical name (the target's file name when there is none) and
        points at the abspath with every symlink resolved. An existing correct link is kept; a wrong
        one is replaced; a real file in the way is never replaced. A macOS app bundle executable
        (`X.app/Contents/MacOS/...`) is not linked: its path is returned instead.
        """
        if not self.abspath:
            return None
        try:
            bin_dir = Path(lib_bin_dir).expanduser().resolve()
            target = safe_link_target(self.abspath)
            link = safe_link_path(bin_dir, canonical_binary_name(self.name) or target.name)
            if _in_app_bundle(target):
                if link.is_symlink():
                    link.unlink()
                return target
            if link.is_symlink() and link.resolve() == target:
                return link
            return write_symlink(link, target)
        except (BinaryLinkError, OSError, RuntimeError) as err:
            logger.warning("not linking %s into %s: %s", self.name, lib_bin_dir, err)
            return None

    def symlink_to_lib_bin_after_commit(self, lib_bin_dir: str | Path) -> None:
        """symlink_to_lib_bin() once the current transaction commits (at once outside one), if the row
        still exists then."""
        pk, model, path = self.pk, type(self), Path(lib_bin_dir)

        def link() -> None:
            row = model._default_manager.filter(pk=pk).first()
            if row is not None:
                row.symlink_to_lib_bin(path)

        transaction.on_commit(link)
