"""Process bookkeeping for the local stack: pid records, liveness, ports, stopping.

Guarantees:

* A process is only ever treated as *ours* when its pid is alive, not a zombie,
  and both its ``/proc/<pid>/cmdline`` and its start time equal what was recorded
  when it was spawned. A pid reused by another program is therefore never
  signalled, and never reported as running.
* Pid records are written atomically (temporary file + rename): a crash never
  leaves a half-written record.

Failure modes: everything here reads ``/proc`` and so works on Linux only; on a
system without ``/proc`` no process is recognised as ours (``up`` then starts
fresh ones and fails on the occupied ports with a clear error).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PROC = Path("/proc")


@dataclass(frozen=True)
class PidRecord:
    """What we remember about a server process we spawned."""

    pid: int
    argv: tuple[str, ...]
    start_time: int

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "argv": list(self.argv), "start_time": self.start_time}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PidRecord:
        return cls(
            pid=int(data["pid"]),
            argv=tuple(str(a) for a in data["argv"]),
            start_time=int(data["start_time"]),
        )


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` so readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_pid_record(path: Path) -> PidRecord | None:
    """The record in ``path``, or None if it is missing or unreadable."""
    try:
        return PidRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, None if gone or a zombie."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _proc_cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    return tuple(part.decode(errors="surrogateescape") for part in raw.split(b"\0")[:-1])


def spawn(argv: Sequence[str], log_path: Path, cwd: Path, env: Mapping[str, str]) -> PidRecord:
    """Start ``argv`` detached (own session), stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: the server survives the CLI and its terminal, and a Ctrl-C
            # in the terminal does not reach it.
            start_new_session=True,
            close_fds=True,
        )
    start_time = _proc_start_time(proc.pid)
    return PidRecord(pid=proc.pid, argv=tuple(argv), start_time=start_time or 0)


def is_alive(record: PidRecord) -> bool:
    """True if the recorded process has not exited (same pid, same start time).

    Used while a server starts: its command line is not compared, because a
    freshly spawned process can briefly show an empty or partial one.
    """
    _reap(record.pid)
    start_time = _proc_start_time(record.pid)
    return start_time is not None and start_time == record.start_time


def is_ours(record: PidRecord) -> bool:
    """True if the recorded process is alive and still the program we started."""
    _reap(record.pid)
    start_time = _proc_start_time(record.pid)
    if start_time is None or start_time != record.start_time:
        return False
    return _proc_cmdline(record.pid) == record.argv


def _reap(pid: int) -> None:
    # When the stack was started by this very process (tests, the demo), a dead
    # server stays a zombie until we wait for it.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def send_signal(record: PidRecord, sig: signal.Signals) -> None:
    """Send ``sig`` to the recorded process (and its group) if it is still ours."""
    if is_ours(record):
        _signal(record, sig)


def _signal(record: PidRecord, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(record.pid) == record.pid:
            # We started it as a session leader: reach any helper it forked too.
            os.killpg(record.pid, sig)
        else:
            os.kill(record.pid, sig)


def terminate(records: Sequence[PidRecord], grace: float) -> list[PidRecord]:
    """SIGTERM every record that is still ours, SIGKILL the ones left after ``grace``.

    Returns the records that were signalled. Records that are not ours (exited,
    or pid reused) are skipped, never signalled.
    """
    live = [r for r in records if is_ours(r)]
    for record in live:
        _signal(record, signal.SIGCONT)  # a frozen (SIGSTOP) server cannot act on SIGTERM
        _signal(record, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(is_ours(r) for r in live):
        time.sleep(0.1)
    stragglers = [r for r in live if is_ours(r)]
    for record in stragglers:
        _signal(record, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(is_ours(r) for r in stragglers):
        time.sleep(0.05)
    return live


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could not bind ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like the servers themselves: a TIME_WAIT left by our own
        # previous run is not a conflict, a bound or listening socket is.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def port_open(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file (empty if it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])
