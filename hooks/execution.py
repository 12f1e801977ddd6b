"""Compatibility re-export: `run_hook` lives in `machine.hook_runs`, with the process supervisor.

Needs a configured Django (the names create and close `Process` rows); `import hooks` itself does not.
"""

from machine.hook_runs import EXIT_NOT_RUN, EXIT_TIMED_OUT, hook_env, run_hook

__all__ = ["EXIT_NOT_RUN", "EXIT_TIMED_OUT", "hook_env", "run_hook"]
