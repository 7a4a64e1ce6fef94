"""The hash-chained change log against a real PostgreSQL database."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from monitor.service.audit.keys import (
    SigningKeyError,
    keyring,
    load_or_create_key,
    sign_entries_with_key,
)
from monitor.service.audit.signing import (
    CheckpointError,
    checkpoint,
    verify_checkpoint_offline,
    verify_checkpoints,
)
from monitor.service.audit.store import GENESIS, Entry, entries, entry_hash, export, record, verify
from monitor.service.models import ChangeLogRow

pytestmark = pytest.mark.integration


def entry(number: int) -> Entry:
    return Entry(
        actor=f"mlops-{number % 3}",
        action="retrain.requested",
        subject=f"cxr-lesion/request-{number}",
        details={"site_id": "site-02", "labels": {"overall": number, "site": 2}, "auroc": 0.1},
        reason="scanner change",
        plan_version="1.0.0",
    )


@pytest.fixture
def logged(pg_engine: Engine) -> Iterator[Engine]:
    for number in range(1, 11):
        record(pg_engine, entry(number))
    yield pg_engine


def untriggered(engine: Engine, statement: str) -> None:
    """Run ``statement`` with the append-only trigger lifted: what only the database owner
    could do, and what verify must catch."""
    with engine.begin() as connection:
        connection.execute(
            text("ALTER TABLE change_log DISABLE TRIGGER change_log_no_update_delete")
        )
        connection.execute(text(statement))
        connection.execute(
            text("ALTER TABLE change_log ENABLE TRIGGER change_log_no_update_delete")
        )


def test_a_clean_chain_verifies(logged: Engine) -> None:
    result = verify(logged)
    assert result.ok and result.entries == 10 and result.head_hash != GENESIS


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE change_log SET reason = 'nothing happened' WHERE seq = 3",
        "DELETE FROM change_log WHERE seq = 10",
        "TRUNCATE change_log",
    ],
)
def test_the_database_refuses_to_rewrite_history(logged: Engine, statement: str) -> None:
    with pytest.raises(DBAPIError, match="append-only"), logged.begin() as connection:
        connection.execute(text(statement))
    assert verify(logged).entries == 10


@pytest.mark.parametrize(
    ("statement", "first_bad", "problem"),
    [
        (
            "UPDATE change_log SET details = jsonb_set(details, '{site_id}', '\"site-01\"') "
            "WHERE seq = 3",
            3,
            "content does not match",
        ),
        ("UPDATE change_log SET actor = 'someone-else' WHERE seq = 10", 10, "content"),
        ("DELETE FROM change_log WHERE seq = 5", 6, "expected entry 5"),
        ("UPDATE change_log SET entry_hash = repeat('a', 64) WHERE seq = 4", 4, "content"),
        ("UPDATE change_log SET prev_hash = repeat('0', 64) WHERE seq = 7", 7, "prev_hash"),
    ],
)
def test_tampering_with_any_row_is_found_and_named(
    logged: Engine, statement: str, first_bad: int, problem: str
) -> None:
    untriggered(logged, statement)
    result = verify(logged)
    assert not result.ok
    assert result.first_bad_seq == first_bad
    assert result.problem is not None and problem in result.problem


def test_concurrent_writers_never_fork_the_chain(pg_engine: Engine) -> None:
    def write(worker: int) -> None:
        for number in range(25):
            record(pg_engine, entry(worker * 100 + number))

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = verify(pg_engine)
    assert result.ok and result.entries == 100


def test_exports_hold_every_entry_with_its_hashes(logged: Engine) -> None:
    lines = [json.loads(line) for line in export(logged, "json").splitlines()]
    assert [line["seq"] for line in lines] == list(range(1, 11))
    assert lines[0]["prev_hash"] == GENESIS
    assert lines[-1]["entry_hash"] == verify(logged).head_hash
    assert lines[2]["details"] == {
        "auroc": 0.1,
        "labels": {"overall": 3, "site": 2},
        "site_id": "site-02",
    }
    rows = list(csv.DictReader(io.StringIO(export(logged, "csv"))))
    assert [row["entry_hash"] for row in rows] == [line["entry_hash"] for line in lines]
    assert json.loads(rows[0]["details"]) == lines[0]["details"]


def test_checkpoints_sign_the_head_and_catch_a_rewritten_log(
    logged: Engine, audit_key: Ed25519PrivateKey
) -> None:
    trusted = keyring(audit_key.public_key())
    signed = checkpoint(logged, audit_key)
    assert signed is not None and (signed.seq, signed.head_hash) == (10, verify(logged).head_hash)
    assert checkpoint(logged, audit_key) is None  # the head is already signed
    assert verify_checkpoints(logged, trusted) == []

    # Offline: the checkpoint, the public key and an export are enough.
    exported = export(logged, "json").splitlines()
    assert verify_checkpoint_offline(signed, trusted, exported) == []
    other = keyring(Ed25519PrivateKey.generate().public_key())
    assert any("not trusted" in p for p in verify_checkpoint_offline(signed, other, exported))
    forged = replace(signed, head_hash="b" * 64)
    assert any("signature" in p for p in verify_checkpoint_offline(forged, trusted, exported))

    # Someone rewrites entry 4 and recomputes every hash after it: the chain verifies again,
    # but entry 4's signature no longer does, and the signed head no longer matches.
    rewrite_from(logged, 4, reason="rewritten")
    assert verify(logged).ok
    resigned = verify(logged, trusted)
    assert (resigned.first_bad_seq, resigned.problem) == (
        4,
        "entry 4: its signature does not verify",
    )
    assert any("not the signed one" in p for p in verify_checkpoints(logged, trusted))
    rewritten = export(logged, "json").splitlines()
    assert verify_checkpoint_offline(signed, trusted, rewritten) != []


def test_a_broken_chain_is_never_signed(
    logged: Engine, audit_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    untriggered(logged, "UPDATE change_log SET reason = 'edited' WHERE seq = 2")
    with pytest.raises(CheckpointError, match="broken at entry 2"):
        checkpoint(logged, audit_key)
    # Nor a log whose entries another key signed than the ones the signer trusts.
    stranger = load_or_create_key(tmp_path / "signing.key", create=True)
    with pytest.raises(CheckpointError, match="entry 1 is signed by a key that is not trusted"):
        checkpoint(logged, stranger)
    with pytest.raises(SigningKeyError, match="no audit signing key"):
        load_or_create_key(tmp_path / "missing.key", create=False)


def test_every_entry_is_signed_and_verifies_with_the_public_key_alone(
    logged: Engine, audit_key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    public = audit_key.public_key()
    assert {row.key_id for row in entries(logged)} == set(keyring(public))
    result = verify(logged, keyring(public))
    assert result.ok and result.signatures_checked and result.unsigned_through == 0
    assert "10 entries signed and chained" in result.summary()
    # The export carries the signatures, so an auditor checks them offline.
    lines = [json.loads(line) for line in export(logged, "json").splitlines()]
    assert all(len(line["signature"]) == 128 for line in lines)
    # Another key's public half does not vouch for them.
    stranger = keyring(Ed25519PrivateKey.generate().public_key())
    assert verify(logged, stranger).first_bad_seq == 1


def test_a_rotated_key_keeps_its_entries_verifiable_while_listed(
    logged: Engine, audit_key: Ed25519PrivateKey
) -> None:
    rotated = Ed25519PrivateKey.generate()
    sign_entries_with_key(rotated)
    record(logged, entry(11))
    record(logged, entry(12))
    both = keyring(audit_key.public_key(), rotated.public_key())
    assert verify(logged, both).ok
    only_new = verify(logged, keyring(rotated.public_key()))
    assert only_new.first_bad_seq == 1 and only_new.problem is not None
    assert "not trusted" in only_new.problem
    assert checkpoint(logged, rotated, both) is not None  # the new key signs the whole head
    assert verify_checkpoints(logged, both) == []


def rewrite_from(engine: Engine, seq: int, reason: str) -> None:
    """What an attacker with the database owner's rights could do: edit an entry and recompute
    the hash of it and of every entry after it."""
    rows = list(entries(engine))
    prev_hash = rows[seq - 2].entry_hash if seq > 1 else GENESIS
    trigger = "change_log_no_update_delete"
    with engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE change_log DISABLE TRIGGER {trigger}"))
        for row in rows[seq - 1 :]:
            fields = {c.name: getattr(row, c.name) for c in ChangeLogRow.__table__.columns}
            if row.seq == seq:
                fields["reason"] = reason
            fields["prev_hash"] = prev_hash
            fields["entry_hash"] = entry_hash(prev_hash, fields)
            connection.execute(
                text(
                    "UPDATE change_log SET reason = :reason, prev_hash = :prev_hash, "
                    "entry_hash = :entry_hash WHERE seq = :seq"
                ),
                fields,
            )
            prev_hash = fields["entry_hash"]
        connection.execute(text(f"ALTER TABLE change_log ENABLE TRIGGER {trigger}"))
