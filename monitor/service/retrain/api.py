"""Retrain endpoints: ask for a retrain (who: the token's subject; why), list and read requests."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from monitor.events import Identifier
from monitor.service.auth import ReaderDep, RetrainerDep
from monitor.service.deps import EngineDep, PageOffset, Reason
from monitor.service.pccp.history import require_known
from monitor.service.retrain import store as retrain_store
from monitor.service.retrain.store import RequestNotFound

RequestStatus = Literal["pending", "running", "succeeded", "failed"]


class RetrainRequestPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    request_id: uuid.UUID
    model_name: str
    site_id: str | None
    trigger: str
    alert_id: uuid.UUID | None
    requested_by: str
    reason: str
    status: str
    policy_fingerprint: str | None
    details: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    progress: dict[str, Any] | None = Field(
        description="The job's stage (cases, images, training, registering, done), counts, "
        "epoch / max_epochs while training, and the champion/candidate comparison."
    )
    manifest_sha256: str | None = Field(description="SHA-256 of the training data manifest.")
    mlflow_run_id: str | None
    model_version: str | None = Field(
        description="The registered model version the job produced (alias `challenger`)."
    )
    error: str | None


class RetrainRequestPage(BaseModel):
    items: list[RetrainRequestPublic]
    total: int
    limit: int
    offset: int


class RetrainAsk(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason


router = APIRouter(tags=["retraining"])


@router.post(
    "/models/{model_name}/retrain", status_code=status.HTTP_202_ACCEPTED, responses={404: {}}
)
def ask(
    model_name: Identifier, body: RetrainAsk, engine: EngineDep, principal: RetrainerDep
) -> RetrainRequestPublic:
    """Request a candidate model: recorded with who (the token's subject) and why, served
    by the retrain job. Nothing here changes which model serves (only a PCCP promotion can).
    A model the service has no record of is 404 (the detail names the known models)."""
    require_known(engine, model_name)
    row = retrain_store.request_manual(engine, model_name, principal.subject, body.reason)
    return RetrainRequestPublic.model_validate(row)


@router.get("/retrain-requests")
def list_requests(
    engine: EngineDep,
    principal: ReaderDep,
    model_name: Identifier | None = None,
    request_status: Annotated[RequestStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: PageOffset = 0,
) -> RetrainRequestPage:
    """Requests, newest first; a site manager sees those raised for its sites only."""
    page = retrain_store.list_requests(
        engine,
        model_name=model_name,
        status=request_status,
        site_ids=principal.site_filter(),
        limit=limit,
        offset=offset,
    )
    return RetrainRequestPage(
        items=[RetrainRequestPublic.model_validate(r) for r in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
    )


@router.get("/retrain-requests/{request_id}", responses={404: {}})
def get_request(
    request_id: uuid.UUID, engine: EngineDep, principal: ReaderDep
) -> RetrainRequestPublic:
    """One request; for a site manager, one not raised for its sites is not found."""
    row = retrain_store.get_request(engine, request_id)
    if not principal.can_read_site(row.site_id):
        raise RequestNotFound(f"no retrain request {request_id}")
    return RetrainRequestPublic.model_validate(row)
