"""The change log's signed checkpoints as an insider with the services' database credentials
would attack them: removing or editing the signatures that contradict a rewritten log, with
plain DML (refused by the table's triggers) or as the table's owner (named by the anchors)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from monitor.service.audit.signing import checkpoint, verify_checkpoints
from monitor.service.audit.store import Entry, record
from monitor.service.cli import app
from monitor.service.models import ChangeLogCheckpointRow

pytestmark = pytest.mark.integration


@pytest.fixture
def signed(pg_engine: Engine, tmp_path: Path) -> tuple[Engine, Ed25519PrivateKey]:
    """A change log of three entries whose head is signed."""
    for number in range(3):
        record(
            pg_engine,
            Entry(
                actor="mlops",
                action="retrain.requested",
                subject=f"m/request-{number}",
                details={},
            ),
        )
    key = Ed25519PrivateKey.generate()
    assert checkpoint(pg_engine, key) is not None
    return pg_engine, key


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM change_log_checkpoints",
        "TRUNCATE change_log_checkpoints",
        "UPDATE change_log_checkpoints SET head_hash = repeat('a', 64)",
        "UPDATE change_log_checkpoints SET signature = signature",
    ],
)
def test_the_checkpoints_cannot_be_removed_or_edited(
    signed: tuple[Engine, Ed25519PrivateKey], statement: str
) -> None:
    engine, key = signed
    refused = pytest.raises(DBAPIError, match="change_log_checkpoints is append-only")
    with refused, engine.begin() as connection:
        connection.execute(text(statement))
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(ChangeLogCheckpointRow)) == 1
    assert verify_checkpoints(engine, key.public_key()) == []


def test_checkpoints_the_table_owner_deletes_are_named_by_their_anchors(
    pg_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RADSENTRY_DATABASE__URL", pg_engine.url.render_as_string(False))
    monkeypatch.setenv("RADSENTRY_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    unsigned = runner.invoke(app, ["audit", "verify"])
    assert unsigned.exit_code == 1 and "unanchored" in unsigned.output
    assert runner.invoke(app, ["audit", "verify", "--allow-unanchored"]).exit_code == 0

    for number in range(3):
        record(pg_engine, Entry(actor="mlops", action="test", subject=f"s/{number}", details={}))
    signed = runner.invoke(app, ["audit", "checkpoint"])
    assert signed.exit_code == 0, signed.output
    assert [p.name for p in (tmp_path / "audit-anchors").iterdir()] == [
        "000000000003.checkpoint.json"
    ]
    assert runner.invoke(app, ["audit", "verify"]).exit_code == 0

    # What the owner of the table can do (and the services' role still is the owner).
    trigger = "change_log_checkpoints_no_update_delete"
    with pg_engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE change_log_checkpoints DISABLE TRIGGER {trigger}"))
        connection.execute(text("DELETE FROM change_log_checkpoints"))
        connection.execute(text(f"ALTER TABLE change_log_checkpoints ENABLE TRIGGER {trigger}"))
    caught = runner.invoke(app, ["audit", "verify"])
    assert caught.exit_code == 1
    assert "anchored checkpoint 3 is missing from the database" in caught.output
