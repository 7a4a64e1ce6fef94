"""``db.given_rows``: the batch transaction's keyed reads and writes through ``unnest`` arrays
(one statement for any number of keys) find, lock and update exactly the rows a tuple ``IN``
list does, in a real PostgreSQL, with the column types the stores pass (text, float, bytea,
timestamps with NULLs); the engine's connection options."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select, text, tuple_, update
from sqlalchemy.engine import make_url

from monitor.service.db import given_rows, make_engine, matches, table_of
from monitor.service.models import PerformanceBucketRow

pytestmark = pytest.mark.integration

KEY = ("site_id", "model_name", "model_version", "finding", "subgroup_field",
       "subgroup_value", "bucket", "threshold")  # fmt: skip
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _row(site: str, bucket: str, threshold: float) -> dict[str, object]:
    values = (site, "m", "1", "lesion", "", "", bucket, threshold)
    return dict(zip(KEY, values, strict=True)) | {
        "summary": site.encode(),
        "delays": {},
        "n": 0,
        "first_at": None,
        "last_at": None,
        "updated_at": NOW,
    }


def test_given_rows_find_lock_and_update_the_rows_a_tuple_in_list_finds(pg_engine: Engine) -> None:
    table = table_of(PerformanceBucketRow)
    stored = [_row(f"site-{i}", day, t) for i in range(30) for day in ("total", "2026-01-01")
              for t in (0.5, -1.0)]  # fmt: skip
    with pg_engine.begin() as connection:
        connection.execute(table.insert(), stored)
    wanted = [tuple(row[name] for name in KEY) for row in stored[::7]]
    wanted.append(("site-absent", "m", "1", "lesion", "", "", "total", 0.5))
    with pg_engine.begin() as connection:
        given = given_rows(table, KEY, wanted)
        locked = connection.execute(
            select(table.c.site_id, table.c.bucket, table.c.threshold, table.c.summary)
            .join(given, matches(table, given, KEY))
            .with_for_update(of=table)
        ).all()
        by_in_list = connection.execute(
            select(table.c.site_id, table.c.bucket, table.c.threshold, table.c.summary).where(
                tuple_(*(table.c[name] for name in KEY)).in_(wanted)
            )
        ).all()
        assert sorted(locked) == sorted(by_in_list)
        assert len(locked) == len(wanted) - 1  # the absent key finds nothing

        changes = [(*key, f"new-{key[0]}".encode(), 7, NOW) for key in wanted[:3]]
        given = given_rows(table, (*KEY, "summary", "n", "first_at"), changes)
        updated = connection.execute(
            update(table)
            .where(matches(table, given, KEY))
            .values(summary=given.c.summary, n=given.c.n, first_at=given.c.first_at)
        ).rowcount
    assert updated == 3
    with pg_engine.connect() as connection:
        rows = connection.execute(select(table).where(table.c.n == 7)).all()
    assert sorted((row.site_id, bytes(row.summary), row.first_at) for row in rows) == sorted(
        (key[0], f"new-{key[0]}".encode(), NOW) for key in wanted[:3]
    )


def test_engines_run_without_jit_unless_the_url_sets_options(pg_url: str) -> None:
    """``make_engine`` turns PostgreSQL's JIT off (a batched read of many streams was
    compiled for longer than it ran); options in the URL are the operator's and win."""
    # The embedded server's URL has a query of its own (its socket): add to it.
    with_options = make_url(pg_url).update_query_dict({"options": "-c jit=on"})
    for url, expected in (
        (pg_url, "off"),
        (with_options.render_as_string(hide_password=False), "on"),
    ):
        engine = make_engine(url)
        with engine.connect() as connection:
            assert connection.scalar(text("SHOW jit")) == expected
        engine.dispose()
