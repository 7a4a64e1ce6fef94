"""How the long-running commands (``serve``, ``consume``, ``scheduler``) stop.

The first SIGTERM or SIGINT asks every part of the process to stop (:class:`GracefulStop`): the
API stops accepting connections and finishes its requests (at most :data:`API_DRAIN_S`), the
consumer finishes the batch in hand and commits its offsets after the database commit, the
scheduler lets running jobs finish and releases its lock, and the bundled broker, a child of
``serve``, is stopped last. The process then exits 0.

Everything together is bounded by :data:`STOP_BOUND_S`, under Kubernetes' default 30 s grace
period. A process still draining at the bound, or one that gets a second signal (a second
Ctrl-C), stops its children, says what it abandoned and exits :data:`EXIT_NOT_DRAINED`. Nothing
is lost by that: offsets are committed only after the database commit (the batch comes again),
and a retraining job resumes from its checkpoint once its lease runs out.

uvicorn handles SIGTERM itself and, since 0.29, raises the signal again once its server has
stopped, which ended ``serve`` with status 143 before the consumer was drained and left the
broker running under PID 1; :class:`ApiServer` leaves the signals to :class:`GracefulStop`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from types import FrameType, TracebackType
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_BOUND_S = 25.0
"""Seconds from the first signal to the exit, whatever is still draining then."""
API_DRAIN_S = 10.0
"""Seconds the API gives requests in flight once it stops accepting new connections."""
EXIT_NOT_DRAINED = 1
"""The exit status of a process that had to abandon work (bound reached, second signal)."""


class GracefulStop:
    """SIGTERM and SIGINT handling of one command, for the ``with`` block (main thread).

    ``requested`` is set by the first signal (pass it to loops as their stop event);
    :meth:`on_stop` callbacks run then, and must only ask (set an event, a flag). The block's
    end means "drained": if it does not come within ``bound_s``, or a second signal comes
    first, the :meth:`on_abandon` callbacks stop the children and the process exits
    :data:`EXIT_NOT_DRAINED` at once.
    """

    def __init__(self, command: str, bound_s: float = STOP_BOUND_S) -> None:
        self.command = command
        self.bound_s = bound_s
        self.requested = threading.Event()
        self._drained = threading.Event()
        self._on_stop: list[Callable[[], None]] = []
        self._on_abandon: list[Callable[[], None]] = []
        self._previous: dict[int, Any] = {}

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when a stop is requested (at once if it already was)."""
        self._on_stop.append(callback)
        if self.requested.is_set():
            callback()

    def on_abandon(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` before exiting undrained (stop a child process)."""
        self._on_abandon.append(callback)

    def request(self, reason: str = "requested") -> None:
        """Ask the process to stop (what a signal does); a second request abandons."""
        if self.requested.is_set():
            self._abandon(f"a second stop ({reason}) while draining")
        self.requested.set()
        # The watchdog logs: a signal handler that writes to stderr may interrupt a write.
        watchdog = threading.Thread(target=self._watch, args=(reason,), name="stop-watchdog")
        watchdog.daemon = True
        watchdog.start()
        for callback in self._on_stop:
            callback()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.request(signal.Signals(signum).name)

    def _watch(self, reason: str) -> None:
        log.info("stopping: draining work in flight", command=self.command, reason=reason)
        if not self._drained.wait(self.bound_s):
            self._abandon(f"still draining {self.bound_s:.0f} s after the stop")

    def _abandon(self, why: str) -> None:
        with contextlib.suppress(Exception):  # see request(): never let a log line stop this
            log.error("stopping without draining; unfinished work comes again", reason=why)
        for callback in reversed(self._on_abandon):
            with contextlib.suppress(Exception):  # exiting anyway: stop every child we can
                callback()
        os._exit(EXIT_NOT_DRAINED)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._drained.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class ApiServer(uvicorn.Server):
    """uvicorn's server without its own signal handling (see the module docstring): it stops
    when :meth:`request_exit` is called, finishing requests in flight first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        self.should_exit = True


class PortTaken(OSError):
    """The API's address is in use by another process."""


def port_taken(host: str, port: int) -> bool:
    """Whether another process listens on ``host:port`` (bound as uvicorn binds, with
    ``SO_REUSEADDR``, so a port in TIME_WAIT after a previous run counts as free). Asked
    before anything starts: uvicorn would find out only after the database, the broker and
    the consumer are up, and its one error line is lost among theirs."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def api_server(
    app: FastAPI, host: str, port: int, options: Mapping[str, Any] | None = None
) -> ApiServer:
    """An :class:`ApiServer` for ``app`` on ``host:port`` that drains for :data:`API_DRAIN_S`,
    with uvicorn ``options`` (the request limits' ``server_limits``)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=int(API_DRAIN_S),
        **(options or {}),
    )
    return ApiServer(config)
