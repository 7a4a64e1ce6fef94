"""Candidates under PCCP change control: evidence, signatures, promotion, rollback.

Reading is open to every role (a site manager sees candidates retrained for its own sites); every
change needs ``mlops``, and who signs is the token's subject, never a field of the request. The
lifecycle rules (legal transitions, four eyes) live in ``pccp.lifecycle``, applied by the
candidates store (``monitor.service.pccp.store``) and, for the champion, by
``monitor.service.pccp.champion``; here they become HTTP answers: 404 for an unknown (or another
site's) candidate or an unknown model, 409 for an illegal transition or a promotion check that
fails (saying what is missing), 403 for a signature the four-eyes rule forbids.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from monitor.events import Identifier
from monitor.service.audit.links import PageReaderDep
from monitor.service.auth import MlopsDep, Principal, ReaderDep, SignerDep
from monitor.service.deps import EngineDep, PageOffset, Reason
from monitor.service.models import CandidateRow
from monitor.service.pccp import champion
from monitor.service.pccp import store as candidates_store
from monitor.service.pccp.champion import ChampionRegistry
from monitor.service.pccp.decision import decision_record
from monitor.service.pccp.store import CandidateStatus, Decision


class CandidateRegistry(ChampionRegistry, Protocol):
    """What the API needs of the registry: reading and moving ``champion``, whether a version
    exists, and which version the ``challenger`` alias names."""

    def has_version(self, model_name: str, version: str) -> bool: ...

    def challenger_version(self, model_name: str) -> str | None: ...


RegistryFactory = Callable[[], CandidateRegistry]


def get_registry(request: Request) -> CandidateRegistry:
    """The model registry (``app.state.registry_factory``, set by ``create_app``)."""
    factory: RegistryFactory = request.app.state.registry_factory
    return factory()


RegistryDep = Annotated[CandidateRegistry, Depends(get_registry)]
REGISTRY_DOWN: dict[str, Any] = {
    "description": "MLflow (the model registry) is unreachable: nothing was recorded; try again. "
    "Also: tokens cannot be checked right now."
}


VERSION_PATTERN = r"^[0-9]{1,9}$"
"""A registered version, as MLflow numbers them."""


class ProposalRequest(BaseModel):
    model_name: Identifier
    model_version: str = Field(pattern=VERSION_PATTERN, description="A registered version.")
    reason: Reason


class SignatureRequest(BaseModel):
    reason: Reason = Field(description="Why the signer decides so.")


class ChangeRequest(BaseModel):
    reason: Reason


class RollbackRequest(BaseModel):
    expected_version: str = Field(
        pattern=VERSION_PATTERN,
        description="The champion the caller means to undo: any other champion is 409, and "
        "asking again once it is undone changes nothing.",
    )
    reason: Reason


class SignaturePublic(BaseModel):
    """An electronic signature as 21 CFR 11.50 asks it to be shown: who (the identity and the
    printed name), when (UTC), and what it means."""

    signer: str
    signer_name: str | None
    decision: str
    meaning: str
    reason: str
    signed_at: datetime
    change_log_seq: int


class HistoryEntryPublic(BaseModel):
    """One change-log entry about the candidate: its status history, entry by entry."""

    seq: int
    recorded_at: datetime
    action: str
    actor: str
    sentence: str
    entry_hash: str
    authentic: bool = Field(
        description="Its hash recomputes and a trusted audit key signed it (or it predates "
        "signing): `radsentry audit verify` checks the whole chain."
    )


class CriterionPublic(BaseModel):
    id: str
    kind: str
    passed: bool
    detail: str


class CandidatePublic(BaseModel):
    candidate_id: uuid.UUID
    model_name: str
    model_version: str
    site_id: str | None
    request_id: uuid.UUID | None
    proposed_by: str
    triggered_by: str | None
    status: str
    plan_id: str | None
    plan_version: str | None
    champion_version: str | None
    previous_champion: str | None
    approvals_required: int | None
    created_at: datetime
    updated_at: datetime
    evaluated_at: datetime | None
    promoted_at: datetime | None
    promoted_by: str | None
    rolled_back_at: datetime | None
    rolled_back_by: str | None


class CandidateDetail(CandidatePublic):
    plan_fingerprint: str | None
    criteria: list[CriterionPublic]
    scope_violations: list[str]
    signatures: list[SignaturePublic]
    approvals: int
    history: list[HistoryEntryPublic] = Field(
        description="The change log's entries about the candidate's version, in order: training, "
        "proposal, gate results, signatures, promotion, rollback."
    )
    verify_command: str = Field(description="How to verify those entries.")
    evidence_html: str | None = Field(None, description="This API's link to the readable report.")
    evidence_json: str | None
    evidence_uri: str | None = Field(None, description="The report in the MLflow run's artifacts.")


class CandidatePage(BaseModel):
    items: list[CandidatePublic]
    total: int
    limit: int
    offset: int


router = APIRouter(tags=["candidates"])
"""Promotion and rollback move aliases in the registry of :func:`get_registry`."""


def visible(engine: Any, candidate_id: uuid.UUID, principal: Principal) -> CandidateRow:
    row = candidates_store.get(engine, candidate_id)
    if not principal.can_read_site(row.site_id):  # no hint that it exists
        raise candidates_store.CandidateNotFound(f"no candidate {candidate_id}")
    return row


@router.get("/candidates")
def list_candidates(
    engine: EngineDep,
    principal: ReaderDep,
    model_name: Identifier | None = None,
    status_: Annotated[CandidateStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: PageOffset = 0,
) -> CandidatePage:
    """Candidates, newest first (a site manager: those retrained for its sites)."""
    page = candidates_store.list_candidates(
        engine,
        model_name=model_name,
        status=status_,
        sites=principal.site_filter(),
        limit=limit,
        offset=offset,
    )
    return CandidatePage(
        items=[CandidatePublic.model_validate(r, from_attributes=True) for r in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
    )


@router.post(
    "/candidates",
    status_code=status.HTTP_201_CREATED,
    responses={404: {}, 409: {}, 503: REGISTRY_DOWN},
)
def propose(
    body: ProposalRequest,
    engine: EngineDep,
    principal: MlopsDep,
    registry: RegistryDep,
    request: Request,
) -> CandidateDetail:
    """Put a registered version under change control (the proposer may not approve it);
    the scheduler's gate job evaluates it."""
    try:
        existing = candidates_store.find(engine, body.model_name, body.model_version)
    except candidates_store.CandidateNotFound:
        pass
    else:
        raise HTTPException(status.HTTP_409_CONFLICT, f"already candidate {existing.candidate_id}")
    if not registry.has_version(body.model_name, body.model_version):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"the registry has no {body.model_name} version {body.model_version}",
        )
    row = candidates_store.propose(
        engine,
        model_name=body.model_name,
        model_version=body.model_version,
        proposed_by=principal.subject,
        reason=body.reason,
    )
    return _detail(engine, row, request)


