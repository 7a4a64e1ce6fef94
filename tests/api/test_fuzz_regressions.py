"""What fuzzing the API found (tests/api/test_fuzz.py), one test each: inputs the database
cannot take were 500s, and are the caller's error (422) now; nothing of them is stored."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from monitor.service.api import create_app
from monitor.service.auth import Role
from monitor.service.drift.alerts import write_alerts
from monitor.service.models import RetrainRequestRow
from monitor.service.pccp import store as candidates_store
from tests.api.test_roles import MODEL, OWN, SETTINGS, drift_alert
from tests.auth_helpers import bearer

pytestmark = pytest.mark.integration

MLOPS = bearer(SETTINGS, "mlops-ann", Role.MLOPS)
LISTINGS = ["/alerts", "/retrain-requests", "/candidates", "/audit"]


@pytest.fixture
def client(pg_engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(SETTINGS, engine=pg_engine), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("path", LISTINGS)
def test_a_page_offset_beyond_64_bits_is_refused(client: TestClient, path: str) -> None:
    too_far = client.get(path, params={"offset": 2**63}, headers=MLOPS)
    assert too_far.status_code == 422, too_far.text
    last = client.get(path, params={"offset": 2**63 - 1}, headers=MLOPS)
    assert last.status_code == 200 and last.json()["items"] == []


@pytest.mark.parametrize(
    ("path", "name"),
    [("/alerts", "detector"), ("/audit", "action"), ("/audit", "actor"), ("/audit", "subject")],
)
def test_a_filter_with_a_nul_character_is_refused(client: TestClient, path: str, name: str) -> None:
    response = client.get(path, params={name: "ks\x00"}, headers=MLOPS)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", name]


@pytest.mark.parametrize("text", ["on it\x00", "on it \\ud800"], ids=["nul", "lone surrogate"])
def test_text_the_database_cannot_hold_is_refused_and_not_stored(
    client: TestClient, pg_engine: Engine, text: str
) -> None:
    alert = drift_alert(OWN)
    with pg_engine.begin() as connection:
        write_alerts(connection, [alert], datetime.now(UTC))
    candidate = candidates_store.propose(
        pg_engine, model_name=MODEL, model_version="2", proposed_by="retrain-job", reason="r"
    )
    body = '{"%s": "' + text.replace("\x00", "\\u0000") + '"}'  # raw JSON: escapes as sent
    writes = [
        (f"/alerts/{alert.alert_id}/acknowledge", body % "note"),
        (f"/models/{MODEL}/retrain", body % "reason"),
        (f"/candidates/{candidate.candidate_id}/reject", body % "reason"),
    ]
    json_headers = {**MLOPS, "Content-Type": "application/json"}
    for path, content in writes:
        response = client.post(path, content=content, headers=json_headers)
        assert response.status_code == 422, f"{path}: {response.text}"
    assert client.get(f"/alerts/{alert.alert_id}", headers=MLOPS).json()["status"] == "open"
    assert candidates_store.get(pg_engine, candidate.candidate_id).status == "candidate"
    with pg_engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(RetrainRequestRow)) == 0


def test_an_invalid_request_echoing_a_lone_surrogate_is_a_422(client: TestClient) -> None:
    """FastAPI's 422 echoes the input; JSON allows a lone surrogate escape that UTF-8 cannot
    encode, so the answer itself failed (500)."""
    content = '{"model_name": "cxr\\udc00", "model_version": "2", "reason": "r"}'
    headers = {**MLOPS, "Content-Type": "application/json"}
    response = client.post("/candidates", content=content, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["input"] == "cxr\udc00"
