"""Checkpoint anchors outside the database: written once, compared with the database's
checkpoints, and every disagreement named (files only, no database)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitor.service.audit.anchors import anchor, anchor_all, verify_anchors
from monitor.service.audit.signing import Checkpoint, CheckpointError

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
DAY = timedelta(hours=48)


def point(seq: int, hours_ago: float = 1.0) -> Checkpoint:
    return Checkpoint(
        seq=seq,
        head_hash=f"{seq:064x}",
        signed_at=NOW - timedelta(hours=hours_ago),
        key_id="k" * 64,
        signature="ab" * 64,
    )


def check(stored: list[Checkpoint], folder: Path, **options: bool) -> list[str]:
    return verify_anchors(stored, folder, max_age=DAY, now=NOW, **options)


def test_anchored_checkpoints_that_match_the_database_verify(tmp_path: Path) -> None:
    stored = [point(3), point(7)]
    anchor_all(tmp_path, stored)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000000000003.checkpoint.json",
        "000000000007.checkpoint.json",
    ]
    assert check(stored, tmp_path) == []


def test_a_checkpoint_deleted_from_the_database_is_named_by_its_anchor(tmp_path: Path) -> None:
    anchor_all(tmp_path, [point(3), point(7)])
    assert check([point(3)], tmp_path) == ["anchored checkpoint 7 is missing from the database"]
    assert check([], tmp_path) == [
        "anchored checkpoint 3 is missing from the database",
        "anchored checkpoint 7 is missing from the database",
    ]


def test_a_checkpoint_rewritten_in_the_database_differs_from_its_anchor(tmp_path: Path) -> None:
    anchor(tmp_path, point(3))
    rewritten = replace(point(3), head_hash="f" * 64)
    assert check([rewritten], tmp_path) == ["checkpoint 3 in the database differs from its anchor"]


def test_a_checkpoint_never_anchored_is_named(tmp_path: Path) -> None:
    anchor(tmp_path, point(3))
    problems = check([point(3), point(7)], tmp_path)
    assert problems == [f"checkpoint 7 was never anchored in {tmp_path}"]


def test_an_anchor_is_written_once_and_never_replaced(tmp_path: Path) -> None:
    first = anchor(tmp_path, point(3))
    assert anchor(tmp_path, point(3)) == first  # the same checkpoint again: nothing changes
    with pytest.raises(CheckpointError, match="anchors another checkpoint 3"):
        anchor(tmp_path, replace(point(3), signature="cd" * 64))
    assert check([point(3)], tmp_path) == []


def test_a_log_without_any_checkpoint_is_unanchored_unless_allowed(tmp_path: Path) -> None:
    (problem,) = check([], tmp_path / "absent")
    assert problem.startswith("the change log is unanchored")
    assert check([], tmp_path / "absent", allow_unanchored=True) == []


def test_a_stale_newest_checkpoint_fails(tmp_path: Path) -> None:
    stored = [point(3, hours_ago=72), point(7, hours_ago=49)]
    anchor_all(tmp_path, stored)
    (problem,) = check(stored, tmp_path)
    assert problem.startswith("the newest checkpoint (7, signed 2026-12-04 11:00 UTC)")
    fresh = [*stored, point(9, hours_ago=47)]
    anchor_all(tmp_path, fresh)
    assert check(fresh, tmp_path) == []


def test_an_unreadable_anchor_is_named(tmp_path: Path) -> None:
    anchor(tmp_path, point(3))
    (tmp_path / "000000000004.checkpoint.json").write_text("{not json", encoding="utf-8")
    assert check([point(3)], tmp_path) == [
        "anchor 000000000004.checkpoint.json cannot be read as a checkpoint"
    ]
