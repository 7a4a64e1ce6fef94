"""The store of PCCP candidates and their signatures: SQL and locking around the rules of
:mod:`pccp.lifecycle`, which decides every transition, signature and threshold.

Each transition runs in one transaction that first locks the candidate's row (``SELECT ... FOR
UPDATE``), so two approvers racing, or an approval racing a rejection, are served one after the
other and the second sees what the first did. Every transition appends its change-log entry in
the same transaction, so the record and the state never disagree. The lifecycle's refusals
leave as the service's errors (:func:`_refusals`): :class:`IllegalTransition` (409) and
:class:`FourEyesViolation` (403).

**Promotion.** Moves the registry's ``champion`` alias to the candidate and records the version
it replaces; rollback moves it back. The alias moves inside the locked transaction: if the
commit then fails, the candidate is still ``approved`` and promoting again moves the alias to
the same version (idempotent), then commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final, Protocol, cast

import structlog
from sqlalchemy import Connection, Engine, select, update

from monitor.service.audit import store as change_log
from monitor.service.db import Page, insert_for, page_of, table_of
from monitor.service.errors import Forbidden, IllegalTransition, NotFound
from monitor.service.models import CandidateRow, SignatureRow, clip_reason
from pccp import lifecycle
from pccp.lifecycle import CandidateStatus, Decision, GateStatus

__all__ = [
    "REJECTABLE",
    "CandidateNotFound",
    "CandidatePage",
    "CandidateStatus",
    "ChampionRegistry",
    "Decision",
    "FourEyesViolation",
    "GateStatus",
    "IllegalTransition",
    "find",
    "get",
    "list_candidates",
    "meaning",
    "pending",
    "promote",
    "propose",
    "record_gate",
    "rollback",
    "sign",
    "signatures",
]

log = structlog.get_logger(__name__)

REJECTABLE: Final = lifecycle.REJECTABLE


class CandidateNotFound(NotFound):
    pass


class FourEyesViolation(Forbidden):
    """A signature the four-eyes rule forbids (the proposer, the retrain's trigger, twice)."""


class ChampionRegistry(Protocol):
    """What promotion needs of the registry (``retrain.tracking.Registry``)."""

    def move_champion(self, model_name: str, version: str) -> str | None: ...


CandidatePage = Page[CandidateRow]


def meaning(row: CandidateRow, decision: Decision) -> str:
    """The fixed sentence a signature means (what the signer attests)."""
    return lifecycle.meaning(_candidate(row), decision)


def propose(
    engine: Engine,
    *,
    model_name: str,
    model_version: str,
    proposed_by: str,
    triggered_by: str | None = None,
    request_id: uuid.UUID | None = None,
    site_id: str | None = None,
    reason: str,
) -> CandidateRow:
    """Put a registered version under change control; proposing it again returns the same row."""
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "candidate_id": uuid.uuid4(),
        "model_name": model_name,
        "model_version": model_version,
        "site_id": site_id,
        "request_id": request_id,
        "proposed_by": proposed_by,
        "triggered_by": triggered_by,
        "status": "candidate",
        "created_at": now,
        "updated_at": now,
    }
    with engine.begin() as connection:
        inserted = connection.execute(
            insert_for(connection, table_of(CandidateRow))
            .values(**row)
            .on_conflict_do_nothing(index_elements=["model_name", "model_version"])
            .returning(CandidateRow.candidate_id)
        ).first()
        if inserted is not None:
            change_log.append(
                connection,
                change_log.Entry(
                    actor=proposed_by,
                    action="candidate.proposed",
                    subject=_subject(model_name, model_version),
                    details={
                        "candidate_id": str(row["candidate_id"]),
                        "request_id": str(request_id) if request_id else None,
                        "triggered_by": triggered_by,
                        "site_id": site_id,
                    },
                    reason=clip_reason(reason),
                ),
            )
    return find(engine, model_name, model_version)


def record_gate(
    engine: Engine,
    candidate_id: uuid.UUID,
    *,
    outcome: GateStatus,
    report: dict[str, Any],
    plan_id: str,
    plan_version: str,
    plan_fingerprint: str,
    approvals_required: int,
    champion_version: str | None,
    actor: str,
) -> CandidateRow:
    """Store the gate's outcome and evidence: ``candidate`` -> passed | failed | out_of_scope."""
    now = datetime.now(UTC)
    with _refusals(), engine.begin() as connection:
        row = _locked(connection, candidate_id)
        lifecycle.require(_candidate(row), "evaluate")
        _set(
            connection,
            candidate_id,
            status=outcome,
            report=report,
            plan_id=plan_id,
            plan_version=plan_version,
            plan_fingerprint=plan_fingerprint,
            approvals_required=approvals_required,
            champion_version=champion_version,
            evaluated_at=now,
            updated_at=now,
        )
        criteria = report.get("criteria", [])
        change_log.append(
            connection,
            change_log.Entry(
                actor=actor,
                action="gate.result",
                subject=_subject(row.model_name, row.model_version),
                plan_version=plan_version,
                details={
                    "candidate_id": str(candidate_id),
                    "outcome": outcome,
                    "plan_id": plan_id,
                    "plan_fingerprint": plan_fingerprint,
                    "champion_version": champion_version,
                    "locked_test_sha256": report.get("locked_test_sha256"),
                    "criteria": {c["id"]: "pass" if c["passed"] else "fail" for c in criteria},
                    "scope_violations": report.get("scope_violations", []),
                },
            ),
        )
    return get(engine, candidate_id)


