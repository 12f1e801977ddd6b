"""The main job: register this host, install a small manifest of binaries, run demo processes, report.

Phase 1 queues the manifest's binaries (rows already installed on this machine are reused) and runs
the workers until the Binary queue is idle; phase 2 queues the demo processes (plus `--version` of
every installed binary, linked to its Binary row) and runs them the same way.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from machine.conf import machine_settings
from machine.models import Binary, Machine, NetworkInterface, Process
from machine.redaction import redact_cmd
from workers.console import Console
from workers.progress import queue_progress
from workers.runner import Orchestrator, RunnerOptions, driven_models


class ManifestError(ValueError):
    """The manifest file is missing or malformed."""


@dataclass
class Manifest:
    binaries: list[dict[str, Any]]
    processes: list[dict[str, Any]]
    version_checks: bool = True


def default_manifest_path() -> Path:
    """The manifest shipped with this app (package data), so an installed wheel has it too."""
    return Path(__file__).resolve().parent / "manifest.json"


def load_manifest(path: Path) -> Manifest:
    """Read and check the manifest: {"binaries": [{"name", "binproviders"}], "processes": [{"cmd"}]}."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    binaries = data.get("binaries", [])
    processes = data.get("processes", [])
    if not isinstance(binaries, list) or not all(isinstance(b, dict) and b.get("name") for b in binaries):
        raise ManifestError(f'{path}: "binaries" must be a list of objects with a "name"')
    for item in processes:
        cmd = item.get("cmd") if isinstance(item, dict) else None
        if not (isinstance(cmd, list) and cmd and all(isinstance(a, str) and a for a in cmd)):
            raise ManifestError(
                f'{path}: every process needs "cmd", a non-empty list of strings, got {item!r}'
            )
    return Manifest(binaries, processes, bool(data.get("version_checks", True)))


@dataclass
class QuickstartResult:
    machine: Any
    iface: Any
    binaries: list = field(default_factory=list)
    processes: list = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    seconds: float = 0.0
    exit_code: int = 0


def queue_binaries(manifest: Manifest, machine) -> tuple[list, list[str]]:
    """A Binary row per manifest entry: the installed one when there is one, else a queued request."""
    rows, reused = [], []
    for entry in manifest.binaries:
        installed = Binary.objects.get_valid_binary(entry["name"], machine=machine)
        if installed is not None and installed.is_valid:
            rows.append(installed)
            reused.append(installed.name)
            continue
        record = {"name": entry["name"], "binproviders": entry.get("binproviders", "env")}
        if entry.get("overrides") is not None:
            record["overrides"] = entry["overrides"]
        rows.append(Binary.from_json(record))
    return rows, reused


def queue_processes(manifest: Manifest, machine, binaries: list, run_dir: Path) -> list:
    """Queued Process rows: the manifest's commands, then `<abspath> --version` of each installed binary."""
    commands: list[tuple[list[str], Any]] = [(item["cmd"], None) for item in manifest.processes]
    if manifest.version_checks:
        commands += [([b.abspath, "--version"], b) for b in binaries if b is not None and b.is_valid]
    run_dir.mkdir(parents=True, exist_ok=True)
    return [
        Process.objects.create(
            machine=machine, cmd=cmd, pwd=str(run_dir), timeout=60, binary=binary, process_type="binary"
        )
        for cmd, binary in commands
    ]


def run_queue(labels: tuple[str, ...], workers: int, console: Console, show_progress: bool) -> int:
    """Run the workers on these models until their queues are idle; return the runner's exit code."""
    options = RunnerOptions(
        workers=workers,
        until_idle=True,
        models=labels,
        poll=0.1,
        heartbeat=2.0,
        verbosity=max(console.verbosity - 1, 0),  # the workers' log lines: detail, from -v 2
    )
    progress = queue_progress(console, driven_models(labels), interval=0.2) if show_progress else None
    return Orchestrator(options, progress=progress).run()


def quickstart(
    manifest: Manifest, *, workers: int, console: Console, show_progress: bool
) -> QuickstartResult:
    """Phase 1 installs the binaries, phase 2 runs the processes; progress goes to `console`."""
    started = time.monotonic()
    machine = Machine.current()
    iface = NetworkInterface.current()
    result = QuickstartResult(machine=machine, iface=iface)

    binaries, result.reused = queue_binaries(manifest, machine)
    console.line(f"[1/2] binaries: {len(binaries)} in the manifest, {len(result.reused)} already installed")
    if len(result.reused) < len(binaries):  # nothing to install: no need to start the workers
        result.exit_code = run_queue(("machine.Binary",), workers, console, show_progress)
    result.binaries = [Binary.objects.get(pk=b.pk) for b in binaries if b is not None]

    # One working directory for the whole run: each Process row keeps its logs in its own folder.
    run_dir = machine_settings.data_dir / "quickstart" / time.strftime("%Y%m%d-%H%M%S") / str(os.getpid())
    processes = queue_processes(manifest, machine, result.binaries, run_dir)
    console.line(f"[2/2] processes: {len(processes)} queued")
    if not result.exit_code:
        result.exit_code = run_queue(("machine.Process",), workers, console, show_progress)
    result.processes = [Process.objects.get(pk=p.pk) for p in processes]
    result.seconds = time.monotonic() - started
    return result


# -- the summary -----------------------------------------------------------------------------


def _duration(process) -> str:
    if process.started_at and process.ended_at:
        return f"{(process.ended_at - process.started_at).total_seconds():.2f}s"
    return ""


def print_summary(console: Console, result: QuickstartResult) -> None:
    """The machine, the binaries and the processes of the run, as tables."""
    m, iface = result.machine, result.iface
    flags = " ".join(name for name, on in (("docker", m.hw_in_docker), ("vm", m.hw_in_vm)) if on)
    console.pairs(
        [
            ("Machine", f"{m.hostname} guid={m.guid[:12]} {m.os_platform} {m.os_arch} {flags}".rstrip()),
            (
                "Interface",
                f"{iface.iface or '-'} ip_local={iface.ip_local or '-'} mac={iface.mac_address or '-'}",
            ),
        ]
    )
    console.line()
    console.table(
        ("NAME", "VERSION", "PROVIDER", "HEALTH", "STATUS", "ABSPATH"),
        [
            (
                b.name,
                b.version,
                b.binprovider,
                f"{b.health}%",
                b.status + (" (reused)" if b.name in result.reused else ""),
                b.abspath,
            )
            for b in result.binaries
        ],
        title="Binaries",
    )
    console.line()
    console.table(
        ("COMMAND", "EXIT", "DURATION", "STATUS"),
        [(" ".join(redact_cmd(p.cmd))[:60], p.exit_code, _duration(p), p.status) for p in result.processes],
        title="Processes",
    )
    console.line()
    console.line(f"Done in {result.seconds:.1f}s")


def summary_records(result: QuickstartResult) -> list[dict]:
    return [
        result.machine.to_json(),
        result.iface.to_json(),
        *(b.to_json() for b in result.binaries),
        *(p.to_json() for p in result.processes),
    ]