@router.get("/candidates/{candidate_id}", responses={404: {}})
def get_candidate(
    candidate_id: uuid.UUID, engine: EngineDep, principal: ReaderDep, request: Request
) -> CandidateDetail:
    """One candidate with its gate results, signatures and links to the evidence."""
    return _detail(engine, visible(engine, candidate_id, principal), request)


@router.get(
    "/candidates/{candidate_id}/evidence",
    response_class=HTMLResponse,
    responses={404: {}},
)
def evidence_html(candidate_id: uuid.UUID, engine: EngineDep, principal: PageReaderDep) -> str:
    """The gate's evidence report as a readable page, with the decision record as of now, read
    from the change log: the status history, each signature (printed name, UTC time, meaning),
    the promotion and the rollback, the entries it was rendered from and how to verify them.
    A browser opens it through a signed link (POST /links)."""
    from monitor.service.pccp.jobs import report_of  # torch, mlflow: only when asked
    from pccp.evidence import report_html

    row = visible(engine, candidate_id, principal)
    report = report_of(row)
    if report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the gate has not evaluated it yet")
    return report_html(report, decision_record(engine, row))


@router.get("/candidates/{candidate_id}/evidence.json", responses={404: {}})
def evidence_json(
    candidate_id: uuid.UUID, engine: EngineDep, principal: ReaderDep
) -> dict[str, Any]:
    """The gate's evidence report as stored (aggregates only)."""
    row = visible(engine, candidate_id, principal)
    if row.report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the gate has not evaluated it yet")
    return row.report


