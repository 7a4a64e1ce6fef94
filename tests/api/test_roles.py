"""Every route x every role (and no token): who may call what (docs/security.md).

The routes come from the app itself: a route missing from ``ROUTES`` fails
``test_every_route_is_in_the_table``, so a new endpoint gets its line here (one ``Case``, with one
of the access presets below) before it can ship. Path parameters are filled from the seeded
objects: ``{site_id}``, ``{alert_id}``, ``{request_id}``, ``{candidate_id}`` name an object of
the caller's own site for a site manager, of another site for everyone else; writes act on a
third site, so that they do not change what the reads see.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import fastapi.routing
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.drift.alerts import Alert, StreamKey
from monitor.drift.config import DetectorSet, EngineConfig, WindowConfig
from monitor.service.api import create_app
from monitor.service.auth import Role
from monitor.service.db import make_engine, table_of, upgrade
from monitor.service.drift.alerts import write_alerts
from monitor.service.drift.store import DriftMonitor
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.models import PerformanceSnapshotRow, RetrainRequestRow
from monitor.service.pccp import store as candidates_store
from monitor.service.settings import Settings
from monitor.simulate.features import FeatureStreamConfig, feature_stream
from tests.api.test_candidates_api import FakeRegistry
from tests.auth_helpers import TEST_AUTH, bearer, local_claims, signed_locally
from tests.conftest import empty_tables
from tests.factories import gate_report, record_gate_outcome

pytestmark = pytest.mark.integration

OWN, OTHER, SPARE = "site-01", "site-02", "site-03"
MODEL = "cxr-lesion"
CONFIG = EngineConfig(
    reference_size=100,
    window=WindowConfig(size=50, min_size=25),
    detectors=DetectorSet(online=None),
)
SETTINGS = Settings(drift=CONFIG, auth=TEST_AUTH)
OPEN_ROUTES = {"/healthz", "/readyz", "/metrics"}
"""Probes and the Prometheus scrape: no token (docs/security.md)."""
FRAMEWORK_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


class Caller(StrEnum):
    MLOPS = "mlops"
    AUDITOR = "auditor"
    SERVICE = "service"
    MANAGER_OWN = "site manager, its own site"
    MANAGER_OTHER = "site manager, another site"
    NO_ROLE = "token without a known role"
    ANONYMOUS = "no token"


TOKENS: dict[Caller, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    Caller.MLOPS: ("mlops-ann", (Role.MLOPS,), ()),
    Caller.AUDITOR: ("auditor-amy", (Role.AUDITOR,), ()),
    Caller.SERVICE: ("svc-automation", (Role.SERVICE,), ()),
    Caller.MANAGER_OWN: ("manager-mo", (Role.SITE_MANAGER,), (OWN,)),
    Caller.MANAGER_OTHER: ("manager-mo", (Role.SITE_MANAGER,), (OWN,)),
}
UNKNOWN_ROLES = ["admin", "radiologist"]
"""Roles a token may carry that mean nothing here: ignored, so such a token may do nothing."""

OK = "2xx"
AUTHORISED = "neither 401 nor 403"
"""For a caller that may act, where the outcome depends on state the table does not set up."""
Expect = int | str


def access(
    allowed: set[Caller], ok: Expect = OK, manager_other: Expect = 403
) -> dict[Caller, Expect]:
    """Who gets ``ok``: ``allowed``; no token: 401; everyone else: 403, except a site manager
    reading another site when it may read its own (``manager_other``: 403 or 404)."""
    expected: dict[Caller, Expect] = {caller: 403 for caller in Caller}
    expected |= {caller: ok for caller in allowed}
    if Caller.MANAGER_OWN in allowed and Caller.MANAGER_OTHER not in allowed:
        expected[Caller.MANAGER_OTHER] = manager_other
    expected[Caller.ANONYMOUS] = 401
    return expected


READERS = {Caller.MLOPS, Caller.AUDITOR, Caller.SERVICE, Caller.MANAGER_OWN}
LISTED = access(READERS | {Caller.MANAGER_OTHER})
"""Any reader; a site manager sees its own sites' rows only (test_lists_... below)."""
SITE_READ = access(READERS, manager_other=403)
"""A site in the path: another site is refused."""
BY_ID_READ = access(READERS, manager_other=404)
"""An object by id: another site's is not found (its existence is not revealed)."""
CHANGE_LOG_READ = access({Caller.MLOPS, Caller.AUDITOR})
MLOPS_WRITE = access({Caller.MLOPS})
RETRAIN_WRITE = access({Caller.MLOPS, Caller.SERVICE})
REASON = {"reason": "role matrix"}


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    expected: Mapping[Caller, Expect]
    body: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)


