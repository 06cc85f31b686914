"""The transactional-call watchdog: fires only for a call that outlives its timeout plus the grace."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from radstream.stream_apps.txn_watchdog import TxnWatchdog

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_fires_only_past_timeout_plus_grace_and_only_while_armed() -> None:
    clock, hung = Clock(), []
    dog = TxnWatchdog(grace_s=5.0, on_hang=lambda: hung.append(clock.t), clock=clock)
    assert not dog.check()  # nothing armed
    with dog.guard("send_offsets_to_transaction", 30):
        clock.t += 34.9
        assert not dog.check()
        clock.t += 0.2
        assert dog.check() and hung == [135.1]
        assert not dog.check()  # once per hang
    clock.t += 1000
    assert not dog.check() and dog.fired == 1  # disarmed when the call returned


def test_a_call_that_returns_in_time_never_fires() -> None:
    clock, hung = Clock(), []
    dog = TxnWatchdog(grace_s=1.0, on_hang=lambda: hung.append(1), clock=clock)
    for _ in range(3):
        with dog.guard("commit_transaction", 60):
            clock.t += 59
            assert not dog.check()
    assert hung == []


def test_reexec_restarts_the_same_command_line(tmp_path: Path) -> None:
    """The default action replaces the process with the same command line (same pid)."""
    script = tmp_path / "hang.py"
    marker = tmp_path / "runs"
    script.write_text(textwrap.dedent(f"""
        import os, sys, threading, time
        from pathlib import Path
        from radstream.stream_apps.txn_watchdog import TxnWatchdog
        runs = Path({str(marker)!r})
        previous = runs.read_text().split() if runs.exists() else []
        runs.write_text(" ".join([*previous, str(os.getpid()), sys.argv[1]]))
        if previous:
            sys.exit(0)  # the re-executed image: done
        dog = TxnWatchdog(grace_s=0.2, interval_s=0.05)
        dog.start()
        with dog.guard("send_offsets_to_transaction", 0.1):
            time.sleep(30)  # the hung call
        sys.exit(3)
    """))
    out = subprocess.run([sys.executable, str(script), "arg"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid1, arg1, pid2, arg2 = marker.read_text().split()
    assert pid1 == pid2 and arg1 == arg2 == "arg"
    assert "restarting this process" in out.stderr
