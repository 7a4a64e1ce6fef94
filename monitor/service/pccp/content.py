"""What the sites now send, for the gate's content-coverage criterion (``pccp.coverage``).

The sites compared are the candidate's (the site whose alert asked for the retrain), else the
sites the plan names, else every site that sent the model studies. A site's recent studies are
its last ``recent_studies`` accepted inference events for the model (rows of
``inference_events``: what ingestion accepted) within ``lookback_days`` of its latest event.
The window is anchored at the site's latest event, not the wall clock, so a gate run days after
a site went quiet, or on replayed history, still sees what the site sent last. Only the
allowlisted metadata is read (``monitor.events.DicomMetadata``); no study key leaves here.
:func:`recent_embeddings` reads the same window's ``inference-event/v2`` embeddings of one
projection, for the evidence's embedding coverage (``pccp.embedding_coverage``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import Connection, Engine, func, select

from monitor.service.models import InferenceEventRow
from pccp.coverage import ContentFacts, SiteMix, content_mix
from pccp.locked_cases import LockedCase
from pccp.plan import ContentCoverageCriterion, Plan

_EVENTS = InferenceEventRow


def content_facts(
    engine: Engine, plan: Plan, cases: Sequence[LockedCase], site_id: str | None
) -> dict[str, ContentFacts]:
    """The facts of each ``content_coverage`` criterion of ``plan``, by criterion id, for a
    candidate asked for by ``site_id`` (None: the plan's sites, else every site)."""
    criteria = [
        c for c in plan.protocol.performance_evaluation if isinstance(c, ContentCoverageCriterion)
    ]
    if not criteria:
        return {}
    model_name = plan.description.model_name
    with engine.connect() as connection:
        sites = sites_for(connection, plan, site_id)
        return {
            criterion.id: ContentFacts(
                locked=content_mix(
                    (case.metadata.model_dump() for case in cases), criterion.fields
                ),
                sites=tuple(
                    recent_mix(connection, model_name, site, criterion) for site in sorted(sites)
                ),
            )
            for criterion in criteria
        }


def recent_mix(
    connection: Connection, model_name: str, site_id: str, criterion: ContentCoverageCriterion
) -> SiteMix:
    """The mix of ``criterion.fields`` over the site's recent studies for the model."""
    at_site = (_EVENTS.site_id == site_id, _EVENTS.model_name == model_name)
    latest = connection.scalar(select(func.max(_EVENTS.occurred_at)).where(*at_site))
    if latest is None:
        return SiteMix(site_id, content_mix((), criterion.fields))
    rows = connection.execute(
        select(_EVENTS.dicom_metadata, _EVENTS.occurred_at)
        .where(*at_site, _EVENTS.occurred_at >= latest - timedelta(days=criterion.lookback_days))
        .order_by(_EVENTS.occurred_at.desc())
        .limit(criterion.recent_studies)
    ).all()
    return SiteMix(
        site_id,
        content_mix((metadata for metadata, _ in rows), criterion.fields),
        first_at=rows[-1][1],
        last_at=rows[0][1],
    )


def sites_for(connection: Connection, plan: Plan, site_id: str | None) -> Sequence[str]:
    """The sites a candidate asked for by ``site_id`` is compared at (module docstring)."""
    if site_id is not None:
        return (site_id,)
    return plan.description.sites or _sites_of(connection, plan.description.model_name)


def recent_embeddings(
    engine: Engine,
    plan: Plan,
    site_id: str | None,
    embedding_id: str,
    criterion: ContentCoverageCriterion,
) -> tuple[list[str], NDArray[np.float64]]:
    """The sites with embeddings of ``embedding_id`` in their recent window (``criterion``'s
    ``recent_studies`` and ``lookback_days``), and those embeddings stacked ``[m, k]``."""
    model_name = plan.description.model_name
    found: list[str] = []
    vectors: list[list[float]] = []
    with engine.connect() as connection:
        for site in sorted(sites_for(connection, plan, site_id)):
            at_site = (
                _EVENTS.site_id == site,
                _EVENTS.model_name == model_name,
                _EVENTS.embedding_id == embedding_id,
            )
            latest = connection.scalar(select(func.max(_EVENTS.occurred_at)).where(*at_site))
            if latest is None:
                continue
            since = latest - timedelta(days=criterion.lookback_days)
            rows = connection.scalars(
                select(_EVENTS.embedding)
                .where(*at_site, _EVENTS.occurred_at >= since)
                .order_by(_EVENTS.occurred_at.desc())
                .limit(criterion.recent_studies)
            ).all()
            found.append(site)
            vectors.extend(vector for vector in rows if vector is not None)
    return found, np.asarray(vectors, dtype=np.float64)


def _sites_of(connection: Connection, model_name: str) -> list[str]:
    query = select(_EVENTS.site_id).where(_EVENTS.model_name == model_name).distinct()
    return list(connection.scalars(query))
