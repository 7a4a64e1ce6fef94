"""The change log's signed checkpoints as an insider with the services' database credentials
would attack them: removing or editing the signatures that contradict a rewritten log."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from monitor.service.audit.signing import checkpoint, verify_checkpoints
from monitor.service.audit.store import Entry, record
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