ROUTES = [
    Case("GET", "/sites", LISTED),
    Case("GET", "/sites/{site_id}/events", SITE_READ),
    Case("GET", "/sites/{site_id}/drift", SITE_READ),
    Case("GET", "/sites/{site_id}/report", SITE_READ),
    Case("GET", "/sites/{site_id}/drift-report", SITE_READ),
    Case("GET", "/sites/{site_id}/performance", SITE_READ),
    Case("GET", "/sites/{site_id}/health", SITE_READ),
    Case("GET", "/models/{model_name}/performance", LISTED),
    Case("GET", "/alerts", LISTED),
    Case("GET", "/sites/{site_id}/alerts", SITE_READ),
    Case("GET", "/alerts/{alert_id}", BY_ID_READ),
    Case("POST", "/alerts/{alert_id}/acknowledge", MLOPS_WRITE, body={"note": "on it"}),
    Case("POST", "/alerts/{alert_id}/resolve", MLOPS_WRITE, body={}),
    Case(
        "POST",
        "/sites/{site_id}/reference",
        MLOPS_WRITE,
        body={"model_name": MODEL, "model_version": "1.0.0", **REASON},
    ),
    Case("POST", "/models/{model_name}/retrain", RETRAIN_WRITE, body=REASON),
    Case("GET", "/retrain-requests", LISTED),
    Case("GET", "/retrain-requests/{request_id}", BY_ID_READ),
    # Candidates seeded as evaluated at OWN and OTHER, unevaluated at SPARE: the writes there
    # answer 409 or 200 depending on the order they run in (AUTHORISED).
    Case("GET", "/candidates", LISTED),
    Case(
        "POST",
        "/candidates",
        access({Caller.MLOPS}, AUTHORISED),  # SPARE's version is a candidate already: 409
        body={"model_name": MODEL, "model_version": "4", **REASON},
    ),
    Case("GET", "/candidates/{candidate_id}", BY_ID_READ),
    Case("GET", "/candidates/{candidate_id}/evidence", BY_ID_READ),
    Case("GET", "/candidates/{candidate_id}/evidence.json", BY_ID_READ),
    Case("POST", "/candidates/{candidate_id}/approve", access({Caller.MLOPS}, AUTHORISED), REASON),
    Case("POST", "/candidates/{candidate_id}/reject", access({Caller.MLOPS}, AUTHORISED), REASON),
    Case("POST", "/candidates/{candidate_id}/promote", access({Caller.MLOPS}, AUTHORISED), REASON),
    Case(
        "POST",
        "/models/{model_name}/rollback",
        access({Caller.MLOPS}, AUTHORISED),  # version 1 was never promoted: 409
        body={"expected_version": "1", **REASON},
    ),
    Case("GET", "/models/{model_name}", LISTED),  # a site manager: its sites' candidates
    Case("POST", "/links", LISTED, body={"path": "/sites/site-01/report"}),
    Case("GET", "/audit", CHANGE_LOG_READ),
    Case("GET", "/audit/verify", CHANGE_LOG_READ),
]


def drift_alert(site_id: str) -> Alert:
    t0 = datetime(2026, 1, 2, tzinfo=UTC)
    return Alert(
        alert_id=uuid.uuid4(),
        key=StreamKey(site_id, MODEL, "1.0.0"),
        detector="ks",
        features=("mean",),
        occurred_at=t0,
        since=t0,
        window_start=t0,
        window_end=t0 + timedelta(hours=1),
        statistic=0.4,
        p_value=0.001,
        effect_size=0.4,
        effect_size_name="ks",
        explanation="role matrix alert",
        config_fingerprint="f" * 64,
        reference_id=uuid.uuid4(),
    )


def retrain_request(site_id: str | None, now: datetime) -> dict[str, Any]:
    return {
        "request_id": uuid.uuid4(),
        "model_name": MODEL,
        "site_id": site_id,
        "trigger": "alert" if site_id else "manual",
        "alert_id": None,
        "requested_by": "retrain-policy",
        "reason": "seeded",
        "status": "pending",
        "policy_fingerprint": None,
        "details": {},
        "created_at": now,
        "updated_at": now,
    }


