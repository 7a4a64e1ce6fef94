"""Drift and alert endpoints: latest checks per site, the alert lifecycle, re-baselining, reports.

Who acts is the bearer token's subject (monitor/service/auth.py), recorded with every
acknowledgement, resolution and re-baselining; request bodies do not name it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, computed_field

from monitor.drift.alerts import StreamKey
from monitor.drift.severity import Severity
from monitor.drift.stream import ReferenceSource
from monitor.events import Identifier, InferenceEvent
from monitor.service.audit.links import LINK_PARAMETER, PageReaderDep, app_link_key, issue_link
from monitor.service.auth import MlopsDep, ReaderDep, check_site
from monitor.service.deps import EngineDep, Note, PageOffset, Reason, SettingsDep, StoredText
from monitor.service.drift import alerts as alerts_store
from monitor.service.drift import streams as streams_store
from monitor.service.drift.alerts import AlertNotFound, AlertStatus
from monitor.service.drift.site_page import page_html
from monitor.service.drift.site_report import site_report


class CheckPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    model_name: str
    model_version: str
    detector: str
    window_start: datetime
    window_end: datetime
    n_window: int
    is_drift: bool | None
    statistic: float | None
    p_value: float | None
    threshold: float | None
    effect_size: float | None
    effect_size_name: str | None
    attributions: list[dict[str, Any]]
    skipped: str | None


class ReferencePublic(BaseModel):
    """Where a stream's reference came from (``monitor.drift.stream.ReferenceInfo``), its times
    in ISO 8601 UTC: the engine keeps POSIX seconds, the API speaks one time format."""

    reference_id: uuid.UUID
    generation: int
    source: ReferenceSource
    requested_by: str | None = None
    reason: str | None = None
    requested_at: datetime | None = Field(None, description="When re-baselining was asked.")
    frozen: bool = False
    n_events: int = 0
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    not_run: dict[str, str] = Field(
        default_factory=dict,
        description="Detectors this reference cannot feed, with the reason (e.g. embedding_mmd "
        "when the reference carries no embeddings).",
    )

    @classmethod
    def of(cls, stored: Mapping[str, Any]) -> ReferencePublic:
        """From the stored provenance, POSIX seconds read as UTC times."""
        times = {name: _utc(stored.get(name)) for name in _TIMES}
        return cls.model_validate({**stored, **times})


_TIMES = ("requested_at", "first_event_at", "last_event_at")


def _utc(seconds: Any) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(float(seconds), UTC)


class StreamPublic(BaseModel):
    model_name: str
    model_version: str
    events_seen: int
    reference: ReferencePublic = Field(
        description="Where the reference came from; while it is being collected (frozen false), "
        "its events and first and last event times so far."
    )
    reference_complete_when: str = Field(
        description="What the drift configuration needs before a collected reference is "
        "complete and monitoring starts, e.g. '1,000 events spanning 91 days'."
    )
    updated_at: datetime


class SiteDriftPublic(BaseModel):
    site_id: str
    streams: list[StreamPublic]
    latest_checks: list[CheckPublic]


class AlertPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    alert_id: uuid.UUID
    site_id: str
    model_name: str
    model_version: str
    detector: str
    features: list[str]
    occurred_at: datetime
    since: datetime
    window_start: datetime
    window_end: datetime
    statistic: float
    p_value: float | None
    effect_size: float
    effect_size_name: str
    explanation: str
    status: AlertStatus
    drift_active: bool
    drifting_checks: int
    last_drift_at: datetime
    ended_at: datetime | None
    ended_reason: str | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    resolved_by: str | None
    resolved_at: datetime | None
    note: str | None
    reference_id: uuid.UUID
    config_fingerprint: str
    severity: Severity = Field(
        description="info, warning or critical: how far the effect lies beyond its threshold "
        "and how many detectors agree (docs/drift.md, Severity); the highest seen in the episode."
    )
    decision_asked_at: datetime | None = Field(
        None,
        description="When the episode, still drifting after drift.alarms.decision_after_s "
        "(14 days), asked for a decision; decision_reason says what to decide.",
    )
    decision_reason: str | None = None

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented pattern
    @property
    def needs_decision(self) -> bool:
        """Still open (not acknowledged or resolved), drifting, and asking for a decision."""
        return self.decision_asked_at is not None and self.status == "open" and self.drift_active


class AlertPagePublic(BaseModel):
    items: list[AlertPublic]
    total: int
    limit: int
    offset: int


class AlertAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: Note | None = None


class ReferenceRequest(BaseModel):
    """Re-baseline one stream: on its next events, or on the uploaded ``events``."""

    model_config = ConfigDict(extra="forbid")

    model_name: Identifier
    model_version: Identifier
    reason: Reason
    events: list[InferenceEvent] | None = Field(None, max_length=20_000)


router = APIRouter()
"""Re-baselining and reports use the drift engine's configuration from the app's settings, the
one the consumer runs with."""


@router.get("/sites/{site_id}/drift", tags=["drift"], responses={404: {}})
def site_drift(
    site_id: Identifier, engine: EngineDep, settings: SettingsDep, principal: ReaderDep
) -> SiteDriftPublic:
    """Each stream's reference (or how far its collection has come) and the latest check of
    every detector at the site."""
    check_site(principal, site_id)
    needs = settings.drift.reference_needs()
    streams = streams_store.site_streams(engine, site_id)
    if not streams:
        raise streams_store.StreamNotFound(f"no monitored stream at site {site_id!r}")
    return SiteDriftPublic(
        site_id=site_id,
        streams=[
            StreamPublic(
                model_name=s.model_name,
                model_version=s.model_version,
                events_seen=s.events_seen,
                reference=ReferencePublic.of(s.reference),
                reference_complete_when=needs,
                updated_at=s.updated_at,
            )
            for s in streams
        ],
        latest_checks=[
            CheckPublic.model_validate(c) for c in streams_store.latest_checks(engine, site_id)
        ],
    )


@router.get("/alerts", tags=["alerts"])
def list_alerts(
    engine: EngineDep,
    principal: ReaderDep,
    site_id: Identifier | None = None,
    alert_status: Annotated[AlertStatus | None, Query(alias="status")] = None,
    detector: StoredText | None = None,
    min_severity: Severity | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: PageOffset = 0,
) -> AlertPagePublic:
    """Alerts, newest first, filtered by site, status, detector and least severity
    (``min_severity=warning``: warning and critical); paginated. A site manager sees its own
    sites' alerts (403 for another site named in ``site_id``)."""
    if site_id is not None:
        check_site(principal, site_id)
    page = alerts_store.list_alerts(
        engine,
        site_id=site_id,
        site_ids=principal.site_filter(),
        status=alert_status,
        detector=detector,
        min_severity=min_severity,
        limit=limit,
        offset=offset,
    )
    return AlertPagePublic(
        items=[AlertPublic.model_validate(a) for a in page.items],
        total=page.total,
        limit=limit,
        offset=offset,
    )


