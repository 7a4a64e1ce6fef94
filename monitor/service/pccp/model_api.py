"""One model under change control: which version is champion now, the challenger, the
candidates still in the PCCP lifecycle, and every move of the champion (``GET /models/{name}``).

The champion and the challenger are the registry's aliases (what serves is what the registry
says); the history is the change log's (``monitor.service.pccp.history``). A model the service
has no record of is 404 before the registry is asked.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from monitor.events import Identifier
from monitor.service.auth import ReaderDep
from monitor.service.deps import EngineDep
from monitor.service.pccp import history
from monitor.service.pccp import store as candidates_store
from monitor.service.pccp.api import REGISTRY_DOWN, CandidatePublic, RegistryDep

IN_LIFECYCLE = ("candidate", "passed", "approved")
"""Candidates not yet decided: waiting for the gate, for approvals, or for promotion."""


class ChampionChangePublic(BaseModel):
    """One move of the champion, from its change-log entry."""

    seq: int = Field(description="The change-log entry (`GET /audit`, `radsentry audit verify`).")
    recorded_at: datetime
    action: str = Field(description="champion.initial, promotion or rollback.")
    champion: str = Field(description="The version that became champion.")
    replaced: str | None = Field(description="The version it replaced (a rollback: undid).")
    actor: str
    reason: str | None = Field(description="Why; left out for a site manager.")


class ModelPublic(BaseModel):
    model_name: str
    champion: str | None = Field(description="The version that serves now (registry alias).")
    champion_since: datetime | None = Field(
        description="When the change log last made that version champion."
    )
    challenger: str | None = Field(
        description="The latest retrained version (registry alias `challenger`), if any."
    )
    candidates: list[CandidatePublic] = Field(
        description="Candidates still in the lifecycle (candidate, passed, approved), newest "
        "first; a site manager: those retrained for its sites."
    )
    history: list[ChampionChangePublic] = Field(
        description="Every move of the champion, oldest first."
    )


router = APIRouter(tags=["candidates"])


@router.get("/models/{model_name}", responses={404: {}, 503: REGISTRY_DOWN})
def get_model(
    model_name: Identifier, engine: EngineDep, principal: ReaderDep, registry: RegistryDep
) -> ModelPublic:
    """Which version is champion now, the challenger, the open candidates and the champion's
    history; 404 for a model the service has no record of."""
    history.require_known(engine, model_name)
    changes = history.champion_history(engine, model_name)
    champion = registry.champion_version(model_name)
    since = [c.recorded_at for c in changes if c.champion == champion]
    page = candidates_store.list_candidates(
        engine, model_name=model_name, sites=principal.site_filter(), limit=500
    )
    return ModelPublic(
        model_name=model_name,
        champion=champion,
        champion_since=since[-1] if since else None,
        challenger=registry.challenger_version(model_name),
        candidates=[
            CandidatePublic.model_validate(row, from_attributes=True)
            for row in page.items
            if row.status in IN_LIFECYCLE
        ],
        history=[
            ChampionChangePublic(
                seq=c.seq,
                recorded_at=c.recorded_at,
                action=c.action,
                champion=c.champion,
                replaced=c.replaced,
                actor=c.actor,
                reason=c.reason if principal.reads_all_sites else None,
            )
            for c in changes
        ],
    )
