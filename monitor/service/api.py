"""The HTTP API: an app factory; engines and clients are built in the lifespan, not at import."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor.drift.base import InsufficientDataError
from monitor.events import Identifier
from monitor.service import store
from monitor.service.alerts_store import AlertNotFound, IllegalTransition, StreamNotFound
from monitor.service.api_audit import audit_router
from monitor.service.api_candidates import candidates_router
from monitor.service.api_drift import drift_router
from monitor.service.api_performance import performance_router
from monitor.service.api_retrain import retrain_router
from monitor.service.auth import ReaderDep, TokenVerifier, check_site, warn_if_local
from monitor.service.candidates_store import (
    CandidateNotFound,
    FourEyesViolation,
)
from monitor.service.db import make_engine
from monitor.service.deps import EngineDep
from monitor.service.kafka import broker_reachable
from monitor.service.metrics_db import database_collector
from monitor.service.retrain_store import RequestNotFound
from monitor.service.settings import Settings

if TYPE_CHECKING:
    from retrain.tracking import Registry


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


class Readiness(BaseModel):
    status: str
    database: bool
    broker: bool


ERROR_STATUS: dict[type[Exception], int] = {
    AlertNotFound: status.HTTP_404_NOT_FOUND,
    StreamNotFound: status.HTTP_404_NOT_FOUND,
    RequestNotFound: status.HTTP_404_NOT_FOUND,
    CandidateNotFound: status.HTTP_404_NOT_FOUND,
    FourEyesViolation: status.HTTP_403_FORBIDDEN,
    IllegalTransition: status.HTTP_409_CONFLICT,
    InsufficientDataError: status.HTTP_422_UNPROCESSABLE_CONTENT,
}
"""Our errors and the HTTP status each one means, in one place."""

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    status.HTTP_401_UNAUTHORIZED: {"description": "No bearer token, or one that fails a check."},
    status.HTTP_403_FORBIDDEN: {"description": "The token's roles or sites do not allow this."},
    status.HTTP_503_SERVICE_UNAVAILABLE: {
        "description": "Tokens cannot be checked right now (OIDC: the identity provider's "
        "signing keys are unreachable)."
    },
}
"""What every route behind a token may answer (docs/security.md); the probes and /metrics never."""


def _status_handler(code: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=code)

    return handle


class _EscapedJSONResponse(JSONResponse):
    """JSON escaped to ASCII. A validation error echoes the input, and a lone surrogate in it
    (a valid JSON escape, not Unicode text) cannot be encoded as UTF-8: a 500, not the 422."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own answer to an invalid request, escaped (:class:`_EscapedJSONResponse`)."""
    errors = cast(RequestValidationError, exc).errors()  # registered for this class only
    content = {"detail": jsonable_encoder(errors)}
    return _EscapedJSONResponse(content, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


BootstrapResolver = Callable[[], list[str] | None]


class _LazyRegistry:
    """The model registry, connected on first use: only proposals, promotion and rollback need
    it, so no other request (nor a refused promotion) opens the MLflow store."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._registry: Registry | None = None

    def move_champion(self, model_name: str, version: str) -> str | None:
        return self._connected().move_champion(model_name, version)

    def has_version(self, model_name: str, version: str) -> bool:
        from mlflow.exceptions import MlflowException

        from retrain.mlflow_calls import TrackingError

        try:
            self._connected().version(model_name, version)
        except TrackingError as exc:
            cause = exc.__cause__
            if isinstance(cause, MlflowException) and cause.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise  # MLflow down: 503, not "no such version"
        return True

    def _connected(self) -> Registry:
        if self._registry is None:
            from monitor.service.registry import registry_for

            self._registry = registry_for(self._settings)
        return self._registry


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    bootstrap: BootstrapResolver | None = None,
) -> FastAPI:
    """Build the API. ``bootstrap`` says where the broker is (it may move with the embedded
    broker); without it the configured bootstrap servers are used."""

    def resolve_bootstrap() -> list[str] | None:
        return bootstrap() if bootstrap else settings.kafka.bootstrap_servers or None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = engine is None
        app.state.engine = engine or make_engine(settings.database_url)
        warn_if_local(settings.auth)
        with database_collector().bound(app.state.engine):  # /metrics: alerts, candidates
            yield
        if owned:
            app.state.engine.dispose()

    app = FastAPI(
        title="RadSentry",
        version="0.1.0",
        summary="Post-market monitoring and change control for medical-imaging AI.",
        lifespan=lifespan,
    )
    app.state.token_verifier = TokenVerifier(settings)  # keys read (and JWKS cached) once

    app.include_router(drift_router(settings.drift), responses=AUTH_ERRORS)
    app.include_router(performance_router(), responses=AUTH_ERRORS)
    app.include_router(retrain_router(), responses=AUTH_ERRORS)
    registry = _LazyRegistry(settings)
    app.state.registry_factory = lambda: registry
    app.include_router(candidates_router(), responses=AUTH_ERRORS)
    app.include_router(audit_router(), responses=AUTH_ERRORS)
    for error, code in ERROR_STATUS.items():
        app.add_exception_handler(error, _status_handler(code))
    app.add_exception_handler(RequestValidationError, _invalid_request)
    # MLflow unreachable (proposal, promotion, rollback). Imported here: mlflow is slow to
    # import, and every CLI command imports this module.
    from retrain.mlflow_calls import TrackingError

    app.add_exception_handler(TrackingError, _status_handler(status.HTTP_503_SERVICE_UNAVAILABLE))

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers. Checks no dependency."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"model": Readiness}})
    def readyz(engine: EngineDep, response: Response) -> Readiness:
        """Readiness: the database answers a query and a broker answers a metadata request."""
        try:
            store.ping(engine)
            database = True
        except SQLAlchemyError:
            database = False
        servers = resolve_bootstrap()
        broker = bool(servers) and broker_reachable(servers or [])
        ready = database and broker
        if not ready:
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(status="ready" if ready else "not ready", database=database, broker=broker)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus exposition of this process's metrics, with the database-backed ones
        (open alerts, candidates, promotions, rollbacks: ``metrics_db``)."""
        body = await run_in_threadpool(generate_latest)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/sites", tags=["sites"], responses=AUTH_ERRORS)
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

    @app.get("/sites/{site_id}/events", tags=["sites"], responses={404: {}, **AUTH_ERRORS})
    def site_events(
        site_id: Identifier, engine: EngineDep, principal: ReaderDep
    ) -> SiteEventsPublic:
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

    return app
