"""The probe server of a worker or a beat: ``/metrics`` (Prometheus text), ``/healthz``
(liveness) and ``/readyz`` (readiness), on ``WARMSTART_METRICS_HOST``:``WARMSTART_METRICS_PORT``.

It runs on its own daemon threads (one per connection) and only reads: a scrape or a probe
calls the callables it was given, which must answer from memory (no broker round trip), so a
busy or wedged broker never makes a live process look dead.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from warmstart.infra.errors import ServiceError

log = logging.getLogger(__name__)

#: A probe: ``(ok, details)``; details are sent as the JSON body (200 when ok, else 503).
Probe = Callable[[], tuple[bool, dict[str, Any]]]


class ProbeServer:
    """Serves ``registry`` on ``/metrics`` and each probe on its path (``/healthz``, ``/readyz``)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, probes: dict[str, Probe]) -> None:
        self.registry = registry
        self.probes = dict(probes)
        handler = _handler(self)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServiceError(
                    f"the metrics port {host}:{port} is in use (another worker or beat on this host?): "
                    "set WARMSTART_METRICS_PORT to a free port, or 0 to serve no metrics"
                ) from e
            raise ServiceError(f"cannot serve metrics on {host}:{port}: {e}") from e
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS chose when asked for port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> "ProbeServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="warmstart-probes", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()


def _handler(server: ProbeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
            elif path in server.probes:
                try:
                    ok, details = server.probes[path]()
                except Exception as e:  # a probe that raises says "not ok", with why
                    ok, details = False, {"error": f"{type(e).__name__}: {e}"}
                body = json.dumps({"ok": ok, **details}, default=str).encode()
                self._send(200 if ok else 503, "application/json", body)
            else:
                self._send(404, "text/plain", b"not found: /metrics, " + ", ".join(server.probes).encode() + b"\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: not logged
            log.debug("probe %s", format % args)

    return Handler
