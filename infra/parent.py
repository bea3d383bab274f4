"""Child processes that end with the process that started them.

A worker or beat started from Python (the tests, the demo, the benchmarks:
:mod:`warmstart.processes`) is told its starter's pid in ``WARMSTART_PARENT_PID``. When that
process is gone (killed, even by SIGKILL, so that no clean-up of its own ran), the child is
re-parented and notices: it stops itself as if asked (SIGTERM: a worker's warm shutdown, a
beat's stop), and exits outright if it is still there ``GRACE_S`` later. Without it, a test
run killed from outside left its beat retrying against a dead Redis for hours.

The kernel's own mechanism (``prctl(PR_SET_PDEATHSIG)``) must be set between fork and exec, in
a ``preexec_fn``, which is unsafe in a parent with threads (the tests start processes from
threads); polling ``getppid()`` once a second in the child needs neither.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Mapping

from warmstart.infra.errors import SettingsError

#: The environment variable that names the process whose death ends this one.
PARENT_PID_ENV = "WARMSTART_PARENT_PID"
#: How often the parent is looked for.
POLL_S = 1.0
#: After asking itself to stop, how long the process has before it exits outright.
GRACE_S = 30.0

log = logging.getLogger(__name__)


def parent_pid_from(env: Mapping[str, str]) -> int | None:
    """The pid in ``WARMSTART_PARENT_PID``, or None when it is not set.

    Raises:
        SettingsError: it is set but is not a positive process id.
    """
    raw = env.get(PARENT_PID_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise SettingsError(
            f"{PARENT_PID_ENV} must be a process id (a positive integer), got {raw!r}; unset it "
            "unless this process should end with that one"
        )
    return int(raw)


def exit_with_parent(parent_pid: int, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> threading.Thread:
    """Watch ``parent_pid`` from a daemon thread; once it is no longer this process's parent,
    send this process SIGTERM, then end it ``grace_s`` later if it is still running.

    Returns:
        The watching thread (started).
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        log.warning("the process that started this one (pid %d) is gone: stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        log.warning("still running %.0f s after the parent left: exiting", grace_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="warmstart-parent-watch", daemon=True)
    thread.start()
    return thread


def watch_parent_from_env(env: Mapping[str, str] | None = None) -> threading.Thread | None:
    """:func:`exit_with_parent` for the pid in ``WARMSTART_PARENT_PID``, when it is set.

    Raises:
        SettingsError: the variable is malformed.
    """
    pid = parent_pid_from(os.environ if env is None else env)
    return None if pid is None else exit_with_parent(pid)


__all__ = ["PARENT_PID_ENV", "parent_pid_from", "exit_with_parent", "watch_parent_from_env"]
