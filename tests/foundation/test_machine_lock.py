import threading

import pytest
from django.db import connection, connections, transaction

import machine.models as mm
from machine.models import Binary, Machine, NetworkInterface, Process


def _fake_network(**kwargs):
    return {"mac_address": "02:00:00:00:00:02", "ip_public": "", "ip_local": "10.0.0.2", "dns_server": ""}


@pytest.mark.django_db(transaction=True)
def test_locking_the_machine_row_does_not_deadlock_with_rows_that_reference_it(monkeypatch):
    """A commits a Process row (its FK check takes FOR KEY SHARE on the machine row at commit) while
    B, holding the machine lock from NetworkInterface.current(), waits for a row A updated. With a
    FOR UPDATE lock that is a deadlock; FOR NO KEY UPDATE lets A commit first."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises whole write transactions: the row-lock interleaving cannot happen")
    machine = Machine.current()
    shared = Binary.objects.create(machine=machine, name="shared-row")
    monkeypatch.setattr(mm, "get_host_network", _fake_network)
    a_holds_row = threading.Event()
    b_holds_machine = threading.Event()
    errors: list[BaseException] = []

    def a() -> None:
        try:
            with transaction.atomic():
                Process.objects.create(machine=machine, cmd=["true"], status="running")
                Binary.objects.filter(pk=shared.pk).update(version="from-a")
                a_holds_row.set()
                b_holds_machine.wait(timeout=10)
            # leaving the block commits: the deferred FK check locks the machine row FOR KEY SHARE
        except BaseException as exc:  # noqa: BLE001  (reported to the test thread below)
            errors.append(exc)
        finally:
            connections.close_all()

    def b() -> None:
        try:
            a_holds_row.wait(timeout=10)
            with transaction.atomic():
                NetworkInterface.current(refresh=True)  # holds the machine row lock until commit
                b_holds_machine.set()
                Binary.objects.filter(pk=shared.pk).update(version="from-b")  # waits for A's commit
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert Binary.objects.get(pk=shared.pk).version == "from-b"
    assert NetworkInterface.objects.filter(machine=machine, ip_local="10.0.0.2").count() == 1
