"""A beat started from Python ends when the process that started it is killed (SIGKILL: no
clean-up of its own runs), instead of retrying against a dead Redis for hours."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from warmstart.infra.errors import SettingsError
from warmstart.infra.parent import PARENT_PID_ENV, parent_pid_from
from warmstart.infra.services import free_port

from tests.helpers import wait_for

pytestmark = pytest.mark.integration

STARTER = """
import sys, time
from warmstart.processes import ChildProcess
beat = ChildProcess(["beat", "--loglevel", "WARNING"], {"redis_url": sys.argv[1]}).start()
print(beat.process.pid, beat.log.name, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    """The process exited (a zombie nobody reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_a_beat_ends_when_its_starter_is_killed() -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: the beat retries forever
    starter = subprocess.Popen([sys.executable, "-c", STARTER, dead_redis], stdout=subprocess.PIPE, text=True)
    beat_pid, log_path = 0, ""
    try:
        assert starter.stdout is not None
        beat_pid_text, log_path = starter.stdout.readline().split()
        beat_pid = int(beat_pid_text)
        # It runs (retrying its lease against the dead Redis) while its starter lives.
        wait_for(lambda: "failed while taking the beat lease" in Path(log_path).read_text(errors="replace"),
                 60, what="the beat to run")
        assert not gone(beat_pid)
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        wait_for(lambda: gone(beat_pid), 60, what="the orphaned beat to exit")
        assert "is gone: stopping" in Path(log_path).read_text(errors="replace")
    finally:
        starter.kill()
        starter.wait(10)
        if beat_pid and not gone(beat_pid):
            os.kill(beat_pid, signal.SIGKILL)
        if log_path:
            Path(log_path).unlink(missing_ok=True)


def test_the_parent_pid_is_validated() -> None:
    assert parent_pid_from({}) is None
    assert parent_pid_from({PARENT_PID_ENV: " 42 "}) == 42
    for bad in ("-1", "0", "abc", "4.5"):
        with pytest.raises(SettingsError, match=PARENT_PID_ENV):
            parent_pid_from({PARENT_PID_ENV: bad})
    result = subprocess.run([sys.executable, "-m", "warmstart.cli", "status"], capture_output=True, text=True,
                            env={**os.environ, PARENT_PID_ENV: "abc"}, timeout=60)
    assert result.returncode == 2 and f"{PARENT_PID_ENV} must be a process id" in result.stderr