def snapshot(site_id: str, now: datetime) -> dict[str, Any]:
    return {
        "site_id": site_id,
        "model_name": MODEL,
        "model_version": "1.0.0",
        "finding": "lesion",
        "window": "rolling",
        "computed_at": now,
        "predicted": 10,
        "labelled": 8,
        "expired_labels": 0,
        "label_delay_hours": None,
        "metrics": {},
        "subgroups": [],
        "estimate": None,
        "config_fingerprint": "e" * 64,
    }


def seed(engine: Engine) -> dict[str, dict[str, str]]:
    """Events, drift streams, alerts, retrain requests and performance snapshots at three
    sites; the path parameters that name each site's objects."""
    monitor = DriftMonitor(CONFIG)
    for seed_value, site_id in enumerate((OWN, OTHER, SPARE)):
        config = FeatureStreamConfig(site_id=site_id, n_events=200, seed=seed_value)
        events = list(feature_stream(config))
        for first in range(0, len(events), 100):
            batch = events[first : first + 100]
            chunk = [Delivered(e, site_id, 0, first + i) for i, e in enumerate(batch)]
            store_batch(engine, chunk, [], monitor.process)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    alerts = {site_id: drift_alert(site_id) for site_id in (OWN, OTHER, SPARE)}
    requests = {site_id: retrain_request(site_id, now) for site_id in (OWN, OTHER, SPARE)}
    with engine.begin() as connection:
        write_alerts(connection, list(alerts.values()), now)
        connection.execute(
            table_of(RetrainRequestRow).insert(),
            [*requests.values(), retrain_request(None, now)],
        )
        connection.execute(
            table_of(PerformanceSnapshotRow).insert(),
            [snapshot(site_id, now) for site_id in (OWN, OTHER, SPARE)],
        )
    candidates = {
        site_id: seed_candidate(engine, site_id, version)
        for version, site_id in enumerate((OWN, OTHER, SPARE), start=2)
    }
    return {
        site_id: {
            "site_id": site_id,
            "model_name": MODEL,
            "alert_id": str(alerts[site_id].alert_id),
            "request_id": str(requests[site_id]["request_id"]),
            "candidate_id": str(candidates[site_id]),
        }
        for site_id in (OWN, OTHER, SPARE)
    }


def seed_candidate(engine: Engine, site_id: str, version: int) -> uuid.UUID:
    """A candidate retrained for ``site_id``: evaluated (passed) unless it is SPARE's."""
    row = candidates_store.propose(
        engine,
        model_name=MODEL,
        model_version=str(version),
        proposed_by="retrain-job",
        triggered_by="retrain-policy",
        site_id=site_id,
        reason="role matrix",
    )
    if site_id != SPARE:
        record_gate_outcome(engine, row.candidate_id, report=gate_report(MODEL, version))
    return row.candidate_id


@pytest.fixture(scope="module")
def seeded(pg_url: str) -> Iterator[tuple[Engine, dict[str, dict[str, str]]]]:
    """One seeded database for the whole matrix (the writes act on their own site)."""
    engine = make_engine(pg_url)
    upgrade(engine)
    empty_tables(engine)
    try:
        yield engine, seed(engine)
    finally:
        empty_tables(engine)
        engine.dispose()


@pytest.fixture(scope="module")
def client(seeded: tuple[Engine, dict[str, dict[str, str]]]) -> Iterator[TestClient]:
    app = create_app(SETTINGS, engine=seeded[0])
    registry = FakeRegistry()  # GET /models/{model_name} reads the champion: no MLflow here
    app.state.registry_factory = lambda: registry
    with TestClient(app) as test_client:
        yield test_client


def headers(caller: Caller) -> dict[str, str]:
    if caller is Caller.ANONYMOUS:
        return {}
    if caller is Caller.NO_ROLE:
        claims = local_claims(SETTINGS, "nobody", roles=UNKNOWN_ROLES, sites=[OWN, OTHER])
        return {"Authorization": f"Bearer {signed_locally(SETTINGS, claims)}"}
    subject, roles, sites = TOKENS[caller]
    return bearer(SETTINGS, subject, *roles, sites=sites)


def url(case: Case, caller: Caller, ids: Mapping[str, Mapping[str, str]]) -> str:
    """The path with the objects this caller is meant to reach (see the module docstring)."""
    if case.method != "GET":
        return case.path.format(**ids[SPARE])
    return case.path.format(**ids[OWN if caller is Caller.MANAGER_OWN else OTHER])