@router.get("/sites/{site_id}/alerts", tags=["alerts"])
def site_alerts(
    site_id: Identifier,
    engine: EngineDep,
    principal: ReaderDep,
    alert_status: Annotated[AlertStatus | None, Query(alias="status")] = None,
    detector: StoredText | None = None,
    min_severity: Severity | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: PageOffset = 0,
) -> AlertPagePublic:
    """The site's alerts, the same answer as ``GET /alerts?site_id=`` (a site manager: 403 for
    another site)."""
    return list_alerts(
        engine,
        principal,
        site_id=site_id,
        alert_status=alert_status,
        detector=detector,
        min_severity=min_severity,
        limit=limit,
        offset=offset,
    )


@router.get("/alerts/{alert_id}", tags=["alerts"], responses={404: {}})
def get_alert(alert_id: uuid.UUID, engine: EngineDep, principal: ReaderDep) -> AlertPublic:
    """One alert; another site's alert is not found for a site manager."""
    row = alerts_store.get_alert(engine, alert_id)
    if not principal.can_read_site(row.site_id):
        raise AlertNotFound(f"no alert {alert_id}")
    return AlertPublic.model_validate(row)


@router.post("/alerts/{alert_id}/acknowledge", tags=["alerts"], responses={404: {}, 409: {}})
def acknowledge(
    alert_id: uuid.UUID, body: AlertAction, engine: EngineDep, principal: MlopsDep
) -> AlertPublic:
    """open -> acknowledged, by the token's subject."""
    row = alerts_store.transition(engine, alert_id, "acknowledge", principal.subject, body.note)
    return AlertPublic.model_validate(row)


