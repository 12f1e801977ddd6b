"""Compatibility re-export: record dispatch lives in `machine.hook_runs`, beside `run_hook`.

Needs a configured Django (the names call the models' `from_json`); `import hooks` itself does not.
"""

from machine.hook_runs import RECORD_MODELS, dispatch_record, dispatch_records

__all__ = ["RECORD_MODELS", "dispatch_record", "dispatch_records"]
