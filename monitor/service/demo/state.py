"""What a `radsentry demo` run leaves for the next one: resume, or start fresh by choice.

The database and the MLflow store already hold everything a stage produces; the demo adds one
small file, ``<data_dir>/demo-state.json``, that says which simulated stream it was (its
schedule, the start included, so a resumed stream is the same events) and which stages it
finished. A rerun with the same options resumes from the first unfinished stage; a rerun
with other options, or a data dir holding data no demo recorded, is refused with what to do
(``--fresh``), since starting over deletes data.

``--fresh`` starts over on whichever PostgreSQL serves the demo (the embedded server, its
cluster in ``data_dir/pg``, which stays, or a configured one): the schema is taken down to
Alembic's base and up again (the migrations' own downgrades), and the demo's files under
``data_dir`` are deleted. Secrets (token, pseudonymisation and signing keys) and the initial
model's rendered cohort (a deterministic cache) are kept. A configured database is wiped only
if it is a demo's (:func:`check_wipeable`): its change log begins with the demo's first start,
or it holds nothing; any other (a production database named by a stray
``RADSENTRY_DATABASE__URL``) is refused with :class:`NotTheDemosDatabase`, nothing deleted.
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog
from alembic import command
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy import Engine, exists, inspect, select

from monitor.service.db import alembic_config, upgrade
from monitor.service.demo.stages import Stage
from monitor.service.errors import ServiceError
from monitor.service.models import (
    CandidateRow,
    ChangeLogRow,
    InferenceEventRow,
    RetrainRequestRow,
)
from monitor.service.settings import Settings
from monitor.simulate import SimulationConfig

log = structlog.get_logger(__name__)

STATE_FILE: Final = "demo-state.json"
FRESH_HINT: Final = "`make run ARGS=--fresh` (or `radsentry demo --fresh`)"
"""What to run to start over, as every refusal and failure says it."""
DEMO_ACTOR: Final = "radsentry-demo"
"""Who the demo is in the change log: its first start's ``config.changed`` entry marks the
database as the demo's (:func:`check_wipeable`)."""


class CannotResume(ServiceError, RuntimeError):
    """The data dir holds a run this one cannot resume; the message says what to do."""


class NotTheDemosDatabase(ServiceError, RuntimeError):
    """``--fresh`` would delete every table of a configured database that is not a demo's."""


class DemoRecord(BaseModel):
    """The state file: the stream's schedule and how far the run got."""

    simulation: dict[str, Any]
    """The simulation config without its start (what must match to resume)."""
    start: AwareDatetime
    started_at: AwareDatetime
    reached: list[Stage] = Field(default_factory=list)
    summaries: dict[Stage, str] = Field(default_factory=dict)
    api_url: str | None = None
    """The API's address when the summaries were written (a rerun may serve on another)."""
    stream_scores: str | None = None
    """Who scored the stored stream: ``champion`` (every full run), or ``auto``/``score-model``
    (a stream-only run, ``--until stream``), which a full run cannot build on."""
    candidate_id: uuid.UUID | None = None
    model_version: str | None = None


def schedule_of(config: SimulationConfig) -> dict[str, Any]:
    """The parts of a simulation a resumed run must share (everything but the start)."""
    return config.model_dump(mode="json", exclude={"start", "master_key"})


def state_path(settings: Settings) -> Path:
    return settings.data_dir / STATE_FILE


def load(settings: Settings) -> DemoRecord | None:
    path = state_path(settings)
    if not path.exists():
        return None
    return DemoRecord.model_validate_json(path.read_bytes())


def save(settings: Settings, record: DemoRecord) -> None:
    """Write the state file whole or not at all (a crash leaves the previous one)."""
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(record.model_dump_json(indent=2))
    os.replace(partial, path)


