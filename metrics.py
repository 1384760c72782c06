"""Prometheus metrics over HTTP for the processor and the worker (the web process serves its own at /metrics).

`serve()` answers GET /metrics on its own thread with a registry's metrics in
the text format, plus any extra exposition (the worker appends the temporalio
SDK's own). With a token, a scrape needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from settings import Config, ConfigError

log = logging.getLogger("metrics")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # scrapes are not news
        pass


class MetricsServer:
    """A running metrics endpoint; `port` is where it listens (0 asked: the one picked)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, token: str | None = None,
                 extra: Callable[[], bytes] | None = None):
        self.registry, self.token, self.extra = registry, token, extra
        self.server = make_server(host, port, self.app, server_class=_Server, handler_class=_QuietHandler)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self.thread.start()

    def app(self, environ, start_response):
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: scrape /metrics\n"]
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if self.token and not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"missing or wrong metrics token\n"]
        body = generate_latest(self.registry) + (self.extra() if self.extra else b"")
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [body]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(config: Config, port_path: str, registry: CollectorRegistry,
          extra: Callable[[], bytes] | None = None) -> MetricsServer | None:
    """Serve `registry` on the port configured at `port_path` (METRICS_HOST, METRICS_TOKEN); None if unset."""
    port = config.get(port_path)
    if port is None:
        return None
    host = config.get("components.metrics.host", "127.0.0.1")
    try:
        server = MetricsServer(registry, host, int(port), config.get("components.metrics.token") or None, extra)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    log.info("serving metrics on %s:%s/metrics", host, server.port)
    return server
