"""The candidates and audit endpoints beyond the role matrix: proposals, the registry's
answers, evidence before and after the gate, and the audit log's filters and pages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.service.api import create_app
from monitor.service.auth import Role
from monitor.service.settings import Settings
from retrain.mlflow_calls import TrackingError
from tests.auth_helpers import TEST_AUTH, bearer
from tests.factories import record_gate_outcome

pytestmark = pytest.mark.integration

SETTINGS = Settings(auth=TEST_AUTH)
MODEL = "cxr-lesion"
ALICE = bearer(SETTINGS, "alice", Role.MLOPS)
BOB = bearer(SETTINGS, "bob", Role.MLOPS)
AUDITOR = bearer(SETTINGS, "audrey", Role.AUDITOR)


class FakeRegistry:
    """Our registry interface: versions 1 to 5 exist; ``down`` makes every call fail."""

    def __init__(self) -> None:
        self.champion = "1"
        self.challenger: str | None = None
        self.down = False

    def champion_version(self, model_name: str) -> str | None:
        self._check()
        return self.champion

    def move_champion(self, model_name: str, version: str) -> str | None:
        self._check()
        previous, self.champion = self.champion, version
        return previous

    def challenger_version(self, model_name: str) -> str | None:
        self._check()
        return self.challenger

    def has_version(self, model_name: str, version: str) -> bool:
        self._check()
        return model_name == MODEL and 1 <= int(version) <= 5

    def _check(self) -> None:
        if self.down:
            raise TrackingError("MLflow call 'get model version' failed after 5 attempt(s)")


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def client(pg_engine: Engine, registry: FakeRegistry) -> Iterator[TestClient]:
    app = create_app(SETTINGS, engine=pg_engine)
    app.state.registry_factory = lambda: registry
    with TestClient(app) as test_client:
        yield test_client


def propose(client: TestClient, version: str = "2") -> dict[str, object]:
    response = client.post(
        "/candidates",
        json={"model_name": MODEL, "model_version": version, "reason": "trained offline"},
        headers=ALICE,
    )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def test_a_proposal_needs_a_registered_version_and_is_made_once(
    client: TestClient, registry: FakeRegistry
) -> None:
    body = {"model_name": MODEL, "model_version": "9", "reason": "r"}
    assert client.post("/candidates", json=body, headers=ALICE).status_code == 404
    created = propose(client)
    assert created["proposed_by"] == "alice" and created["status"] == "candidate"
    assert created["evidence_html"] is None and created["criteria"] == []
    again = client.post("/candidates", json={**body, "model_version": "2"}, headers=ALICE)
    assert again.status_code == 409
    registry.down = True
    down = client.post("/candidates", json={**body, "model_version": "3"}, headers=ALICE)
    assert down.status_code == 503
    assert "MLflow" in declared(client, "post", "/candidates", down.status_code)


def declared(client: TestClient, method: str, path: str, code: int) -> str:
    """The OpenAPI description of answer ``code`` of a route (KeyError: undeclared)."""
    operation = client.get("/openapi.json").json()["paths"][path][method]
    description: str = operation["responses"][str(code)]["description"]
    return description


def test_evidence_exists_only_after_the_gate_and_the_proposer_may_not_approve(
    client: TestClient, pg_engine: Engine
) -> None:
    created = propose(client)
    url = f"/candidates/{created['candidate_id']}"
    assert client.get(f"{url}/evidence", headers=BOB).status_code == 404
    assert client.post(f"{url}/approve", json={"reason": "r"}, headers=BOB).status_code == 409
    record_gate_outcome(pg_engine, created["candidate_id"])  # type: ignore[arg-type]
    detail = client.get(url, headers=BOB).json()
    assert [c["id"] for c in detail["criteria"]] == [f"PE-{n}" for n in range(1, 17)]
    page = client.get(detail["evidence_html"], headers=AUDITOR)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get(detail["evidence_json"], headers=AUDITOR).json()["plan_id"] == (
        "cxr-lesion-pccp"
    )
    refused = client.post(f"{url}/approve", json={"reason": "mine"}, headers=ALICE)
    assert refused.status_code == 403 and "proposed" in refused.json()["detail"]
    assert client.post(f"{url}/approve", json={"reason": ""}, headers=BOB).status_code == 422


def test_the_evidence_page_shows_the_decision_record_as_of_now(
    client: TestClient, pg_engine: Engine
) -> None:
    created = propose(client)
    url = f"/candidates/{created['candidate_id']}"
    record_gate_outcome(pg_engine, created["candidate_id"])  # type: ignore[arg-type]
    before = client.get(f"{url}/evidence", headers=AUDITOR).text
    assert "Decision record" in before and "No signatures yet." in before
    assert "0 of 2 approvals required" in before
    signed = client.post(f"{url}/approve", json={"reason": "fine at site-02"}, headers=BOB)
    assert signed.status_code == 200
    signature = signed.json()["signatures"][0]
    page = client.get(f"{url}/evidence", headers=AUDITOR).text
    assert "1 of 2 approvals required" in page and "No signatures yet." not in page
    # The manifestation of 21 CFR 11.50: who, when (UTC) and what it means, and its entry.
    assert "<td>bob</td>" in page and "fine at site-02" in page
    assert f"<strong>approve</strong>: {signature['meaning']}" in page
    assert signature["signed_at"][:19] in page
    assert f'<td class="num">{signature["change_log_seq"]}</td>' in page


def test_a_promotion_with_mlflow_down_changes_nothing(
    client: TestClient, pg_engine: Engine, registry: FakeRegistry
) -> None:
    created = propose(client)
    candidate_id = created["candidate_id"]
    record_gate_outcome(pg_engine, candidate_id)  # type: ignore[arg-type]
    url = f"/candidates/{candidate_id}"
    for who in (BOB, bearer(SETTINGS, "carol", Role.MLOPS)):
        assert client.post(f"{url}/approve", json={"reason": "ok"}, headers=who).status_code == 200
    registry.down = True
    assert client.post(f"{url}/promote", json={"reason": "go"}, headers=BOB).status_code == 503
    assert "MLflow" in declared(client, "post", "/candidates/{candidate_id}/promote", 503)
    assert "MLflow" in declared(client, "post", "/models/{model_name}/rollback", 503)
    assert client.get(url, headers=BOB).json()["status"] == "approved"
    registry.down = False
    promoted = client.post(f"{url}/promote", json={"reason": "go"}, headers=BOB).json()
    assert promoted["status"] == "promoted" and registry.champion == "2"


def test_a_change_of_champion_needs_a_reason_and_a_rollback_names_its_version(
    client: TestClient, pg_engine: Engine, registry: FakeRegistry
) -> None:
    created = propose(client)
    record_gate_outcome(pg_engine, created["candidate_id"])  # type: ignore[arg-type]
    url = f"/candidates/{created['candidate_id']}"
    for who in (BOB, bearer(SETTINGS, "carol", Role.MLOPS)):
        assert client.post(f"{url}/approve", json={"reason": "ok"}, headers=who).status_code == 200
    for blank in (" ", " \t\n"):
        refused = client.post(f"{url}/promote", json={"reason": blank}, headers=BOB)
        assert refused.status_code == 422, refused.text
    assert client.post(f"{url}/promote", json={"reason": "go"}, headers=BOB).status_code == 200
    rollback = f"/models/{MODEL}/rollback"
    for body in (
        {"expected_version": "2", "reason": "  "},
        {"reason": "drill"},
        {"expected_version": "two", "reason": "drill"},
    ):
        assert client.post(rollback, json=body, headers=BOB).status_code == 422, body
    assert registry.champion == "2"
    done = client.post(rollback, json={"expected_version": "2", "reason": "drill"}, headers=BOB)
    assert done.status_code == 200 and registry.champion == "1"


def test_the_audit_log_filters_and_pages(client: TestClient) -> None:
    for version in ("2", "3", "4"):
        propose(client, version)
    everything = client.get("/audit", headers=AUDITOR).json()
    assert everything["total"] == 3
    assert [e["seq"] for e in everything["items"]] == [3, 2, 1]  # newest first
    page = client.get("/audit", params={"limit": 2, "offset": 2}, headers=AUDITOR).json()
    assert [e["seq"] for e in page["items"]] == [1] and page["total"] == 3
    one = client.get("/audit", params={"subject": f"{MODEL}/version/3"}, headers=AUDITOR).json()
    assert [e["subject"] for e in one["items"]] == [f"{MODEL}/version/3"]
    assert client.get("/audit", params={"actor": "bob"}, headers=AUDITOR).json()["total"] == 0
    by_action = client.get("/audit", params={"action": "candidate.proposed"}, headers=AUDITOR)
    assert by_action.json()["total"] == 3
    wildcard = client.get("/audit", params={"subject": "%"}, headers=AUDITOR).json()
    assert wildcard["total"] == 0  # LIKE wildcards are literal
    later = client.get("/audit", params={"since": "2999-01-01T00:00:00Z"}, headers=AUDITOR)
    assert later.json()["total"] == 0
    first = everything["items"][-1]
    assert first["prev_hash"] == "0" * 64 and len(first["entry_hash"]) == 64
    assert len(first["signature"]) == 128 and len(first["key_id"]) == 64
    assert client.get("/audit/verify", headers=AUDITOR).json() == {
        "ok": True,
        "entries": 3,
        "head_hash": everything["items"][0]["entry_hash"],
        "first_bad_seq": None,
        "problem": None,
        "signatures_checked": True,
        "unsigned_through": 0,
    }


def test_the_status_history_is_read_from_the_change_log_through_rollback(
    client: TestClient, pg_engine: Engine
) -> None:
    created = propose(client)
    url = f"/candidates/{created['candidate_id']}"
    record_gate_outcome(pg_engine, created["candidate_id"])  # type: ignore[arg-type]
    for who, reason in ((BOB, "fine at site-02"), (bearer(SETTINGS, "carol", Role.MLOPS), "ok")):
        assert (
            client.post(f"{url}/approve", json={"reason": reason}, headers=who).status_code == 200
        )
    assert client.post(f"{url}/promote", json={"reason": "go"}, headers=ALICE).status_code == 200
    undo = {"expected_version": "2", "reason": "drill"}
    assert client.post(f"/models/{MODEL}/rollback", json=undo, headers=BOB).status_code == 200

    detail = client.get(url, headers=AUDITOR).json()
    history = detail["history"]
    assert [h["action"] for h in history] == [
        "candidate.proposed",
        "gate.result",
        "approval",
        "approval",
        "promotion",
        "rollback",
    ]
    assert [h["seq"] for h in history] == sorted(h["seq"] for h in history)
    assert all(h["authentic"] for h in history)
    assert history[2]["actor"] == "bob" and "fine at site-02" in history[2]["sentence"]
    assert "replacing version 1" in history[4]["sentence"]
    assert "version 1 restored" in history[5]["sentence"]
    assert detail["verify_command"] == "radsentry audit verify"
    # The signatures shown are the change log's, entry by entry.
    assert [s["change_log_seq"] for s in detail["signatures"]] == [h["seq"] for h in history[2:4]]

    page = client.get(f"{url}/evidence", headers=AUDITOR).text
    listed = ", ".join(str(h["seq"]) for h in history)
    assert f"Rendered from change-log entries {listed}" in page
    assert "<code>radsentry audit verify</code>" in page
    for entry in history:
        assert entry["entry_hash"][:16] in page
    assert "Rolled back at" in page and "Promoted to champion at" in page
