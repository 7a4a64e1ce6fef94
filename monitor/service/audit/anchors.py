"""Checkpoints anchored outside the database: every signed checkpoint is also a file.

A checkpoint in the database can be deleted by whoever owns the database; a copy on storage
the database cannot reach (production: a WORM volume or an object-storage mount, named by
``RADSENTRY_AUDIT__ANCHOR_DIR``) cannot be, so a rewritten log whose checkpoints were removed
still meets the anchored signature. One file per checkpoint, ``<seq>.checkpoint.json``, the
checkpoint's own JSON; a file is written once and never replaced.

:func:`verify_anchors` compares the two sides: an anchored checkpoint missing from the
database, or different there, a stored checkpoint never anchored, a newest checkpoint older
than allowed, and (unless allowed) a log with no checkpoint at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from monitor.service.audit.keys import Keyring
from monitor.service.audit.signing import Checkpoint, CheckpointError, checkpoint, checkpoints
from monitor.service.db import as_utc
from monitor.service.settings import Settings

log = structlog.get_logger(__name__)

SUFFIX = ".checkpoint.json"


def sign_and_anchor(
    engine: Engine, key: Ed25519PrivateKey, directory: Path, trusted: Keyring | None = None
) -> Checkpoint | None:
    """Sign the log's head (``signing.checkpoint``, entries checked against ``trusted``; None
    when empty or already signed), then anchor every checkpoint that is not anchored yet."""
    signed = checkpoint(engine, key, trusted)
    anchor_all(directory, checkpoints(engine))
    return signed


def problems_of(
    engine: Engine, settings: Settings, *, allow_unanchored: bool, now: datetime
) -> list[str]:
    """:func:`verify_anchors` on the configured anchors and the database's checkpoints."""
    return verify_anchors(
        checkpoints(engine),
        settings.audit_anchor_dir,
        max_age=timedelta(hours=settings.audit.max_checkpoint_age_h),
        now=now,
        allow_unanchored=allow_unanchored,
    )


def anchor(directory: Path, point: Checkpoint) -> Path:
    """Write ``point`` under ``directory`` unless it is there already; refuse to replace an
    anchor that holds another checkpoint for the same sequence number."""
    path = directory / f"{point.seq:012d}{SUFFIX}"
    if path.exists():
        if not _same(_parse(path.read_text(encoding="utf-8")), point):
            raise CheckpointError(f"{path} anchors another checkpoint {point.seq}: not replaced")
        return path
    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(point.to_json(), encoding="utf-8")
    os.replace(partial, path)  # readers never see half a file
    log.info("change log checkpoint anchored", seq=point.seq, path=str(path))
    return path


def anchor_all(directory: Path, points: Iterable[Checkpoint]) -> list[Path]:
    """Anchor every checkpoint not anchored yet (a run that stopped between storing and
    anchoring is caught up by the next one)."""
    return [anchor(directory, point) for point in points]


def verify_anchors(
    stored: Sequence[Checkpoint],
    directory: Path,
    *,
    max_age: timedelta,
    now: datetime,
    allow_unanchored: bool = False,
) -> list[str]:
    """Problems between the database's checkpoints and the anchors; empty when they agree."""
    anchored, problems = _read(directory)
    by_seq = {point.seq: point for point in stored}
    for seq, point in sorted(anchored.items()):
        if seq not in by_seq:
            problems.append(f"anchored checkpoint {seq} is missing from the database")
        elif not _same(point, by_seq[seq]):
            problems.append(f"checkpoint {seq} in the database differs from its anchor")
    problems += [
        f"checkpoint {seq} was never anchored in {directory}"
        for seq in sorted(by_seq.keys() - anchored.keys())
    ]
    if not stored and not anchored:
        if not allow_unanchored:
            problems.append(
                "the change log is unanchored: no checkpoint yet (`radsentry audit checkpoint` "
                "signs one; --allow-unanchored accepts a log that has none)"
            )
    elif stored:
        newest = max(stored, key=lambda point: point.seq)
        signed = as_utc(newest.signed_at)
        if now - signed > max_age:
            problems.append(
                f"the newest checkpoint ({newest.seq}, signed {signed:%Y-%m-%d %H:%M} UTC) is "
                f"older than {max_age}"
            )
    return problems


def _read(directory: Path) -> tuple[dict[int, Checkpoint], list[str]]:
    anchored: dict[int, Checkpoint] = {}
    problems: list[str] = []
    for path in sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []:
        try:
            point = _parse(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            problems.append(f"anchor {path.name} cannot be read as a checkpoint")
            continue
        anchored[point.seq] = point
    return anchored, problems


def _parse(text: str) -> Checkpoint:
    document = json.loads(text)
    return Checkpoint(
        seq=int(document["seq"]),
        head_hash=str(document["head_hash"]),
        signed_at=datetime.fromisoformat(document["signed_at"]),
        key_id=str(document["key_id"]),
        signature=str(document["signature"]),
    )


def _same(left: Checkpoint, right: Checkpoint) -> bool:
    return (left.seq, left.head_hash, left.key_id, left.signature) == (
        right.seq,
        right.head_hash,
        right.key_id,
        right.signature,
    ) and as_utc(left.signed_at) == as_utc(right.signed_at)
