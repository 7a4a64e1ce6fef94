"""The change log and its signed checkpoints as an insider with the services' database
credentials would attack them: appending an entry with a correct chain hash (named by its
missing or wrong signature), removing or editing the checkpoints that contradict a rewritten
log, with plain DML (refused by the table's triggers) or as the table's owner (named by the
anchors)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from monitor.service.audit.keys import keyring, sign_entry
from monitor.service.audit.signing import checkpoint, verify_checkpoints
from monitor.service.audit.store import GENESIS, Entry, entry_hash, record, verify
from monitor.service.cli import app
from monitor.service.db import make_engine, upgrade
from monitor.service.models import ChangeLogCheckpointRow
from tests.servers import fresh_database, pg_admin_url

pytestmark = pytest.mark.integration


@pytest.fixture
def signed(pg_engine: Engine, audit_key: Ed25519PrivateKey) -> tuple[Engine, Ed25519PrivateKey]:
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
    assert checkpoint(pg_engine, audit_key) is not None
    return pg_engine, audit_key


def forge(
    engine: Engine, signer: Ed25519PrivateKey | None = None, copy_from: int | None = None
) -> int:
    """Append an approval entry as someone with database credentials alone would: the right
    sequence number and a correct chain hash (the hash is public arithmetic), signed by
    ``signer`` (the attacker's own key), with entry ``copy_from``'s signature, or unsigned.
    Plain SQL, so it also writes the log of a database not yet upgraded to signed entries."""
    with engine.connect() as connection:
        last = connection.execute(
            text("SELECT seq, entry_hash FROM change_log ORDER BY seq DESC LIMIT 1")
        ).first()
    seq, prev_hash = (1, GENESIS) if last is None else (last.seq + 1, last.entry_hash)
    fields: dict[str, Any] = {
        "seq": seq,
        "recorded_at": datetime.now(UTC),
        "actor": "bob",
        "action": "approval",
        "subject": "cxr-lesion/7",
        "reason": "looks fine",
        "plan_version": "1.0.0",
        "details": {"candidate_id": "c", "meaning": "approval"},
    }
    fields["prev_hash"] = prev_hash
    fields["entry_hash"] = entry_hash(prev_hash, fields)
    if signer is not None:
        fields["key_id"], fields["signature"] = sign_entry(signer, fields["entry_hash"])
    if copy_from is not None:
        with engine.connect() as connection:
            copied = connection.execute(
                text("SELECT key_id, signature FROM change_log WHERE seq = :seq"),
                {"seq": copy_from},
            ).one()
        fields["key_id"], fields["signature"] = copied.key_id, copied.signature
    columns = ", ".join(fields)
    values = ", ".join(
        "CAST(:details AS jsonb)" if column == "details" else f":{column}" for column in fields
    )
    with engine.begin() as connection:
        connection.execute(
            text(f"INSERT INTO change_log ({columns}) VALUES ({values})"),
            {**fields, "details": json.dumps(fields["details"])},
        )
    return seq


@pytest.mark.parametrize(
    ("signer", "copy_from", "problem"),
    [
        (None, None, "is unsigned: it was not written with the audit key"),
        (Ed25519PrivateKey.generate(), None, "is signed by a key that is not trusted"),
        (None, 2, "its signature does not verify"),
    ],
    ids=["unsigned", "own-key", "copied-signature"],
)
def test_an_entry_appended_with_database_credentials_alone_is_named(
    signed: tuple[Engine, Ed25519PrivateKey],
    signer: Ed25519PrivateKey | None,
    copy_from: int | None,
    problem: str,
) -> None:
    engine, key = signed
    seq = forge(engine, signer, copy_from)
    assert verify(engine).ok  # the chain alone is fooled: its hash is public arithmetic
    result = verify(engine, keyring(key.public_key()))
    assert result.first_bad_seq == seq and result.problem is not None
    assert problem in result.problem
    # Entries the services append after it still chain, and the forged one stays named; the
    # checkpoint job refuses to sign over it.
    record(engine, Entry(actor="mlops", action="test", subject="after", details={}))
    assert verify(engine, keyring(key.public_key())).first_bad_seq == seq
    with pytest.raises(Exception, match=f"broken at entry {seq}"):
        checkpoint(engine, key)


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
    assert verify_checkpoints(engine, keyring(key.public_key())) == []


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


def test_entries_from_before_the_upgrade_are_reported_and_no_later_unsigned_one_passes(
    audit_key: Ed25519PrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fresh_database(pg_admin_url(), "radsentry_upgrade") as url:
        engine = make_engine(url)
        try:
            upgrade(engine, "0013")  # a deployment before entries were signed
            for _ in range(3):
                forge(engine)
            upgrade(engine)  # nothing is re-signed: the three stay as they were
            record(engine, Entry(actor="mlops", action="test", subject="after", details={}))
            trusted = keyring(audit_key.public_key())
            result = verify(engine, trusted)
            assert result.ok and result.unsigned_through == 3
            assert "entries 1-3 unsigned, before 4" in result.summary()

            monkeypatch.setenv("RADSENTRY_DATABASE__URL", url)
            monkeypatch.setenv("RADSENTRY_DATA_DIR", str(tmp_path))
            runner = CliRunner()
            assert runner.invoke(app, ["audit", "checkpoint"]).exit_code == 0
            verified = runner.invoke(app, ["audit", "verify"])
            assert verified.exit_code == 0, verified.output
            assert "covered by signed checkpoint 4" in verified.output

            # After the upgrade an unsigned entry is a forgery, wherever it lands.
            seq = forge(engine)
            assert verify(engine, trusted).first_bad_seq == seq == 5
            named = runner.invoke(app, ["audit", "verify"])
            assert named.exit_code == 1 and "entry 5 is unsigned" in named.output
        finally:
            engine.dispose()
