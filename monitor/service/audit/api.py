"""The change log over HTTP for auditors: ``GET /audit``, paginated and filtered.

Entries come back as stored, with both hashes and each entry's signature and key id, so an
auditor can check the chain and the signatures over what the API returns; ``GET /audit/verify``
recomputes the whole chain and checks every signature on the server (``radsentry audit verify``
does the same and also checks the signed checkpoints and their anchors).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel

from monitor.service.audit import store as change_log
from monitor.service.audit.keys import trusted_keys
from monitor.service.auth import ChangeLogReaderDep
from monitor.service.db import as_utc
from monitor.service.deps import EngineDep, PageOffset, SettingsDep, StoredText


class EntryPublic(BaseModel):
    seq: int
    recorded_at: datetime
    actor: str
    action: str
    subject: str
    reason: str | None
    plan_version: str | None
    details: dict[str, Any]
    prev_hash: str
    entry_hash: str
    key_id: str | None
    signature: str | None


class AuditPage(BaseModel):
    items: list[EntryPublic]
    total: int
    limit: int
    offset: int


class ChainStatus(BaseModel):
    ok: bool
    entries: int
    head_hash: str
    first_bad_seq: int | None
    problem: str | None
    signatures_checked: bool
    unsigned_through: int


router = APIRouter(tags=["audit"])


@router.get("/audit")
def list_entries(
    engine: EngineDep,
    _principal: ChangeLogReaderDep,
    action: StoredText | None = None,
    actor: StoredText | None = None,
    subject: Annotated[StoredText | None, Query(description="Subjects starting with this.")] = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: PageOffset = 0,
) -> AuditPage:
    """Change-log entries, newest first, filtered by action, actor, subject and time."""
    page = change_log.search(
        engine,
        action=action,
        actor=actor,
        subject_prefix=subject,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    items = [
        EntryPublic.model_validate(row, from_attributes=True).model_copy(
            update={"recorded_at": as_utc(row.recorded_at)}
        )
        for row in page.items
    ]
    return AuditPage(items=items, total=page.total, limit=limit, offset=offset)


@router.get("/audit/verify")
def verify(engine: EngineDep, settings: SettingsDep, _principal: ChangeLogReaderDep) -> ChainStatus:
    """Recompute the hash chain and check every entry's signature now; the first entry that
    does not hold, if any (entries 1 to ``unsigned_through`` predate signed entries)."""
    found = change_log.verify(engine, trusted_keys(settings))
    return ChainStatus(
        ok=found.ok,
        entries=found.entries,
        head_hash=found.head_hash,
        first_bad_seq=found.first_bad_seq,
        problem=found.problem,
        signatures_checked=found.signatures_checked,
        unsigned_through=found.unsigned_through,
    )
