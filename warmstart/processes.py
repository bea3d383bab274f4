"""Worker and beat processes started from Python: for the demo, the benchmarks and the tests.

Each is a real ``python -m warmstart.cli …`` child process with its own ``WARMSTART_*``
environment, so what runs is exactly what a user would start by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from warmstart.infra.redis_client import connect
from warmstart.infra.errors import ServiceError
from warmstart.infra.parent import PARENT_PID_ENV
from warmstart.infra.services import terminate
from warmstart.workers.registry import WorkerRegistry


def settings_env(settings: Mapping[str, object]) -> dict[str, str]:
    """``{"redis_url": …}`` → ``{"WARMSTART_REDIS_URL": …}`` (lists joined with commas)."""
    env: dict[str, str] = {}
    for name, value in settings.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif hasattr(value, "get_secret_value"):  # a SecretStr (the signing key): its value, not its mask
            value = value.get_secret_value()
        env[f"WARMSTART_{name.upper()}"] = str(value)
    return env


class ChildProcess:
    """A warmstart CLI command in a child process, its output kept in a temp file."""

    def __init__(self, args: list[str], settings: Mapping[str, object], cwd: Path | None = None) -> None:
        self.args = args
        # The child ends with this process, even one killed without clean-up (infra/parent.py).
        self.env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1",
                    PARENT_PID_ENV: str(os.getpid())}
        self.cwd = cwd or Path.cwd()
        self.log = tempfile.NamedTemporaryFile(prefix="warmstart-", suffix=".log", delete=False)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "ChildProcess":
        self.process = subprocess.Popen(
            [sys.executable, "-m", "warmstart.cli", *self.args],
            env=self.env,
            cwd=self.cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not exit in time."""
        terminate(self.process, timeout_s)

    def kill(self) -> None:
        """SIGKILL: the worker dies without acknowledging or cleaning anything."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def close(self) -> None:
        self.stop()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


class WorkerProcess(ChildProcess):
    """``warmstart worker`` in a child process."""

    def __init__(self, name: str, settings: Mapping[str, object], concurrency: int = 2, cwd: Path | None = None) -> None:
        super().__init__(["worker", "--name", name, "--concurrency", str(concurrency), "--loglevel", "WARNING"], settings, cwd)
        self.name = name
        self.redis_url = str(settings["redis_url"])

    def wait_ready(self, timeout_s: float = 60.0) -> "WorkerProcess":
        """Wait for the worker's first heartbeat in Redis.

        Raises:
            ServiceError: it exited or sent no heartbeat in time; the message holds its output.
        """
        registry = WorkerRegistry(connect(self.redis_url))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServiceError(f"worker {self.name} exited:\n{self.output()[-4000:]}")
            if self.name in registry.workers()[0]:
                return self
            time.sleep(0.1)
        raise ServiceError(f"worker {self.name} sent no heartbeat within {timeout_s}s:\n{self.output()[-4000:]}")