def sign(
    engine: Engine, candidate_id: uuid.UUID, *, signer: str, decision: Decision, reason: str
) -> CandidateRow:
    """One electronic signature: an approval (counted towards four eyes) or a rejection."""
    if not reason.strip():
        raise ValueError("a signature needs a reason")
    now = datetime.now(UTC)
    with _refusals(), engine.begin() as connection:
        row = _locked(connection, candidate_id)
        candidate = _candidate(row)
        lifecycle.check_signature(candidate, signer, decision, _signers(connection, candidate_id))
        attested = lifecycle.meaning(candidate, decision)
        entry = change_log.append(
            connection,
            change_log.Entry(
                actor=signer,
                action="approval" if decision == "approve" else "rejection",
                subject=_subject(row.model_name, row.model_version),
                reason=clip_reason(reason),
                plan_version=row.plan_version,
                details={
                    "candidate_id": str(candidate_id),
                    "meaning": attested,
                    "signed_at": now.isoformat(timespec="microseconds"),
                },
            ),
            now=now,
        )
        connection.execute(
            table_of(SignatureRow)
            .insert()
            .values(
                signature_id=uuid.uuid4(),
                candidate_id=candidate_id,
                signer=signer,
                decision=decision,
                meaning=attested,
                reason=clip_reason(reason),
                signed_at=now,
                change_log_seq=entry.seq,
            )
        )
        approvers = _approvers(connection, candidate_id)
        status = lifecycle.status_after_signature(candidate, decision, approvers)
        _set(connection, candidate_id, status=status, updated_at=now)
    return get(engine, candidate_id)


def promote(
    engine: Engine,
    candidate_id: uuid.UUID,
    *,
    actor: str,
    reason: str,
    registry: ChampionRegistry,
) -> CandidateRow:
    """Make an approved candidate the champion; the previous champion is recorded."""
    now = datetime.now(UTC)
    with _refusals(), engine.begin() as connection:
        row = _locked(connection, candidate_id)
        lifecycle.require(_candidate(row), "promote")
        previous = registry.move_champion(row.model_name, row.model_version)
        if previous == row.model_version:  # a retry after a lost commit: keep the first record
            previous = row.previous_champion or row.champion_version
        _set(
            connection,
            candidate_id,
            status="promoted",
            previous_champion=previous,
            promoted_at=now,
            promoted_by=actor,
            updated_at=now,
        )
        change_log.append(
            connection,
            change_log.Entry(
                actor=actor,
                action="promotion",
                subject=_subject(row.model_name, row.model_version),
                reason=clip_reason(reason),
                plan_version=row.plan_version,
                details={
                    "candidate_id": str(candidate_id),
                    "previous_champion": previous,
                    "champion": row.model_version,
                    "approvers": _approvers(connection, candidate_id),
                },
            ),
            now=now,
        )
    log.info("candidate promoted", model=row.model_name, version=row.model_version)
    return get(engine, candidate_id)


def rollback(
    engine: Engine, model_name: str, *, actor: str, reason: str, registry: ChampionRegistry
) -> CandidateRow:
    """Undo the latest promotion of ``model_name``: the champion goes back to the version it
    replaced, and that promotion's candidate becomes ``rolled_back``."""
    now = datetime.now(UTC)
    with _refusals(), engine.begin() as connection:
        latest = connection.execute(
            select(CandidateRow.candidate_id)
            .where(CandidateRow.model_name == model_name, CandidateRow.status == "promoted")
            .order_by(CandidateRow.promoted_at.desc())
            .limit(1)
        ).first()
        if latest is None:
            raise IllegalTransition(f"{model_name} has no promotion to roll back")
        row = _locked(connection, latest.candidate_id)
        restored = lifecycle.restored_champion(_candidate(row))
        registry.move_champion(model_name, restored)
        _set(
            connection,
            row.candidate_id,
            status="rolled_back",
            rolled_back_at=now,
            rolled_back_by=actor,
            updated_at=now,
        )
        change_log.append(
            connection,
            change_log.Entry(
                actor=actor,
                action="rollback",
                subject=_subject(model_name, row.model_version),
                reason=clip_reason(reason),
                plan_version=row.plan_version,
                details={
                    "candidate_id": str(row.candidate_id),
                    "rolled_back_version": row.model_version,
                    "restored_champion": restored,
                },
            ),
            now=now,
        )
    log.warning("champion rolled back", model=model_name, restored=restored)
    return get(engine, row.candidate_id)


