"""Test settings whose process dies (SIGKILL) right after its first spawn, before recording it.

With TEST_DIE_AFTER_SPAWN=<flag file>, the first process_utils.spawn() of any process using these
settings (a runner's worker, a `manage.py shell`) creates the flag file and SIGKILLs its own
process as soon as the child runs: the window in which a launch happened but its row was not
written yet. Later spawns (the flag file exists) are left alone. TEST_DIE_AFTER_SPAWN_WAIT=1 first
waits for the child to end (a launch that ran and ended before anyone looks at its row).
"""

import os
import signal

from tests.settings import *  # noqa: F403


def _install(flag: str) -> None:
    from machine import process_utils

    spawn = process_utils.spawn

    def spawn_then_die(*args, **kwargs):
        spawned = spawn(*args, **kwargs)
        try:
            os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return spawned
        if os.environ.get("TEST_DIE_AFTER_SPAWN_WAIT") == "1" and spawned.popen is not None:
            spawned.popen.wait()
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable: SIGKILLed")

    process_utils.spawn = spawn_then_die


if os.environ.get("TEST_DIE_AFTER_SPAWN"):
    _install(os.environ["TEST_DIE_AFTER_SPAWN"])
