"""Liveness and readiness of the worker processes (``radsentry consume``, ``radsentry scheduler``).

The API answers ``/healthz`` and ``/readyz`` itself. The workers serve no API, so their metrics
port answers them beside ``/metrics``:

- ``/healthz`` (liveness): the worker's loop has gone round within ``stale_after_s``. A loop
  stuck in a call that never returns (a hung database statement, a wedged client) fails it and
  Kubernetes restarts the pod; that is safe, because offsets are committed only after the
  database commit and retraining resumes from its checkpoint.
- ``/readyz`` (readiness): live, and the last round went well (the consumer stored its batch;
  the scheduler reached the database). During a database outage a worker is live but not
  ready, so ``kubectl get pods`` shows it.

Both answer JSON, 200 or 503. The server is the standard library's WSGI server with
prometheus-client's WSGI app for ``/metrics``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import make_wsgi_app

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
Environ = dict[str, Any]


class Health:
    """A worker loop's health as its probes see it: ``beat`` once per round of the loop."""

    def __init__(self, stale_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._beat_at = clock()  # a fresh worker gets stale_after_s to finish its first round
        self._ok = False
        self._detail: dict[str, str] = {"state": "starting"}

    def beat(self, ok: bool = True, **detail: str) -> None:
        """The loop went round; ``ok``: the round's work succeeded; ``detail``: what the
        probes report (e.g. ``state="leading"``), kept until the next beat with detail."""
        with self._lock:
            self._beat_at = self._clock()
            self._ok = ok
            if detail:
                self._detail = detail

    def report(self) -> dict[str, Any]:
        with self._lock:
            age = self._clock() - self._beat_at
            return {
                "live": age <= self.stale_after_s,
                "ready": age <= self.stale_after_s and self._ok,
                "last_round_s": round(age, 3),
                "last_round_ok": self._ok,
                **self._detail,
            }


PROBES = {"/healthz": ("live", "ok", "stalled"), "/readyz": ("ready", "ready", "not ready")}
"""Each probe's path: the field of ``Health.report`` it answers, and its status either way."""


def probes_app(health: Health) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """The WSGI app of a worker's port: ``/healthz``, ``/readyz``, ``/metrics``; 404 else."""
    metrics = make_wsgi_app()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = metrics(environ, start_response)
            return body
        if path not in PROBES:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: /healthz, /readyz or /metrics\n"]
        field, good_status, bad_status = PROBES[path]
        report = health.report()
        good = report[field]
        report["status"] = good_status if good else bad_status
        code = "200 OK" if good else "503 Service Unavailable"
        start_response(code, [("Content-Type", "application/json")])
        return [orjson.dumps(report)]

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds: no access log."""


def serve_probes(health: Health, port: int, host: str) -> WSGIServer:
    """Serve ``probes_app(health)`` on ``host:port`` from a daemon thread (port 0: a free one,
    see ``server_port``)."""
    server = make_server(
        host, port, probes_app(health), server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
