"""The PCCP lifecycle of a candidate model (issue 7 §3): gate outcome, signatures, promotion.

A registered version becomes a candidate when the retraining job (or a person) proposes it.
From there only these transitions are legal::

    candidate --gate--> passed | failed | out_of_scope
    passed --approvals--> approved --promote--> promoted --rollback--> rolled_back
    candidate | passed | approved --reject--> rejected

Each runs in one transaction that first locks the candidate's row (``SELECT ... FOR UPDATE``),
so two approvers racing, or an approval racing a rejection, are served one after the other and
the second sees what the first did. Every transition appends its change-log entry in the same
transaction, so the record and the state never disagree.

**Four eyes.** A candidate is approved once ``approvals_required`` distinct people (the plan's
number, at least 2) have signed "approve". A signer may be neither the proposer nor the identity
that triggered the retrain, and signs once. A signature is an electronic signature in the sense
of 21 CFR 11.50: signer, time, the meaning of the signature (a fixed sentence naming the model,
version and plan) and the signer's reason; it cites its change-log entry.

**Promotion.** Moves the registry's ``champion`` alias to the candidate and records the version
it replaces; rollback moves it back. The alias moves inside the locked transaction: if the
commit then fails, the candidate is still ``approved`` and promoting again moves the alias to
the same version (idempotent), then commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

import structlog
from sqlalchemy import Connection, Engine, select, update

from monitor.service import change_log
from monitor.service.alerts_store import IllegalTransition
from monitor.service.models import CandidateRow, SignatureRow
from monitor.service.store import Page, insert_for, page_of, table_of

log = structlog.get_logger(__name__)

CandidateStatus = Literal[
    "candidate",
    "passed",
    "failed",
    "out_of_scope",
    "approved",
    "rejected",
    "promoted",
    "rolled_back",
]
GateStatus = Literal["passed", "failed", "out_of_scope"]
Decision = Literal["approve", "reject"]
REJECTABLE: Final[tuple[CandidateStatus, ...]] = ("candidate", "passed", "approved")


class CandidateNotFound(LookupError):
    pass


class FourEyesViolation(PermissionError):
    """A signature the four-eyes rule forbids (the proposer, the retrain's trigger, twice)."""


class ChampionRegistry(Protocol):
    """What promotion needs of the registry (``retrain.tracking.Registry``)."""

    def move_champion(self, model_name: str, version: str) -> str | None: ...


CandidatePage = Page[CandidateRow]


def meaning(row: CandidateRow, decision: Decision) -> str:
    """The fixed sentence a signature means (what the signer attests)."""
    plan = f"PCCP {row.plan_id} version {row.plan_version}"
    if decision == "approve":
        return (
            f"I approve {row.model_name} version {row.model_version} for promotion to champion "
            f"under {plan}, having reviewed its acceptance-gate evidence."
        )
    return f"I reject {row.model_name} version {row.model_version}: it is not to be promoted."


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
                    reason=reason[:2000],
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
    with engine.begin() as connection:
        row = _locked(connection, candidate_id)
        _require(row, ("candidate",), "evaluate")
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
    with engine.begin() as connection:
        row = _locked(connection, candidate_id)
        if signer in _signers(connection, candidate_id):
            raise FourEyesViolation(f"{signer} has already signed this candidate")
        if decision == "approve":
            _require(row, ("passed",), "approve")
            _check_four_eyes(connection, row, signer)
        else:
            _require(row, REJECTABLE, "reject")
        entry = change_log.append(
            connection,
            change_log.Entry(
                actor=signer,
                action="approval" if decision == "approve" else "rejection",
                subject=_subject(row.model_name, row.model_version),
                reason=reason[:2000],
                plan_version=row.plan_version,
                details={
                    "candidate_id": str(candidate_id),
                    "meaning": meaning(row, decision),
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
                meaning=meaning(row, decision),
                reason=reason[:2000],
                signed_at=now,
                change_log_seq=entry.seq,
            )
        )
        approvals = _approvals(connection, candidate_id)
        if decision == "reject":
            _set(connection, candidate_id, status="rejected", updated_at=now)
        elif approvals >= (row.approvals_required or 2):
            _set(connection, candidate_id, status="approved", updated_at=now)
        else:
            _set(connection, candidate_id, updated_at=now)
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
    with engine.begin() as connection:
        row = _locked(connection, candidate_id)
        _require(row, ("approved",), "promote")
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
                reason=reason[:2000],
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
    with engine.begin() as connection:
        latest = connection.execute(
            select(CandidateRow.candidate_id)
            .where(CandidateRow.model_name == model_name, CandidateRow.status == "promoted")
            .order_by(CandidateRow.promoted_at.desc())
            .limit(1)
        ).first()
        if latest is None:
            raise IllegalTransition(f"{model_name} has no promotion to roll back")
        row = _locked(connection, latest.candidate_id)
        _require(row, ("promoted",), "roll back")
        if row.previous_champion is None:
            raise IllegalTransition(
                f"{model_name} version {row.model_version} replaced no champion: nothing to restore"
            )
        registry.move_champion(model_name, row.previous_champion)
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
                reason=reason[:2000],
                plan_version=row.plan_version,
                details={
                    "candidate_id": str(row.candidate_id),
                    "rolled_back_version": row.model_version,
                    "restored_champion": row.previous_champion,
                },
            ),
            now=now,
        )
    log.warning("champion rolled back", model=model_name, restored=row.previous_champion)
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


def _require(row: CandidateRow, allowed: tuple[str, ...], action: str) -> None:
    if row.status not in allowed:
        raise IllegalTransition(
            f"cannot {action} {row.model_name} version {row.model_version}: it is {row.status}"
        )


def _set(connection: Connection, candidate_id: uuid.UUID, **values: Any) -> None:
    table = table_of(CandidateRow)
    connection.execute(update(table).where(table.c.candidate_id == candidate_id).values(**values))


def _check_four_eyes(connection: Connection, row: CandidateRow, signer: str) -> None:
    if signer == row.proposed_by:
        raise FourEyesViolation(f"{signer} proposed this candidate and may not approve it")
    if row.triggered_by is not None and signer == row.triggered_by:
        raise FourEyesViolation(f"{signer} triggered the retrain and may not approve its result")


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


def _approvals(connection: Connection, candidate_id: uuid.UUID) -> int:
    return len(_approvers(connection, candidate_id))
