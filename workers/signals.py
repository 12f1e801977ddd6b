"""The runner's lifecycle, as signals an app connects to in its AppConfig.ready().

The runner knows nothing of the apps whose rows it drives: `machine` registers the runner's
processes as Process rows and ends their children through these (machine/presence.py). Every
signal is sent with send_robust(): a receiver that fails (say, the database is down) is logged and
does not stop the runner.
"""

from django.dispatch import Signal

#: Orchestrator process, once started, before any worker. kwargs: orchestrator. A receiver may set
#: `orchestrator.presence_id` (a string handed to the workers as their parent's id).
orchestrator_started = Signal()
#: Orchestrator, every heartbeat interval. kwargs: orchestrator, worker_pids.
runner_heartbeat = Signal()
#: Orchestrator, after a worker process ended. kwargs: orchestrator, pid, exit_code.
worker_exited = Signal()
#: Orchestrator, when it stops. kwargs: orchestrator, exit_code.
orchestrator_stopped = Signal()
#: Worker process, once started, before its first claim. kwargs: worker, loop (workers.loop.EventLoop).
worker_started = Signal()
#: Worker, stopping, after its claims are handed back: end what its ticks started. kwargs: worker,
#: immediate (True: do not wait for anything).
worker_stopping = Signal()
#: Worker, last thing before it exits. kwargs: worker, exit_code.
worker_stopped = Signal()
