"""Test settings that count every process's database transactions (bench/bench_idle.py).

Each process writes "<transactions>" to $BENCH_COUNT_DIR/<pid> every half second and at exit. A
transaction is a statement run in autocommit, or a commit or rollback of an atomic block.
"""

import atexit
import os
import threading

from tests.settings import *  # noqa: F403

_count = [0]
_lock = threading.Lock()


def _install() -> None:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.signals import connection_created

    def count(n: int = 1) -> None:
        with _lock:
            _count[0] += n

    def wrapper(execute, sql, params, many, context):
        if not context["connection"].in_atomic_block:
            count()
        return execute(sql, params, many, context)

    def on_created(sender, connection, **kwargs):
        connection.execute_wrappers.append(wrapper)

    connection_created.connect(on_created, weak=False)
    for name in ("commit", "rollback"):
        original = getattr(BaseDatabaseWrapper, name)

        def counted(self, _original=original):
            count()
            return _original(self)

        setattr(BaseDatabaseWrapper, name, counted)

    directory = os.environ["BENCH_COUNT_DIR"]

    def dump() -> None:
        with open(os.path.join(directory, str(os.getpid())), "w") as fh:
            fh.write(str(_count[0]))

    def loop() -> None:
        while True:
            dump()
            threading.Event().wait(0.5)

    threading.Thread(target=loop, daemon=True).start()
    atexit.register(dump)


if os.environ.get("BENCH_COUNT_DIR"):
    _install()
