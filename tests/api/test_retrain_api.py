"""Retrain requests from alerts and from people, against a real PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from typer.testing import CliRunner

from monitor.drift.alerts import Alert, StreamKey
from monitor.service.api import create_app
from monitor.service.audit.store import entries
from monitor.service.auth import Role
from monitor.service.cli import app
from monitor.service.drift.alerts import write_alerts
from monitor.service.ingest.store import store_batch
from monitor.service.kafka import Delivered
from monitor.service.retrain.store import consider_alerts
from monitor.service.settings import Settings
from retrain.policy import RetrainPolicy
from tests.auth_helpers import TEST_AUTH, bearer
from tests.factories import inference_event, label_event, record_initial_champion

pytestmark = pytest.mark.integration

POLICY = RetrainPolicy(min_new_labels=20, min_new_labels_site=10)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = Settings(auth=TEST_AUTH)


def drift_alert(detector: str, site_id: str = "site-01", effect: float = 0.05) -> Alert:
    return Alert(
        alert_id=uuid.uuid4(),
        key=StreamKey(site_id, "cxr-lesion", "1.0.0"),
        detector=detector,
        features=("mean",),
        occurred_at=T0,
        since=T0,
        window_start=T0,
        window_end=T0 + timedelta(hours=1),
        statistic=0.1,
        p_value=0.001,
        effect_size=effect,
        effect_size_name="mmd2",
        explanation="test alert",
        config_fingerprint="f" * 64,
        reference_id=uuid.uuid4(),
    )


@pytest.fixture
def client(pg_engine: Engine) -> Iterator[TestClient]:
    events = [inference_event(i) for i in range(30)] + [label_event(i) for i in range(30)]
    store_batch(pg_engine, [Delivered(e, "t", 0, n) for n, e in enumerate(events)], [])
    record_initial_champion(pg_engine)
    app = create_app(SETTINGS, engine=pg_engine)
    with TestClient(app, headers=bearer(SETTINGS, "mlops-ann", Role.MLOPS)) as test_client:
        yield test_client


def test_an_alert_triggers_one_request_however_often_it_is_scanned(
    client: TestClient, pg_engine: Engine
) -> None:
    mmd, ks = drift_alert("mmd"), drift_alert("ks")
    with pg_engine.begin() as connection:
        write_alerts(connection, [mmd, ks], T0)
    created = consider_alerts(pg_engine, POLICY.model_copy(update={"cooldown_hours": 0}))
    assert len(created) == 1
    assert consider_alerts(pg_engine, POLICY.model_copy(update={"cooldown_hours": 0})) == []
    page = client.get("/retrain-requests", params={"model_name": "cxr-lesion"}).json()
    assert page["total"] == 1
    request = page["items"][0]
    assert (request["trigger"], request["alert_id"], request["status"]) == (
        "alert",
        str(mmd.alert_id),
        "pending",
    )
    assert request["details"]["labels"] == {"overall": 30, "site": 30}
    assert (
        client.get(f"/retrain-requests/{request['request_id']}")
        .json()["reason"]
        .startswith("mmd alert")
    )


def test_an_embedding_alert_requests_a_retrain_like_any_drift_alert(
    client: TestClient, pg_engine: Engine
) -> None:
    with pg_engine.begin() as connection:
        write_alerts(connection, [drift_alert("embedding_mmd", site_id="site-01")], T0)
    (created,) = consider_alerts(pg_engine, POLICY)
    request = client.get(f"/retrain-requests/{created}").json()
    assert (request["trigger"], request["site_id"]) == ("alert", "site-01")
    assert request["details"]["detector"] == "embedding_mmd"
    assert request["reason"].startswith("embedding_mmd alert at site-01")


def test_cooldown_after_a_request_and_label_minimum(client: TestClient, pg_engine: Engine) -> None:
    with pg_engine.begin() as connection:
        write_alerts(connection, [drift_alert("mmd")], T0)
    assert consider_alerts(pg_engine, RetrainPolicy(min_new_labels=1000)) == []  # too few labels
    assert len(consider_alerts(pg_engine, POLICY)) == 1
    with pg_engine.begin() as connection:
        write_alerts(connection, [drift_alert("performance.auroc_drop")], T0)
    assert consider_alerts(pg_engine, POLICY) == []  # cooling down (24 h), and no new labels


def test_people_ask_through_the_api_and_the_cli(
    client: TestClient, pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    misspelt = client.post("/models/cxr-lesoin/retrain", json={"reason": "new site onboarded"})
    assert misspelt.status_code == 404 and "did you mean cxr-lesion" in misspelt.json()["detail"]
    response = client.post("/models/cxr-lesion/retrain", json={"reason": "new site onboarded"})
    assert response.status_code == 202
    assert (response.json()["trigger"], response.json()["requested_by"]) == ("manual", "mlops-ann")
    forged = {"requested_by": "someone-else", "reason": "r"}
    assert client.post("/models/cxr-lesion/retrain", json=forged).status_code == 422
    monkeypatch.setenv(
        "RADSENTRY_DATABASE__URL", pg_engine.url.render_as_string(hide_password=False)
    )
    result = CliRunner().invoke(
        app, ["retrain", "--model", "cxr-lesion", "--by", "mlops-bob", "--reason", "quarterly"]
    )
    assert result.exit_code == 0, result.output
    pending = client.get("/retrain-requests", params={"status": "pending"}).json()
    assert pending["total"] == 2
    identities = {r["requested_by"]: r["details"]["identity"] for r in pending["items"]}
    assert identities == {"mlops-ann": "verified", "mlops-bob": "claimed"}
    logged = [e.details for e in entries(pg_engine) if e.action == "retrain.requested"]
    assert sorted(d["identity"] for d in logged) == ["claimed", "verified"]
    blank = CliRunner().invoke(app, ["retrain", "--model", "m", "--by", " \u200b", "--reason", "r"])
    assert blank.exit_code == 2 and "--by" in blank.output
    assert client.get(f"/retrain-requests/{uuid.uuid4()}").status_code == 404
