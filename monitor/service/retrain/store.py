"""Retrain requests: created from alerts under the retraining policy, or by people.

``consider_alerts`` looks at every alert whose drift is still active and asks the policy
(``retrain.policy.decide``); a positive decision inserts a request unique per (model, alert),
so scanning again, a repeated alert or two schedulers racing never create a second one. A
declined alert is looked at again on the next scan (labels accrue, cooldowns pass). Nothing
here trains or changes which model serves; the retraining job picks up pending requests.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog
from sqlalchemy import Connection, Engine, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from monitor.drift.severity import Severity
from monitor.service.audit import store as change_log
from monitor.service.db import Page, as_utc, page_of, table_of
from monitor.service.errors import NotFound
from monitor.service.models import AlertRow, CurrentLabelRow, RetrainRequestRow
from retrain.policy import AlertFacts, LabelCounts, RetrainPolicy, decide

log = structlog.get_logger(__name__)


class RequestNotFound(NotFound):
    pass


RequestPage = Page[RetrainRequestRow]


Identity = Literal["verified", "claimed"]
"""How the requester is known: ``verified`` from an API token, ``claimed`` when only named
(``radsentry retrain --by``, which anyone with database access can run)."""


def request_manual(
    engine: Engine,
    model_name: str,
    requested_by: str,
    reason: str,
    *,
    identity: Identity = "verified",
) -> RetrainRequestRow:
    """A person asks for a retrain of ``model_name``; recorded with who and why, and whether
    who is verified or only claimed. A claimed name still counts as the requester for the
    four-eyes rule (it may not approve the result), and never as a signer: signatures are
    API-only."""
    row = _row(model_name, "manual", requested_by, reason, datetime.now(UTC))
    row["details"] = {"identity": identity}
    with engine.begin() as connection:
        connection.execute(table_of(RetrainRequestRow).insert().values(**row))
        _log_request(connection, row)
    return get_request(engine, row["request_id"])


@dataclass(frozen=True)
class Declined:
    """An active alert the policy did not turn into a request, and the policy's reason."""

    alert_id: uuid.UUID
    detector: str
    site_id: str
    reason: str


@dataclass(frozen=True)
class AlertReview:
    """One scan of the active alerts: the requests created, and the alerts declined with why.
    Alerts that already have a request are not looked at again (neither list holds them)."""

    created: list[uuid.UUID] = field(default_factory=list)
    declined: list[Declined] = field(default_factory=list)


def consider_alerts(
    engine: Engine, policy: RetrainPolicy, now: datetime | None = None
) -> list[uuid.UUID]:
    """Create the requests the policy asks for from active alerts; their ids."""
    return review_alerts(engine, policy, now).created


def review_alerts(
    engine: Engine, policy: RetrainPolicy, now: datetime | None = None
) -> AlertReview:
    """:func:`consider_alerts`, keeping the policy's reason for every alert it declined (for a
    caller that must say why no request came, as the demo does)."""
    now = now or datetime.now(UTC)
    review = AlertReview()
    with engine.begin() as connection:
        for alert in _candidate_alerts(connection):
            last = _last_request_at(connection, alert.model_name)
            since = last or datetime.fromtimestamp(0, UTC)
            labels = LabelCounts(
                overall=_labels_since(connection, alert.model_name, None, since),
                site=_labels_since(connection, alert.model_name, alert.site_id, since),
            )
            facts = AlertFacts(
                alert.detector,
                alert.effect_size,
                alert.site_id,
                alert.model_name,
                Severity(alert.severity),
            )
            decision = decide(facts, policy, labels, last, now)
            if not decision.trigger:
                log.debug(
                    "alert does not trigger retraining",
                    alert_id=str(alert.alert_id),
                    reason=decision.reason,
                )
                review.declined.append(
                    Declined(alert.alert_id, alert.detector, alert.site_id, decision.reason)
                )
                continue
            row = _row(alert.model_name, "alert", "retrain-policy", decision.reason, now)
            row |= {
                "site_id": alert.site_id,
                "alert_id": alert.alert_id,
                "policy_fingerprint": policy.fingerprint(),
                "details": {
                    "detector": alert.detector,
                    "labels": {"overall": labels.overall, "site": labels.site},
                },
            }
            statement = pg_insert(table_of(RetrainRequestRow)).on_conflict_do_nothing(
                index_elements=["model_name", "alert_id"]
            )
            if connection.execute(statement, row).rowcount:
                _log_request(connection, row)
                review.created.append(row["request_id"])
                log.info(
                    "retrain requested", model_name=alert.model_name, alert_id=str(alert.alert_id)
                )
    return review


