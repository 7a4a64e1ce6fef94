"""Answers a client can act on, against the real app and PostgreSQL: refusals that say what is
missing (the approvals needed and held, the role needed and held), 404 for a model the service
has no record of, the model's champion and history, and signed links to pages."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.service.api import create_app
from monitor.service.audit.links import issue_link, link_key
from monitor.service.auth import Principal, Role
from tests.api.test_candidates_api import (
    ALICE,
    AUDITOR,
    BOB,
    MODEL,
    SETTINGS,
    FakeRegistry,
    propose,
)
from tests.auth_helpers import bearer
from tests.factories import record_gate_outcome

pytestmark = pytest.mark.integration
LINK_KEY = link_key(SETTINGS)  # derived from the session's audit key (tests/conftest.py)

CAROL = bearer(SETTINGS, "carol", Role.MLOPS)
MANAGER = bearer(SETTINGS, "manager-mo", Role.SITE_MANAGER, sites=["site-01"])


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def client(pg_engine: Engine, registry: FakeRegistry) -> Iterator[TestClient]:
    app = create_app(SETTINGS, engine=pg_engine)
    app.state.registry_factory = lambda: registry
    with TestClient(app) as test_client:
        yield test_client


def gated(client: TestClient, pg_engine: Engine, version: str = "2") -> str:
    created = propose(client, version)
    record_gate_outcome(pg_engine, created["candidate_id"])  # type: ignore[arg-type]
    return f"/candidates/{created['candidate_id']}"


def test_a_promotion_short_of_approvals_says_how_many_are_needed_and_held(
    client: TestClient, pg_engine: Engine
) -> None:
    url = gated(client, pg_engine)
    none = client.post(f"{url}/promote", json={"reason": "go"}, headers=BOB)
    assert none.status_code == 409
    assert "needs 2 approvals from distinct mlops users, has 0;" in none.json()["detail"]
    assert client.post(f"{url}/approve", json={"reason": "ok"}, headers=BOB).status_code == 200
    one = client.post(f"{url}/promote", json={"reason": "go"}, headers=BOB)
    assert one.status_code == 409
    detail = one.json()["detail"]
    assert "needs 2 approvals from distinct mlops users, has 1 (bob)" in detail
    assert f"POST {url}/approve" in detail and "not alice, nor one who signed" in detail


def test_a_promotion_before_the_gate_says_the_gate_has_not_run(client: TestClient) -> None:
    created = propose(client)
    refused = client.post(
        f"/candidates/{created['candidate_id']}/promote", json={"reason": "go"}, headers=BOB
    )
    assert refused.status_code == 409
    assert "not yet evaluated by the acceptance gate" in refused.json()["detail"]


def test_a_failed_candidate_says_it_is_final_and_what_to_do_instead(
    client: TestClient, pg_engine: Engine
) -> None:
    created = propose(client)
    record_gate_outcome(pg_engine, created["candidate_id"], "failed")  # type: ignore[arg-type]
    url = f"/candidates/{created['candidate_id']}"
    refused = client.post(f"{url}/promote", json={"reason": "go"}, headers=BOB)
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"cannot promote {MODEL} version 2: it is failed, which is final: ask for a retrain "
        f"(POST /models/{MODEL}/retrain) or propose another version"
    )


def test_a_refused_role_names_the_role_needed_and_the_roles_held(client: TestClient) -> None:
    created = propose(client)
    url = f"/candidates/{created['candidate_id']}"
    refused = client.post(f"{url}/approve", json={"reason": "ok"}, headers=AUDITOR)
    assert refused.status_code == 403
    assert refused.json()["detail"] == (
        "this needs the role mlops; the token of audrey holds auditor: "
        "use a token issued with that role"
    )
    retrain = client.post(f"/models/{MODEL}/retrain", json={"reason": "r"}, headers=MANAGER)
    assert retrain.status_code == 403
    assert (
        "one of the roles mlops, service; the token of manager-mo holds site_manager"
        in (retrain.json()["detail"])
    )


def test_a_misspelt_model_is_not_found_and_the_answer_names_the_known_one(
    client: TestClient, pg_engine: Engine
) -> None:
    gated(client, pg_engine)
    undo = {"expected_version": "2", "reason": "drill"}
    misspelt = client.post("/models/cxr-lesoin/rollback", json=undo, headers=BOB)
    assert misspelt.status_code == 404, misspelt.text
    assert (
        "no model 'cxr-lesoin' is known here; did you mean cxr-lesion?"
        in (misspelt.json()["detail"])
    )
    assert client.get("/models/cxr-lesoin", headers=BOB).status_code == 404
    # A known model whose version was never promoted: a conflict, saying what to name instead.
    never = client.post(f"/models/{MODEL}/rollback", json=undo, headers=BOB)
    assert never.status_code == 409
    assert "was never promoted" in never.json()["detail"]
    assert f"GET /models/{MODEL}" in never.json()["detail"]


def test_the_model_says_which_version_is_champion_and_how_it_got_there(
    client: TestClient, pg_engine: Engine, registry: FakeRegistry
) -> None:
    url = gated(client, pg_engine)
    registry.challenger = "2"
    before = client.get(f"/models/{MODEL}", headers=AUDITOR).json()
    assert (before["champion"], before["challenger"]) == ("1", "2")
    assert [c["status"] for c in before["candidates"]] == ["passed"]
    assert before["history"] == [] and before["champion_since"] is None

    for who in (BOB, CAROL):
        assert client.post(f"{url}/approve", json={"reason": "ok"}, headers=who).status_code == 200
    assert client.post(f"{url}/promote", json={"reason": "go"}, headers=ALICE).status_code == 200
    promoted = client.get(f"/models/{MODEL}", headers=AUDITOR).json()
    assert promoted["champion"] == "2" and promoted["candidates"] == []
    [promotion] = promoted["history"]
    assert (promotion["action"], promotion["champion"], promotion["replaced"]) == (
        "promotion",
        "2",
        "1",
    )
    assert (promotion["actor"], promotion["reason"]) == ("alice", "go")
    assert promoted["champion_since"] == promotion["recorded_at"]

    undo = {"expected_version": "2", "reason": "drill"}
    assert client.post(f"/models/{MODEL}/rollback", json=undo, headers=BOB).status_code == 200
    after = client.get(f"/models/{MODEL}", headers=MANAGER).json()
    assert after["champion"] == "1"
    assert [(h["action"], h["champion"], h["replaced"]) for h in after["history"]] == [
        ("promotion", "2", "1"),
        ("rollback", "1", "2"),
    ]
    assert all(h["reason"] is None for h in after["history"])  # a site manager's view
    assert after["champion_since"] == after["history"][-1]["recorded_at"]
    assert after["champion_since"].endswith(("Z", "+00:00"))


def test_a_signed_link_opens_its_page_without_a_bearer_header_and_only_that_page(
    client: TestClient, pg_engine: Engine
) -> None:
    url = gated(client, pg_engine)
    page = f"{url}/evidence"
    assert client.get(page).status_code == 401  # a browser: no header
    made = client.post("/links", json={"path": page}, headers=AUDITOR)
    assert made.status_code == 201, made.text
    link = made.json()
    assert link["url"].startswith("http") and link["url"].split("?")[0].endswith(page)
    expires = datetime.fromisoformat(link["expires_at"])
    assert timedelta(seconds=0) < expires - datetime.now(UTC) <= timedelta(minutes=10)
    opened = client.get(link["url"])
    assert opened.status_code == 200 and "Decision record" in opened.text

    token = link["url"].split("link=", 1)[1]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    refused = client.get(page, params={"link": tampered})
    assert refused.status_code == 401 and "not valid" in refused.json()["detail"]
    elsewhere = client.get(f"{url}/evidence.json", params={"link": token})
    assert elsewhere.status_code == 401  # not a page that takes links: the bearer is needed
    as_bearer = client.get(url, headers={"Authorization": f"Bearer {token}"})
    assert as_bearer.status_code == 401
    auditor = Principal("audrey", frozenset({Role.AUDITOR}))
    old, _ = issue_link(LINK_KEY, 600, auditor, page, now=datetime.now(UTC) - timedelta(hours=1))
    expired = client.get(page, params={"link": old})
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]
    other, _ = issue_link(LINK_KEY, 600, auditor, "/sites/site-01/report")
    assert client.get(page, params={"link": other}).status_code == 401


def test_links_are_made_for_pages_only_and_carry_the_callers_limits(
    client: TestClient, pg_engine: Engine
) -> None:
    url = gated(client, pg_engine)
    not_a_page = client.post("/links", json={"path": url}, headers=AUDITOR)
    assert not_a_page.status_code == 404
    assert "/candidates/{candidate_id}/evidence" in not_a_page.json()["detail"]
    assert client.post("/links", json={"path": f"{url}/evidence"}).status_code == 401
    # A site manager's link to another site's report is refused as its token would be.
    made = client.post("/links", json={"path": "/sites/site-02/report"}, headers=MANAGER)
    assert made.status_code == 201
    assert client.get(made.json()["url"]).status_code == 403
