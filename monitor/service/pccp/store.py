"""The store of PCCP candidates and their signatures: SQL and locking around the rules of
:mod:`pccp.lifecycle`, which decides every transition, signature and threshold.

Each transition runs in one transaction that first locks the candidate's row (``SELECT ... FOR
UPDATE``), so two approvers racing, or an approval racing a rejection, are served one after the
other and the second sees what the first did. Every transition appends its change-log entry in
the same transaction, so the record and the state never disagree. The lifecycle's refusals
leave as the service's errors (:func:`refusals`): :class:`IllegalTransition` (409) and
:class:`FourEyesViolation` (403).

The gate's ``gate.result`` entry records the digest of the evidence report as stored
(:func:`pccp.promotion.evidence_sha256`) and the plan's number of approvals: promotion and
rollback (``monitor.service.pccp.champion``, which uses the row helpers at the end of this
module) re-verify a candidate from those entries, never from its ``status`` alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final, cast

import structlog
from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from monitor.service.audit import store as change_log
from monitor.service.db import Page, page_of, table_of
from monitor.service.errors import Forbidden, IllegalTransition, NotFound
from monitor.service.models import CandidateRow, SignatureRow, clip_reason
from pccp import lifecycle, promotion
from pccp.lifecycle import CandidateStatus, Decision, GateStatus

__all__ = [
    "REJECTABLE",
    "CandidateNotFound",
    "CandidatePage",
    "CandidateStatus",
    "Decision",
    "FourEyesViolation",
    "GateStatus",
    "IllegalTransition",
    "as_candidate",
    "find",
    "get",
    "list_candidates",
    "locked",
    "meaning",
    "pending",
    "propose",
    "record_gate",
    "refusals",
    "set_columns",
    "sign",
    "signatures",
    "signatures_in",
    "subject_of",
]

log = structlog.get_logger(__name__)

REJECTABLE: Final = lifecycle.REJECTABLE


class CandidateNotFound(NotFound):
    pass


class FourEyesViolation(Forbidden):
    """A signature the four-eyes rule forbids (the proposer, the retrain's trigger, twice)."""


CandidatePage = Page[CandidateRow]


def meaning(row: CandidateRow, decision: Decision) -> str:
    """The fixed sentence a signature means (what the signer attests)."""
    return lifecycle.meaning(as_candidate(row), decision)


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
            pg_insert(table_of(CandidateRow))
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
                    subject=subject_of(model_name, model_version),
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
    with refusals(), engine.begin() as connection:
        row = locked(connection, candidate_id)
        lifecycle.require(as_candidate(row), "evaluate")
        set_columns(
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
        details = {
            "candidate_id": str(candidate_id),
            "outcome": outcome,
            "plan_id": plan_id,
            "plan_fingerprint": plan_fingerprint,
            "champion_version": champion_version,
            "approvals_required": approvals_required,
        }
        change_log.append(
            connection,
            change_log.Entry(
                actor=actor,
                action="gate.result",
                subject=subject_of(row.model_name, row.model_version),
                plan_version=plan_version,
                details=details | _evidence_summary(connection, candidate_id),
            ),
        )
    return get(engine, candidate_id)


def _evidence_summary(connection: Connection, candidate_id: uuid.UUID) -> dict[str, Any]:
    """What ``gate.result`` records of the report as stored (read back: the database's JSON is
    what promotion will digest again): each criterion's pass or fail, and the digest."""
    report = connection.scalar(
        select(CandidateRow.report).where(CandidateRow.candidate_id == candidate_id)
    )
    assert report is not None  # the gate has just stored it
    return {
        "locked_test_sha256": report.get("locked_test_sha256"),
        "criteria": {
            c["id"]: "pass" if c["passed"] else "fail" for c in report.get("criteria", [])
        },
        "scope_violations": report.get("scope_violations", []),
        "evidence_sha256": promotion.evidence_sha256(report),
    }


def sign(
    engine: Engine,
    candidate_id: uuid.UUID,
    *,
    signer: str,
    decision: Decision,
    reason: str,
    signer_name: str | None = None,
) -> CandidateRow:
    """One electronic signature: an approval (counted towards four eyes) or a rejection.

    Its manifestation (21 CFR 11.50) is recorded with it and in its change-log entry: the
    signer and ``signer_name`` (the printed name), the date and time in UTC, and the meaning."""
    if not reason.strip():
        raise ValueError("a signature needs a reason")
    now = datetime.now(UTC)
    with refusals(), engine.begin() as connection:
        row = locked(connection, candidate_id)
        candidate = as_candidate(row)
        signed = signatures_in(connection, candidate_id)
        lifecycle.check_signature(candidate, signer, decision, {s.signer for s in signed})
        attested = lifecycle.meaning(candidate, decision)
        entry = change_log.append(
            connection,
            change_log.Entry(
                actor=signer,
                action="approval" if decision == "approve" else "rejection",
                subject=subject_of(row.model_name, row.model_version),
                reason=clip_reason(reason),
                plan_version=row.plan_version,
                details={
                    "candidate_id": str(candidate_id),
                    "meaning": attested,
                    "signed_at": now.isoformat(timespec="microseconds"),
                    "signer_name": signer_name,
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
                signer_name=signer_name,
                decision=decision,
                meaning=attested,
                reason=clip_reason(reason),
                signed_at=now,
                change_log_seq=entry.seq,
            )
        )
        approvers = [s.signer for s in signed if s.decision == "approve"]
        approvers += [signer] if decision == "approve" else []
        status = lifecycle.status_after_signature(candidate, decision, approvers)
        set_columns(connection, candidate_id, status=status, updated_at=now)
    return get(engine, candidate_id)


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
        return signatures_in(connection, candidate_id)


def pending(engine: Engine, limit: int = 10) -> list[CandidateRow]:
    """Candidates the gate has not evaluated yet, oldest first."""
    return list(reversed(list_candidates(engine, status="candidate", limit=limit).items))


# -- row helpers, shared with champion.py -----------------------------------------------


def subject_of(model_name: str, model_version: str) -> str:
    """The change-log subject of a candidate's entries."""
    return f"{model_name}/version/{model_version}"


def locked(connection: Connection, candidate_id: uuid.UUID) -> CandidateRow:
    """The candidate's row, locked until the transaction ends."""
    found = connection.execute(
        select(table_of(CandidateRow))
        .where(CandidateRow.candidate_id == candidate_id)
        .with_for_update()
    ).first()
    if found is None:
        raise CandidateNotFound(f"no candidate {candidate_id}")
    return CandidateRow(**found._mapping)


def as_candidate(row: CandidateRow) -> lifecycle.Candidate:
    """What the lifecycle's rules need of the row."""
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
def refusals() -> Iterator[None]:
    """The lifecycle's refusals, raised as the service's errors with the same message."""
    try:
        yield
    except lifecycle.IllegalTransition as exc:
        raise IllegalTransition(str(exc)) from exc
    except lifecycle.FourEyesViolation as exc:
        raise FourEyesViolation(str(exc)) from exc


def set_columns(connection: Connection, candidate_id: uuid.UUID, **values: Any) -> None:
    """Update the candidate's row (the caller holds its lock)."""
    table = table_of(CandidateRow)
    connection.execute(update(table).where(table.c.candidate_id == candidate_id).values(**values))


def signatures_in(connection: Connection, candidate_id: uuid.UUID) -> list[SignatureRow]:
    """The candidate's signatures in the order they were made."""
    rows = connection.execute(
        select(table_of(SignatureRow))
        .where(SignatureRow.candidate_id == candidate_id)
        .order_by(SignatureRow.signed_at, SignatureRow.change_log_seq)
    )
    return [SignatureRow(**row._mapping) for row in rows]
