"""The HTTP API: an app factory; engines and clients are built in the lifespan, not at import."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from fastapi import APIRouter, FastAPI, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor.drift.base import InsufficientDataError
from monitor.service import embedded_pg
from monitor.service.audit.api import router as audit_router
from monitor.service.audit.jobs import verify_change_log
from monitor.service.audit.keys import SigningKeyError, sign_entries_with
from monitor.service.audit.links import router as links_router
from monitor.service.auth import TokenVerifier, warn_if_local
from monitor.service.db import make_engine, ping
from monitor.service.deps import EngineDep
from monitor.service.drift.api import router as drift_router
from monitor.service.errors import Conflict, Forbidden, NotFound
from monitor.service.ingest.api import router as sites_router
from monitor.service.kafka import broker_reachable
from monitor.service.limits import RequestLimits
from monitor.service.metrics_db import database_collector
from monitor.service.pccp.api import router as candidates_router
from monitor.service.pccp.model_api import router as models_router
from monitor.service.performance.api import router as performance_router
from monitor.service.retrain.api import router as retrain_router
from monitor.service.settings import Settings

if TYPE_CHECKING:
    from retrain.tracking import Registry


class Readiness(BaseModel):
    status: str
    database: bool
    broker: bool


ERROR_STATUS: dict[type[Exception], int] = {
    NotFound: status.HTTP_404_NOT_FOUND,
    Forbidden: status.HTTP_403_FORBIDDEN,
    Conflict: status.HTTP_409_CONFLICT,
    InsufficientDataError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    SigningKeyError: status.HTTP_503_SERVICE_UNAVAILABLE,  # the change log cannot be signed
}
"""Our errors and the HTTP status each kind means, in one place: every subclass of a kind
(``AlertNotFound``, ``FourEyesViolation``, ``IllegalTransition``...) answers with its status,
and its message is the response's ``detail``."""

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
    """FastAPI's own answer to an invalid request, escaped (:class:`_EscapedJSONResponse`), with
    the non-finite numbers it echoes (NaN, Infinity: Python's JSON parser accepts them, JSON has
    none) written as text, so that the 422 itself renders."""
    errors = cast(RequestValidationError, exc).errors()  # registered for this class only
    content = {"detail": _finite(jsonable_encoder(errors))}
    return _EscapedJSONResponse(content, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


ROUTERS = (
    drift_router,
    performance_router,
    retrain_router,
    candidates_router,
    models_router,
    audit_router,
    sites_router,
    links_router,
)
"""Every domain's router, in the order the OpenAPI document lists them."""

operations = APIRouter(tags=["operations"])


@operations.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers. Checks no dependency."""
    return {"status": "ok"}


@operations.get("/readyz", responses={503: {"model": Readiness}})
def readyz(request: Request, engine: EngineDep, response: Response) -> Readiness:
    """Readiness: the database answers a query and a broker answers a metadata request."""
    try:
        ping(engine)
        database = True
    except SQLAlchemyError:
        database = False
    servers: list[str] | None = request.app.state.bootstrap()
    broker = bool(servers) and broker_reachable(servers or [])
    ready = database and broker
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(status="ready" if ready else "not ready", database=database, broker=broker)


@operations.get("/metrics", response_class=Response)
async def metrics() -> Response:
    """Prometheus exposition of this process's metrics, with the database-backed ones
    (open alerts, candidates, promotions, rollbacks: ``metrics_db``)."""
    body = await run_in_threadpool(generate_latest)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


BootstrapResolver = Callable[[], list[str] | None]


class _LazyRegistry:
    """The model registry, connected on first use: only proposals, promotion and rollback need
    it, so no other request (nor a refused promotion) opens the MLflow store."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._registry: Registry | None = None

    def champion_version(self, model_name: str) -> str | None:
        return self._connected().champion_version(model_name)

    def move_champion(self, model_name: str, version: str) -> str | None:
        return self._connected().move_champion(model_name, version)

    def challenger_version(self, model_name: str) -> str | None:
        from retrain.mlflow_names import CHALLENGER

        found = self._connected().version_by_alias(model_name, CHALLENGER)
        return None if found is None else found.version

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
    """Build the API: every domain's router behind a token, the probes and ``/metrics`` without.
    ``bootstrap`` says where the broker is (it may move with the embedded broker); without it
    the configured bootstrap servers are used."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = engine is None
        app.state.engine = engine or make_engine(embedded_pg.database_url(settings))
        warn_if_local(settings.auth)
        # The audit gauges of this process say what the log's state is from the start, not 0
        # until a scheduler's first run (which contradicted GET /audit/verify); in the
        # background, since verifying re-reads the whole change log.
        verifying = asyncio.create_task(
            run_in_threadpool(verify_change_log, app.state.engine, settings)
        )
        with database_collector().bound(app.state.engine):  # /metrics: alerts, candidates
            yield
        await verifying
        if owned:
            app.state.engine.dispose()

    app = FastAPIOffline(  # Swagger UI and ReDoc from the package's files, not a CDN
        title="RadSentry",
        version="0.1.0",
        summary="Post-market monitoring and change control for medical-imaging AI.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    sign_entries_with(settings)  # approvals, promotions...: entries signed with the audit key
    app.state.bootstrap = bootstrap or (lambda: settings.kafka.bootstrap_servers or None)
    app.state.token_verifier = TokenVerifier(settings)  # keys read (and JWKS cached) once
    registry = _LazyRegistry(settings)
    app.state.registry_factory = lambda: registry
    # Outside routing and every dependency: oversized requests never reach authentication.
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.api.max_body_bytes,
        max_header_bytes=settings.api.max_header_bytes,
        max_upload_bytes=settings.api.max_upload_bytes,
    )
    for router in ROUTERS:
        app.include_router(router, responses=AUTH_ERRORS)
    app.include_router(operations)  # no token: the probes and /metrics
    for error, code in ERROR_STATUS.items():
        app.add_exception_handler(error, _status_handler(code))
    app.add_exception_handler(RequestValidationError, _invalid_request)
    # MLflow unreachable (proposal, promotion, rollback). Imported here: mlflow is slow to
    # import, and every CLI command imports this module.
    from retrain.mlflow_calls import TrackingError

    app.add_exception_handler(TrackingError, _status_handler(status.HTTP_503_SERVICE_UNAVAILABLE))

    return app
