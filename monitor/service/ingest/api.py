"""Sites as the ingestion store sees them: who has sent events, how many, and when."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel

from monitor.events import Identifier
from monitor.service.auth import ReaderDep, check_site
from monitor.service.deps import EngineDep
from monitor.service.ingest import store


class EventCountsPublic(BaseModel):
    count: int
    latest_occurred_at: datetime | None


class SitePublic(BaseModel):
    site_id: str
    inference_events: int
    label_events: int
    latest_occurred_at: datetime | None


class SiteEventsPublic(BaseModel):
    site_id: str
    inference: EventCountsPublic
    labels: EventCountsPublic


router = APIRouter(tags=["sites"])


@router.get("/sites")
def list_sites(engine: EngineDep, principal: ReaderDep) -> list[SitePublic]:
    """Every site that has sent events, with counts and the latest event time (a site
    manager: its own sites)."""
    return [
        SitePublic(
            site_id=s.site_id,
            inference_events=s.inference.count,
            label_events=s.labels.count,
            latest_occurred_at=max(
                (t for t in (s.inference.latest_occurred_at, s.labels.latest_occurred_at) if t),
                default=None,
            ),
        )
        for s in store.list_sites(engine)
        if principal.can_read_site(s.site_id)
    ]


@router.get("/sites/{site_id}/events", responses={404: {}})
def site_events(site_id: Identifier, engine: EngineDep, principal: ReaderDep) -> SiteEventsPublic:
    """Counts and latest event time per event type for one site."""
    check_site(principal, site_id)
    summary = store.site_summary(engine, site_id)
    if summary is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no events from site {site_id!r}")
    return SiteEventsPublic(
        site_id=summary.site_id,
        inference=EventCountsPublic.model_validate(summary.inference, from_attributes=True),
        labels=EventCountsPublic.model_validate(summary.labels, from_attributes=True),
    )