def begin(
    settings: Settings, engine: Engine, config: SimulationConfig, *, fresh: bool
) -> tuple[SimulationConfig, DemoRecord]:
    """The run to do: a new one (first run, or ``fresh`` after wiping), or the previous one
    resumed, with its stream's start. CannotResume when neither is safe to choose alone.
    The schema is at head when this returns."""
    if fresh:
        check_wipeable(settings, engine)
        wipe(settings, engine)
    upgrade(engine)
    record = None if fresh else load(settings)
    if record is None:
        if not fresh and _holds_data(engine):
            raise CannotResume(
                f"the database of {settings.data_dir} holds events, requests or candidates "
                f"that no demo run recorded ({STATE_FILE} is missing), so this run cannot "
                f"resume them; start over with {FRESH_HINT}, which deletes them"
            )
        record = DemoRecord(
            simulation=schedule_of(config), start=config.start, started_at=datetime.now(UTC)
        )
        save(settings, record)
        return config, record
    differences = _differences(record.simulation, schedule_of(config))
    if differences:
        raise CannotResume(
            f"the previous demo run in {settings.data_dir} simulated another stream "
            f"({'; '.join(differences)}): rerun with its options to resume it, or start over "
            f"with {FRESH_HINT}"
        )
    return config.model_copy(update={"start": record.start}), record


def wipe(settings: Settings, engine: Engine) -> list[str]:
    """Delete what the demo stored: every table of the configured database (down to Alembic's
    base; :func:`begin` brings it back up) and the demo's files under ``data_dir``. What was
    deleted, for the console."""
    url = engine.url.render_as_string(hide_password=True)
    log.debug("resetting the demo's database", url=url)
    command.downgrade(alembic_config(engine), "base")
    deleted = [f"every table of {url}"]
    for path in _demo_files(settings):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        deleted.append(str(path))
    return deleted


def check_wipeable(settings: Settings, engine: Engine) -> None:
    """Whether :func:`wipe` may delete every table of the demo's database: always the embedded
    server's (its cluster is ``data_dir/pg``, the demo's own); a configured one only if its
    change log begins with the demo's first start (:data:`DEMO_ACTOR`) or it holds nothing.
    NotTheDemosDatabase otherwise, saying what to do."""
    if not settings.database.url or not inspect(engine).has_table(ChangeLogRow.__tablename__):
        return  # the embedded server's, or none of our tables there: nothing of another's
    with engine.connect() as connection:
        first = connection.scalar(select(ChangeLogRow.actor).order_by(ChangeLogRow.seq).limit(1))
    if first == DEMO_ACTOR or (first is None and not _holds_data(engine)):
        return
    url = engine.url.render_as_string(hide_password=True)
    started = f"began with {first}" if first is not None else "is empty but data is stored"
    raise NotTheDemosDatabase(
        f"--fresh deletes every table of {url} (RADSENTRY_DATABASE__URL), which is not a "
        f"demo's database: its change log {started}, not with the demo's first start. "
        "Nothing was deleted. Unset RADSENTRY_DATABASE__URL to run the demo on its own "
        "embedded PostgreSQL, or point it at a database of its own"
    )


def _demo_files(settings: Settings) -> list[Path]:
    data = settings.data_dir
    paths = [data / STATE_FILE, data / "simulated", data / "retrain", data / "reports"]
    if settings.mlflow.tracking_uri is None:  # the embedded store; a server is not ours to wipe
        paths += [data / "mlflow.db", data / "mlartifacts"]
    if settings.audit.anchor_dir is None:  # anchors of the chain just deleted
        paths.append(data / "audit-anchors")
    if settings.pccp.locked_cases_dir is None:  # written with the initial model
        paths.append(data / "locked-test")
    return paths


def _holds_data(engine: Engine) -> bool:
    with engine.connect() as connection:
        return any(
            connection.scalar(select(exists().select_from(table)))
            for table in (InferenceEventRow, RetrainRequestRow, CandidateRow)
        )


def _differences(previous: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    return [
        f"{name} {previous.get(name)} then, {requested.get(name)} now"
        for name in sorted(set(previous) | set(requested))
        if previous.get(name) != requested.get(name)
    ]