def list_requests(
    engine: Engine,
    *,
    model_name: str | None = None,
    status: str | None = None,
    site_ids: Collection[str] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> RequestPage:
    """Requests, newest first, filtered and paginated. ``site_ids`` keeps only requests raised
    for one of those sites (a site manager's): model-wide ones (no site) are left out."""
    conditions = []
    if model_name is not None:
        conditions.append(RetrainRequestRow.model_name == model_name)
    if status is not None:
        conditions.append(RetrainRequestRow.status == status)
    if site_ids is not None:
        conditions.append(RetrainRequestRow.site_id.in_(site_ids))
    order = (RetrainRequestRow.created_at.desc(),)
    return page_of(engine, RetrainRequestRow, conditions, order, limit, offset)


def trained_on(engine: Engine, model_name: str, manifest_sha256: str) -> list[RetrainRequestRow]:
    """The requests that registered a version of ``model_name`` trained on the data set whose
    manifest hash is ``manifest_sha256``, oldest first."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(RetrainRequestRow)
            .where(
                RetrainRequestRow.model_name == model_name,
                RetrainRequestRow.status == "succeeded",
                RetrainRequestRow.manifest_sha256 == manifest_sha256,
            )
            .order_by(RetrainRequestRow.created_at, RetrainRequestRow.request_id)
        )
        return [RetrainRequestRow(**row._mapping) for row in rows]


def get_request(engine: Engine, request_id: uuid.UUID) -> RetrainRequestRow:
    with engine.connect() as connection:
        row = connection.execute(
            select(RetrainRequestRow).where(RetrainRequestRow.request_id == request_id)
        ).first()
    if row is None:
        raise RequestNotFound(f"no retrain request {request_id}")
    return RetrainRequestRow(**row._mapping)


def claim_next(
    engine: Engine,
    *,
    lease: timedelta,
    max_attempts: int,
    now: datetime | None = None,
    exclude: Collection[uuid.UUID] = (),
) -> RetrainRequestRow | None:
    """Take the oldest request that is pending, or running with its lease expired (the job
    that held it died), and mark it running; None when there is none.

    The update is conditional on the status and ``updated_at`` read, so two workers racing
    for one request cannot both win. A request already tried ``max_attempts`` times is failed
    instead (it is returned to the caller with status "failed" so it can raise the alert).
    ``exclude``: requests already tried in this pass, retried on a later one.
    """
    now = now or datetime.now(UTC)
    stale = now - lease
    with engine.begin() as connection:
        candidates = connection.execute(
            select(RetrainRequestRow.request_id, RetrainRequestRow.updated_at)
            .where(
                or_(
                    RetrainRequestRow.status == "pending",
                    (RetrainRequestRow.status == "running")
                    & (RetrainRequestRow.updated_at < stale),
                )
            )
            .where(RetrainRequestRow.request_id.not_in(list(exclude)))
            .order_by(RetrainRequestRow.created_at)
            .limit(5)
        ).all()
        for request_id, seen in candidates:
            row = _claim(connection, request_id, seen, now, max_attempts)
            if row is not None:
                return row
    return None


def _claim(
    connection: Connection,
    request_id: uuid.UUID,
    seen: datetime,
    now: datetime,
    max_attempts: int,
) -> RetrainRequestRow | None:
    current = connection.execute(
        select(RetrainRequestRow).where(RetrainRequestRow.request_id == request_id)
    ).one()
    exhausted = current.attempts >= max_attempts
    values: dict[str, Any] = {"updated_at": now}
    if exhausted:
        values |= {
            "status": "failed",
            "finished_at": now,
            "error": (current.error or "the job stopped")
            + f" (gave up after {current.attempts} attempts)",
        }
    else:
        values |= {
            "status": "running",
            "attempts": current.attempts + 1,
            "started_at": current.started_at or now,
        }
    won = connection.execute(
        update(RetrainRequestRow)
        .where(
            RetrainRequestRow.request_id == request_id,
            RetrainRequestRow.status == current.status,
            RetrainRequestRow.updated_at == seen,
        )
        .values(**values)
    ).rowcount
    if not won:
        return None
    row = connection.execute(
        select(RetrainRequestRow).where(RetrainRequestRow.request_id == request_id)
    ).one()
    return RetrainRequestRow(**row._mapping)


def record_progress(engine: Engine, request_id: uuid.UUID, **progress: Any) -> None:
    """Merge ``progress`` into the running request's progress; also its heartbeat."""
    with engine.begin() as connection:
        current = connection.scalar(
            select(RetrainRequestRow.progress).where(RetrainRequestRow.request_id == request_id)
        )
        connection.execute(
            update(RetrainRequestRow)
            .where(RetrainRequestRow.request_id == request_id)
            .values(progress=(current or {}) | progress, updated_at=datetime.now(UTC))
        )


def finish(
    engine: Engine,
    request_id: uuid.UUID,
    status: str,
    *,
    error: str | None = None,
    log_entry: change_log.Entry | None = None,
    **columns: Any,
) -> RetrainRequestRow:
    """End an attempt: "succeeded", "failed", or back to "pending" for another attempt;
    ``log_entry`` goes to the change log in the same transaction."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {"status": status, "updated_at": now, "error": error, **columns}
    if status in ("succeeded", "failed"):
        values["finished_at"] = now
    with engine.begin() as connection:
        connection.execute(
            update(RetrainRequestRow)
            .where(RetrainRequestRow.request_id == request_id)
            .values(**values)
        )
        if log_entry is not None:
            change_log.append(connection, log_entry, now)
    return get_request(engine, request_id)


def _log_request(connection: Connection, row: dict[str, Any]) -> None:
    """The request in the change log, in the transaction that creates it."""
    details = {"trigger": row["trigger"], "request_id": str(row["request_id"]), **row["details"]}
    if row["alert_id"] is not None:
        details |= {
            "alert_id": str(row["alert_id"]),
            "site_id": row["site_id"],
            "policy_fingerprint": row["policy_fingerprint"],
        }
    change_log.append(
        connection,
        change_log.Entry(
            actor=row["requested_by"],
            action="retrain.requested",
            subject=f"{row['model_name']}/request/{row['request_id']}",
            details=details,
            reason=row["reason"],
        ),
        row["created_at"],
    )


def _row(
    model_name: str, trigger: str, requested_by: str, reason: str, now: datetime
) -> dict[str, Any]:
    return {
        "request_id": uuid.uuid4(),
        "model_name": model_name,
        "site_id": None,
        "trigger": trigger,
        "alert_id": None,
        "requested_by": requested_by,
        "reason": reason,
        "status": "pending",
        "policy_fingerprint": None,
        "details": {},
        "created_at": now,
        "updated_at": now,
    }


def _candidate_alerts(connection: Connection) -> list[Any]:
    """Alerts still drifting with no request yet for their model."""
    requested = select(RetrainRequestRow.alert_id).where(RetrainRequestRow.alert_id.is_not(None))
    return list(
        connection.execute(
            select(
                AlertRow.alert_id,
                AlertRow.detector,
                AlertRow.effect_size,
                AlertRow.site_id,
                AlertRow.model_name,
                AlertRow.severity,
            )
            .where(AlertRow.drift_active.is_(True), AlertRow.alert_id.not_in(requested))
            .order_by(AlertRow.occurred_at)
        )
    )


def _last_request_at(connection: Connection, model_name: str) -> datetime | None:
    latest = connection.scalar(
        select(func.max(RetrainRequestRow.created_at)).where(
            RetrainRequestRow.model_name == model_name
        )
    )
    return None if latest is None else as_utc(latest)


def _labels_since(
    connection: Connection, model_name: str, site_id: str | None, since: datetime
) -> int:
    """Labelled cases (labels in force, not expired) of the model whose label event came after
    ``since`` (counted per study and finding)."""
    conditions = [
        CurrentLabelRow.model_name == model_name,
        CurrentLabelRow.expired_at.is_(None),
        CurrentLabelRow.labelled_at > since,
    ]
    if site_id is not None:
        conditions.append(CurrentLabelRow.site_id == site_id)
    return (
        connection.scalar(select(func.count()).select_from(CurrentLabelRow).where(*conditions)) or 0
    )
