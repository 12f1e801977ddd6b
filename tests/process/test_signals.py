"""The app's signals, each sent once from where the event is recorded, with real processes and installs."""

from __future__ import annotations

import pytest

from machine.choices import BinaryStatus, ProcessStatus
from machine.models import Binary, Process
from machine.signals import binary_install_failed, binary_installed, process_exited, process_started

pytestmark = pytest.mark.django_db


@pytest.fixture
def received():
    """Every signal of the app received during the test: (signal name, sender, kwargs, row in the DB)."""
    events = []

    def listen(name):
        def receiver(sender, signal, **kwargs):
            row = kwargs.get("process") or kwargs.get("binary")
            stored = type(row).objects.filter(pk=row.pk).values("status").first()
            events.append((name, sender, kwargs, stored))

        return receiver

    receivers = {
        process_started: listen("process_started"),
        process_exited: listen("process_exited"),
        binary_installed: listen("binary_installed"),
        binary_install_failed: listen("binary_install_failed"),
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver)
    yield events
    for signal, receiver in receivers.items():
        signal.disconnect(receiver)


def test_a_background_process_sends_started_then_exited_with_its_exit_code(make_process, received):
    process = make_process(["sh", "-c", "sleep 0.2; exit 3"])
    process.launch(background=True)
    assert [e[0] for e in received] == ["process_started"]
    name, sender, kwargs, stored = received[0]
    assert sender is Process and kwargs["process"].pid == process.pid
    assert stored == {"status": ProcessStatus.RUNNING}  # saved before the signal

    assert process.wait(10) == 3
    assert [e[0] for e in received] == ["process_started", "process_exited"]
    _name, _sender, kwargs, stored = received[1]
    assert kwargs["exit_code"] == 3 and kwargs["process"].pk == process.pk
    assert stored == {"status": ProcessStatus.EXITED}
    process.poll()
    assert len(received) == 2  # polling an exited row sends nothing again


def test_a_missing_program_or_a_bad_row_is_an_exit_without_a_start(make_process, workdir, received):
    missing = make_process(["/no/such/program"])
    missing.launch()
    bad = make_process(["true"], pwd=str(workdir / "gone"))
    bad.save()
    bad.sm.tick()  # the worker's path: a row that cannot be launched is recorded exited (126)
    assert [(e[0], e[2]["exit_code"]) for e in received] == [("process_exited", 127), ("process_exited", 126)]


def test_a_failing_receiver_does_not_break_the_launch(make_process, received):
    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    process_started.connect(broken)
    try:
        process = make_process(["true"])
        process.launch()
    finally:
        process_started.disconnect(broken)
    assert process.exit_code == 0 and [e[0] for e in received] == ["process_started", "process_exited"]


def test_installs_send_installed_or_failed(data_dir, settings, received):
    settings.MACHINE_LIB_DIR = data_dir / "lib"
    found = Binary.from_json({"name": "sh", "binproviders": "env"})
    missing = Binary.from_json({"name": "no-such-binary-for-the-signal-test", "binproviders": "env"})

    assert found.tick_claimed() and missing.tick_claimed()

    outcomes = [(e[0], e[2]["binary"].name, e[3]["status"]) for e in received if e[0].startswith("binary")]
    assert outcomes == [
        ("binary_installed", "sh", BinaryStatus.INSTALLED),
        ("binary_install_failed", "no-such-binary-for-the-signal-test", BinaryStatus.QUEUED),
    ]
    assert all(e[1] is Binary for e in received if e[0].startswith("binary"))
