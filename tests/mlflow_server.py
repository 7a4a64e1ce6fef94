"""A real ``mlflow server`` for the integration tests: PostgreSQL store, local artifacts.

The server is the venv's own ``mlflow`` script, so the client and server versions match. It
gets a database of its own (created here, dropped with ``WITH (FORCE)`` at the end) and a free
port, and runs in its own process group so that stopping it also stops uvicorn's worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from monitor.service.broker import free_port
from tests.servers import fresh_database, stop_process_group, wait_until_serving

MLFLOW_DATABASE = "radsentry_mlflow"
"""Prefix of the backend stores' databases (``tests.servers.fresh_database``)."""
STARTUP_TIMEOUT_S = 90.0
"""Cold start is ~10 s (imports, then MLflow's schema migrations); a loaded box is slower."""


@contextmanager
def running_mlflow_server(admin_url: str, workdir: Path) -> Iterator[str]:
    """Start ``mlflow server`` on a fresh database; yield its URL; stop it and drop the database.

    ``admin_url``: a SQLAlchemy URL of the cluster's maintenance database (as for ``pg_url``).
    """
    with fresh_database(admin_url, MLFLOW_DATABASE) as store, _server(store, workdir) as url:
        yield url


class MlflowServer:
    """``mlflow server`` on ``store`` at a fixed port, which can be stopped and started again
    (the fault suite takes it down during a retrain); :func:`running_mlflow_server` for one
    that lives as long as a block."""

    def __init__(self, store: str, workdir: Path) -> None:
        self.store = store
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        if self._process is not None and self._process.poll() is None:
            return self.url  # already serving
        command = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            *("--backend-store-uri", self.store),
            *("--artifacts-destination", str(self.workdir / "artifacts")),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--workers", "1"),
            # The security middleware checks the Host header; name the one the tests send.
            *("--allowed-hosts", f"127.0.0.1:{self.port},localhost:{self.port}"),
        ]
        # The job runner (a huey consumer per job type, seven processes) serves features the
        # registry does not use; off, the server starts faster on a small box.
        environment = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        environment.pop("MLFLOW_TRACKING_URI", None)
        log_path = self.workdir / "mlflow-server.log"
        with log_path.open("ab") as server_log:
            self._process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=environment,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until_serving(
                f"{self.url}/health",
                self._process,
                log_path,
                name="mlflow server",
                timeout_s=STARTUP_TIMEOUT_S,
            )
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        if self._process is not None:
            stop_process_group(self._process)
            self._process = None


@contextmanager
def _server(store: str, workdir: Path) -> Iterator[str]:
    server = MlflowServer(store, workdir)
    try:
        yield server.start()
    finally:
        server.stop()
