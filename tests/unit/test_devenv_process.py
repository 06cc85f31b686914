"""Process helpers of the local environment."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_sigterm_runs_the_finally_blocks_that_stop_private_servers(tmp_path: Path) -> None:
    """A benchmark killed by ``timeout`` stops what it started, as it does on Ctrl-C."""
    stopped = tmp_path / "stopped"
    script = textwrap.dedent(f"""
        import sys, time
        from radstream.devenv.process import exit_on_sigterm
        exit_on_sigterm()
        try:
            print("up", flush=True)
            time.sleep(60)
        finally:
            open({str(stopped)!r}, "w").write("servers stopped")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert stopped.read_text() == "servers stopped"
