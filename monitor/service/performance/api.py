"""Performance endpoints: the latest snapshots per site, or per model across sites (a site
manager's sites only); each stream's health score."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine

from monitor.events import Identifier
from monitor.service.auth import ReaderDep, check_site
from monitor.service.deps import EngineDep, SettingsDep


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


class ComponentPublic(BaseModel):
    """One detector in the score: its effect, standardised ``z`` (None: no learned moments,
    not in the score) and weight."""

    detector: str
    effect: float
    z: float | None
    weight: float
    note: str | None


class WeightsPublic(BaseModel):
    source: Literal["learned", "default"]
    """``learned`` from labelled windows, or ``default``: equal weights (``reason`` says why)."""
    reason: str
    labelled_windows: int
    learned_through: datetime | None
    """End of the latest labelled window the weights were learned from."""
    auroc_per_spread: dict[str, float]


class StreamHealthPublic(BaseModel):
    model_name: str
    model_version: str
    finding: str | None
    """Whose realised AUROC the weights predict (the finding with most labels)."""
    window_start: datetime
    window_end: datetime
    n_window: int
    health: float | None
    """0 to 100: 100 = like the reference, lower = worse (docs/performance.md)."""
    lower: float | None
    upper: float | None
    confidence: float
    drift_index: float | None
    """Weighted mean of the detectors' z: reference spreads beyond the reference's level."""
    expected_auroc_drop: float | None
    """With learned weights: the AUROC drop the detectors' z predict."""
    components: list[ComponentPublic]
    weights: WeightsPublic
    windows: int


class SiteHealthPublic(BaseModel):
    site_id: str
    computed_at: datetime
    streams: list[StreamHealthPublic]


router = APIRouter(tags=["performance"])


@router.get("/sites/{site_id}/health", responses={404: {}})
def site_health(
    site_id: Identifier, engine: EngineDep, settings: SettingsDep, principal: ReaderDep
) -> SiteHealthPublic:
    """Per model version at the site, the health score of the latest drift window with its
    band and components (each detector's z and weight) and where the weights came from."""
    from monitor.service.drift.streams import site_streams
    from monitor.service.performance.health import site_health as compute

    check_site(principal, site_id)
    if not site_streams(engine, site_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no monitored stream at site {site_id!r}")
    config = settings.performance.health
    return SiteHealthPublic(
        site_id=site_id,
        computed_at=datetime.now(UTC),
        streams=[
            StreamHealthPublic(
                model_name=h.model_name,
                model_version=h.model_version,
                finding=h.finding,
                window_start=h.window.window_start,
                window_end=h.window.window_end,
                n_window=h.window.n_window,
                health=h.score.health,
                lower=h.score.lower,
                upper=h.score.upper,
                confidence=config.confidence,
                drift_index=h.score.drift_index,
                expected_auroc_drop=h.score.expected_auroc_drop,
                components=[ComponentPublic(**asdict(c)) for c in h.score.components],
                weights=WeightsPublic(
                    source=h.score.weights.source,
                    reason=h.score.weights.reason,
                    labelled_windows=h.score.weights.labelled_windows,
                    learned_through=h.learned_through,
                    auroc_per_spread=dict(h.score.weights.auroc_per_spread),
                ),
                windows=h.windows,
            )
            for h in compute(engine, site_id, config)
        ],
    )


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
