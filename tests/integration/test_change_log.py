"""The hash-chained change log against a real PostgreSQL database (and SQLite)."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from monitor.service.change_log import GENESIS, Entry, export, record, verify
from monitor.service.db import make_engine, upgrade

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


def test_the_embedded_sqlite_log_chains_and_verifies(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'radsentry.db'}")
    upgrade(engine)
    try:
        for number in range(1, 6):
            record(engine, entry(number))
        assert verify(engine).entries == 5
        with engine.begin() as connection:
            connection.execute(text("UPDATE change_log SET reason = 'edited' WHERE seq = 2"))
        result = verify(engine)
        assert (result.ok, result.first_bad_seq) == (False, 2)
    finally:
        engine.dispose()
