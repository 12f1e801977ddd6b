"""State and type constants. This module must not depend on anything but Django's enums."""

from django.db import models


class BinaryStatus(models.TextChoices):
    QUEUED = "queued", "Queued"  #: waiting for a worker to find or install it
    INSTALLED = "installed", "Installed"  #: abspath, version and sha256 are known


class ProcessStatus(models.TextChoices):
    QUEUED = "queued", "Queued"  #: waiting to be launched
    RUNNING = "running", "Running"  #: launched (or registered) and not yet seen exiting
    EXITED = "exited", "Exited"  #: finished; exit_code says how


class ProcessType(models.TextChoices):
    SUPERVISORD = "supervisord", "supervisord"
    ORCHESTRATOR = "orchestrator", "Orchestrator"
    WORKER = "worker", "Worker"
    CLI = "cli", "CLI"
    HOOK = "hook", "Hook"
    BINARY = "binary", "Binary"