def list_candidates(
    engine: Engine,
    *,
    model_name: str | None = None,
    status: CandidateStatus | None = None,
    sites: Collection[str] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> CandidatePage:
    """Candidates, newest first; ``sites`` restricts to candidates from those sites' alerts."""
    conditions = []
    if model_name is not None:
        conditions.append(CandidateRow.model_name == model_name)
    if status is not None:
        conditions.append(CandidateRow.status == status)
    if sites is not None:
        conditions.append(CandidateRow.site_id.in_(list(sites)))
    order = (CandidateRow.created_at.desc(), CandidateRow.candidate_id)
    return page_of(engine, CandidateRow, conditions, order, limit, offset)


def get(engine: Engine, candidate_id: uuid.UUID) -> CandidateRow:
    with engine.connect() as connection:
        row = connection.execute(
            select(CandidateRow).where(CandidateRow.candidate_id == candidate_id)
        ).first()
    if row is None:
        raise CandidateNotFound(f"no candidate {candidate_id}")
    return CandidateRow(**row._mapping)


def find(engine: Engine, model_name: str, model_version: str) -> CandidateRow:
    with engine.connect() as connection:
        row = connection.execute(
            select(CandidateRow).where(
                CandidateRow.model_name == model_name, CandidateRow.model_version == model_version
            )
        ).first()
    if row is None:
        raise CandidateNotFound(f"no candidate {model_name} version {model_version}")
    return CandidateRow(**row._mapping)


def signatures(engine: Engine, candidate_id: uuid.UUID) -> list[SignatureRow]:
    """The candidate's signatures in the order they were made."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(SignatureRow)
            .where(SignatureRow.candidate_id == candidate_id)
            .order_by(SignatureRow.signed_at, SignatureRow.change_log_seq)
        )
        return [SignatureRow(**row._mapping) for row in rows]


def pending(engine: Engine, limit: int = 10) -> list[CandidateRow]:
    """Candidates the gate has not evaluated yet, oldest first."""
    return list(reversed(list_candidates(engine, status="candidate", limit=limit).items))


# -- helpers -------------------------------------------------------------------------------


def _subject(model_name: str, model_version: str) -> str:
    return f"{model_name}/version/{model_version}"


def _locked(connection: Connection, candidate_id: uuid.UUID) -> CandidateRow:
    found = connection.execute(
        select(table_of(CandidateRow))
        .where(CandidateRow.candidate_id == candidate_id)
        .with_for_update()
    ).first()
    if found is None:
        raise CandidateNotFound(f"no candidate {candidate_id}")
    return CandidateRow(**found._mapping)


def _candidate(row: CandidateRow) -> lifecycle.Candidate:
    return lifecycle.Candidate(
        model_name=row.model_name,
        model_version=row.model_version,
        # the column holds only what this module wrote: a CandidateStatus
        status=cast(CandidateStatus, row.status),
        proposed_by=row.proposed_by,
        triggered_by=row.triggered_by,
        plan_id=row.plan_id,
        plan_version=row.plan_version,
        approvals_required=row.approvals_required,
        previous_champion=row.previous_champion,
    )


@contextmanager
def _refusals() -> Iterator[None]:
    """The lifecycle's refusals, raised as the service's errors with the same message."""
    try:
        yield
    except lifecycle.IllegalTransition as exc:
        raise IllegalTransition(str(exc)) from exc
    except lifecycle.FourEyesViolation as exc:
        raise FourEyesViolation(str(exc)) from exc


def _set(connection: Connection, candidate_id: uuid.UUID, **values: Any) -> None:
    table = table_of(CandidateRow)
    connection.execute(update(table).where(table.c.candidate_id == candidate_id).values(**values))


def _approvers(connection: Connection, candidate_id: uuid.UUID) -> list[str]:
    return list(
        connection.scalars(
            select(SignatureRow.signer)
            .where(SignatureRow.candidate_id == candidate_id, SignatureRow.decision == "approve")
            .order_by(SignatureRow.signed_at)
        )
    )


def _signers(connection: Connection, candidate_id: uuid.UUID) -> set[str]:
    return set(
        connection.scalars(
            select(SignatureRow.signer).where(SignatureRow.candidate_id == candidate_id)
        )
    )