def matches(expected: Expect, status: int) -> bool:
    if expected == OK:
        return 200 <= status < 300
    if expected == AUTHORISED:
        return status not in (401, 403)
    return status == expected


def served_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route of ``app``. FastAPI >= 0.16x keeps an included router as
    one entry of ``app.routes``; ``iter_route_contexts`` flattens them with their prefixes."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = list(flatten(app.routes)) if flatten else app.routes
    return {
        (method, route.path)
        for route in routes
        if isinstance(getattr(route, "original_route", route), APIRoute)
        for method in route.methods or ()
    }


def test_every_route_is_in_the_table(client: TestClient) -> None:
    served = {
        (method, path)
        for method, path in served_routes(client.app)  # type: ignore[arg-type]
        if path not in OPEN_ROUTES | FRAMEWORK_ROUTES
    }
    assert {(m, p) for m, p in served_routes(client.app) if p in OPEN_ROUTES} == {  # type: ignore[arg-type]
        ("GET", path) for path in OPEN_ROUTES
    }
    table = {(case.method, case.path) for case in ROUTES}
    assert len(table) == len(ROUTES), "a route is in the table twice"
    assert served - table == set(), "routes without a line in ROUTES: who may call them?"
    assert table - served == set(), "lines in ROUTES for routes the app no longer serves"


@pytest.mark.parametrize("caller", list(Caller), ids=lambda c: c.name.lower())
def test_role_matrix(
    client: TestClient, seeded: tuple[Engine, dict[str, dict[str, str]]], caller: Caller
) -> None:
    _, ids = seeded
    wrong = []
    for case in ROUTES:
        response = client.request(
            case.method,
            url(case, caller, ids),
            headers=headers(caller),
            params=case.params,
            json=case.body,
        )
        expected = case.expected[caller]
        if not matches(expected, response.status_code):
            wrong.append(
                f"{case.method} {case.path}: expected {expected}, got {response.status_code} "
                f"{response.text[:200]}"
            )
        if response.status_code == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert wrong == [], f"as {caller}:\n" + "\n".join(wrong)


def test_open_routes_need_no_token(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)  # no broker configured here


def test_lists_show_a_site_manager_its_own_sites_only(client: TestClient) -> None:
    manager = headers(Caller.MANAGER_OWN)
    assert [s["site_id"] for s in client.get("/sites", headers=manager).json()] == [OWN]
    everyone = client.get("/sites", headers=headers(Caller.AUDITOR)).json()
    assert [s["site_id"] for s in everyone] == [OWN, OTHER, SPARE]

    alerts = client.get("/alerts", headers=manager).json()
    assert alerts["total"] == len(alerts["items"]) >= 1
    assert {a["site_id"] for a in alerts["items"]} == {OWN}
    named = client.get("/alerts", params={"site_id": OTHER}, headers=manager)
    assert named.status_code == 403
    assert client.get("/alerts", params={"site_id": OWN}, headers=manager).json() == alerts

    requests = client.get("/retrain-requests", headers=manager).json()
    assert [r["site_id"] for r in requests["items"]] == [OWN] and requests["total"] == 1
    all_requests = client.get("/retrain-requests", headers=headers(Caller.AUDITOR)).json()
    assert {r["site_id"] for r in all_requests["items"]} >= {OWN, OTHER, SPARE, None}

    performance = client.get(f"/models/{MODEL}/performance", headers=manager).json()
    assert {s["site_id"] for s in performance} == {OWN}


def test_a_site_manager_with_another_role_reads_every_site(client: TestClient) -> None:
    both = bearer(SETTINGS, "manager-and-auditor", Role.SITE_MANAGER, Role.AUDITOR, sites=[OWN])
    assert client.get(f"/sites/{OTHER}/events", headers=both).status_code == 200
    assert len(client.get("/sites", headers=both).json()) == 3


def test_a_site_manager_without_sites_reads_nothing(client: TestClient) -> None:
    empty = bearer(SETTINGS, "manager-nowhere", Role.SITE_MANAGER)
    assert client.get("/sites", headers=empty).json() == []
    assert client.get("/alerts", headers=empty).json()["total"] == 0
    assert client.get(f"/sites/{OWN}/events", headers=empty).status_code == 403
