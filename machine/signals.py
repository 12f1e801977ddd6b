"""Signals sent when a tracked process starts or ends and when a binary install succeeds or fails.

Each is sent from the one place the event is recorded, after the row is saved, with
`send_robust()`: a failing receiver is logged (logger `django.dispatch`) and never breaks the
worker that recorded the event. Connect receivers in your AppConfig.ready():

    from machine.signals import process_exited

    @receiver(process_exited)
    def alert_on_failure(sender, process, exit_code, **kwargs):
        if exit_code:
            ...
"""

from django.dispatch import Signal

#: A Process this app launched is running. sender: the Process model; kwargs: `process`.
process_started = Signal()

#: A launched Process's end is recorded (status exited). sender: the Process model; kwargs:
#: `process`, `exit_code` (126 when it could not be launched, 127 when the program is missing,
#: 128 + N when killed by signal N, None when nobody could observe it). Rows closed in bulk as stale
#: by `cleanup_stale_running()` are not signalled.
process_exited = Signal()

#: A provider hook installed (or found) a Binary. sender: the Binary model; kwargs: `binary`.
binary_installed = Signal()

#: An install run found no allowed provider for a Binary (it stays queued and is retried later).
#: sender: the Binary model; kwargs: `binary`.
binary_install_failed = Signal()