@router.post("/alerts/{alert_id}/resolve", tags=["alerts"], responses={404: {}, 409: {}})
def resolve(
    alert_id: uuid.UUID, body: AlertAction, engine: EngineDep, principal: MlopsDep
) -> AlertPublic:
    """open or acknowledged -> resolved, by the token's subject."""
    row = alerts_store.transition(engine, alert_id, "resolve", principal.subject, body.note)
    return AlertPublic.model_validate(row)


@router.post(
    "/sites/{site_id}/reference",
    tags=["drift"],
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {}, 422: {}},
)
def rebaseline(
    site_id: Identifier,
    body: ReferenceRequest,
    engine: EngineDep,
    settings: SettingsDep,
    principal: MlopsDep,
) -> ReferencePublic:
    """Record who (the token's subject) re-baselines and why; the new reference is the
    upload or the next events."""
    if body.events is not None and any(e.site_id != site_id for e in body.events):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "uploaded events must all belong to the site in the path",
        )
    key = StreamKey(site_id, body.model_name, body.model_version)
    stored = streams_store.rebaseline(
        engine,
        settings.drift,
        key,
        requested_by=principal.subject,
        reason=body.reason,
        events=body.events,
    )
    return ReferencePublic.of(stored)


@router.get(
    "/sites/{site_id}/report",
    tags=["drift"],
    response_class=HTMLResponse,
    responses={404: {}},
)
async def report(
    site_id: Identifier,
    engine: EngineDep,
    settings: SettingsDep,
    principal: PageReaderDep,
    model_name: Identifier | None = None,
    model_version: Identifier | None = None,
) -> HTMLResponse:
    """Evidently report: the stream's reference against its latest window of events (the
    detailed appendix of ``/sites/{site_id}/drift-report``). A browser opens it through a
    signed link (POST /links)."""
    check_site(principal, site_id)
    _, html = await run_in_threadpool(
        site_report,
        engine,
        settings.drift,
        site_id,
        model_name=model_name,
        model_version=model_version,
    )
    return HTMLResponse(html)


@router.get(
    "/sites/{site_id}/drift-report",
    tags=["drift"],
    response_class=HTMLResponse,
    responses={404: {}},
)
async def drift_report_page(
    site_id: Identifier,
    engine: EngineDep,
    settings: SettingsDep,
    principal: PageReaderDep,
    request: Request,
    model_name: Identifier | None = None,
    model_version: Identifier | None = None,
) -> HTMLResponse:
    """The site drift page: the drifting features first, each with its evidence and a
    reference-vs-current plot, the alerts, the window dates and a glossary; the Evidently
    report (``/sites/{site_id}/report``) is its detailed appendix. A browser opens it through
    a signed link (POST /links); the page then links its appendix with a link of its own."""
    check_site(principal, site_id)
    appendix_link = None
    if LINK_PARAMETER in request.query_params:
        appendix_link, _ = issue_link(
            app_link_key(request),
            settings.auth.link_ttl_s,
            principal,
            f"/sites/{site_id}/report",
        )
    html = await run_in_threadpool(
        page_html,
        engine,
        settings.drift,
        site_id,
        model_name=model_name,
        model_version=model_version,
        appendix_link=appendix_link,
    )
    return HTMLResponse(html)