@router.post("/candidates/{candidate_id}/approve", responses={403: {}, 404: {}, 409: {}})
def approve(
    candidate_id: uuid.UUID,
    body: SignatureRequest,
    engine: EngineDep,
    principal: SignerDep,
    request: Request,
) -> CandidateDetail:
    """Sign an approval; the plan's number of distinct approvals makes it ``approved``."""
    return _sign(engine, candidate_id, principal, "approve", body.reason, request)


@router.post("/candidates/{candidate_id}/reject", responses={403: {}, 404: {}, 409: {}})
def reject(
    candidate_id: uuid.UUID,
    body: SignatureRequest,
    engine: EngineDep,
    principal: SignerDep,
    request: Request,
) -> CandidateDetail:
    """Sign a rejection: the candidate is never promoted."""
    return _sign(engine, candidate_id, principal, "reject", body.reason, request)


def _sign(
    engine: Engine,
    candidate_id: uuid.UUID,
    principal: Principal,
    decision: Decision,
    reason: str,
    request: Request,
) -> CandidateDetail:
    """One electronic signature by the token's person, with the printed name it carries."""
    row = candidates_store.sign(
        engine,
        candidate_id,
        signer=principal.subject,
        signer_name=principal.name,
        decision=decision,
        reason=reason,
    )
    return _detail(engine, row, request)


@router.post("/candidates/{candidate_id}/promote", responses={404: {}, 409: {}, 503: REGISTRY_DOWN})
def promote(
    candidate_id: uuid.UUID,
    body: ChangeRequest,
    engine: EngineDep,
    principal: MlopsDep,
    registry: RegistryDep,
    request: Request,
) -> CandidateDetail:
    """Make an approved candidate the champion (the registry's ``champion`` alias), once its
    gate entry, evidence and approvals in the change log check out and the champion is still the
    one its gate compared against (409 naming the check that failed)."""
    row = champion.promote(
        engine, candidate_id, actor=principal.subject, reason=body.reason, registry=registry
    )
    return _detail(engine, row, request)


@router.post("/models/{model_name}/rollback", responses={404: {}, 409: {}, 503: REGISTRY_DOWN})
def rollback(
    model_name: Identifier,
    body: RollbackRequest,
    engine: EngineDep,
    principal: MlopsDep,
    registry: RegistryDep,
    request: Request,
) -> CandidateDetail:
    """Undo the promotion of ``expected_version``, the champion: the version it replaced is
    restored. Another champion is 409; asked again once undone, the same answer, nothing new.
    A model the service has no record of is 404 (the detail names the known models)."""
    row = champion.rollback(
        engine,
        model_name,
        expected_version=body.expected_version,
        actor=principal.subject,
        reason=body.reason,
        registry=registry,
    )
    return _detail(engine, row, request)


def _detail(engine: Any, row: CandidateRow, request: Request) -> CandidateDetail:
    decision = decision_record(engine, row)
    report = row.report or {}
    evaluated = row.report is not None
    base = str(request.url_for("evidence_html", candidate_id=row.candidate_id))
    return CandidateDetail(
        **CandidatePublic.model_validate(row, from_attributes=True).model_dump(),
        plan_fingerprint=row.plan_fingerprint,
        criteria=[
            CriterionPublic(
                id=c["id"], kind=c["kind"], passed=c["passed"], detail=c.get("detail", "")
            )
            for c in report.get("criteria", [])
        ],
        scope_violations=list(report.get("scope_violations", [])),
        signatures=[
            SignaturePublic.model_validate(s, from_attributes=True) for s in decision.signatures
        ],
        approvals=sum(1 for s in decision.signatures if s.decision == "approve"),
        history=[
            HistoryEntryPublic.model_validate(e, from_attributes=True) for e in decision.history
        ],
        verify_command=decision.verify_command,
        evidence_html=base if evaluated else None,
        evidence_json=f"{base}.json" if evaluated else None,
        evidence_uri=report.get("evidence_uri"),
    )
