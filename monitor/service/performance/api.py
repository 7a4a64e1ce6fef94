"""Performance endpoints: the latest snapshots per site, or per model across sites (a site
manager's sites only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine

from monitor.events import Identifier
from monitor.service.auth import ReaderDep, check_site
from monitor.service.deps import EngineDep


class SnapshotPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    site_id: str
    model_name: str
    model_version: str
    finding: str
    window: str
    computed_at: datetime
    predicted: int
    labelled: int
    expired_labels: int
    label_delay_hours: dict[str, float] | None
    metrics: dict[str, Any]
    subgroups: list[dict[str, Any]]
    estimate: dict[str, Any] | None
    """Rolling window: the label-free (CBPE) estimate on the latest predictions, labelled or
    not, whether it can be trusted and why, and its comparison with the realised metrics."""
    config_fingerprint: str


router = APIRouter(tags=["performance"])


@router.get("/sites/{site_id}/performance", responses={404: {}})
def site_performance(
    site_id: Identifier, engine: EngineDep, principal: ReaderDep
) -> list[SnapshotPublic]:
    """Per model version, finding and window (rolling, cumulative): realised metrics with
    confidence intervals, calibration, subgroups and label completeness."""
    check_site(principal, site_id)
    return _snapshots(engine, site_id=site_id)


@router.get("/models/{model_name}/performance", responses={404: {}})
def model_performance(
    model_name: Identifier, engine: EngineDep, principal: ReaderDep
) -> list[SnapshotPublic]:
    """The same for one model at every site (a site manager: at each of its sites)."""
    return _snapshots(engine, sites=principal.site_filter(), model_name=model_name)


def _snapshots(
    engine: Engine, sites: frozenset[str] | None = None, **where: str
) -> list[SnapshotPublic]:
    from monitor.service.performance.store import latest_snapshots  # statsmodels: on demand

    # Snapshots are per site, so keeping a site manager's sites leaves nothing mixed in.
    rows = [r for r in latest_snapshots(engine, **where) if sites is None or r.site_id in sites]
    if not rows:
        what = ", ".join(f"{k}={v!r}" for k, v in where.items())
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no performance computed yet for {what}")
    return [SnapshotPublic.model_validate(row) for row in rows]
