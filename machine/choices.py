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
    SUPERVISORD = "supervisord", "Supervisord"  #: a process supervisor
    ORCHESTRATOR = "orchestrator", "Orchestrator"  #: the runner that starts and watches workers
    SERVER = "server", "Server"  #: the archiver's web server
    UPDATE = "update", "Update"  #: the archiver's `update` command
    ADD = "add", "Add"  #: the archiver's `add` command (in the foreground)
    SEARCH = "search", "Search"  #: the archiver's `search`/`list` commands
    WORKER = "worker", "Worker"  #: one worker of a runner
    CLI = "cli", "CLI"  #: any other command of the archiver (or of this app)
    HOOK = "hook", "Hook"  #: a plugin hook script
    BINARY = "binary", "Binary"  #: any other program
