"""Identities as an insider would try to bend them, against the real API and PostgreSQL: twin
spellings of one person, unreadable subjects, and a signature made with a stale login."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from monitor.service.api import create_app
from monitor.service.auth import Role, issue_local_token
from monitor.service.settings import Settings
from tests.auth_helpers import TEST_AUTH, bearer, local_claims, signed_locally
from tests.factories import record_gate_outcome

pytestmark = pytest.mark.integration

SETTINGS = Settings(auth=TEST_AUTH)
MODEL = "cxr-lesion"


class Registry:
    """Versions 1 to 5 exist; the champion is version 1 and never moves in these tests."""

    def champion_version(self, model_name: str) -> str | None:
        return "1"

    def move_champion(self, model_name: str, version: str) -> str | None:
        raise AssertionError("nothing here promotes")

    def has_version(self, model_name: str, version: str) -> bool:
        return 1 <= int(version) <= 5


def app_client(engine: Engine, settings: Settings) -> TestClient:
    app = create_app(settings, engine=engine)
    registry = Registry()
    app.state.registry_factory = lambda: registry
    return TestClient(app)


@pytest.fixture
def client(pg_engine: Engine) -> Iterator[TestClient]:
    with app_client(pg_engine, SETTINGS) as test_client:
        yield test_client


def gated_candidate(client: TestClient, engine: Engine, proposer: str = "alice") -> str:
    """A candidate ``proposer`` proposed through the API, passed by the gate."""
    body = {"model_name": MODEL, "model_version": "2", "reason": "trained offline"}
    created = client.post("/candidates", json=body, headers=bearer(SETTINGS, proposer, "mlops"))
    assert created.status_code == 201, created.text
    candidate_id: str = created.json()["candidate_id"]
    record_gate_outcome(engine, candidate_id)  # type: ignore[arg-type]
    return candidate_id


def approve(client: TestClient, candidate_id: str, headers: dict[str, str]) -> Any:
    return client.post(
        f"/candidates/{candidate_id}/approve", json={"reason": "reviewed"}, headers=headers
    )


@pytest.mark.parametrize("twin", ["Alice", "ALICE", "ａｌｉｃｅ"])
def test_the_proposer_cannot_approve_under_a_twin_spelling_of_its_name(
    client: TestClient, pg_engine: Engine, twin: str
) -> None:
    candidate_id = gated_candidate(client, pg_engine)
    refused = approve(client, candidate_id, bearer(SETTINGS, twin, Role.MLOPS))
    assert refused.status_code == 403 and "proposed" in refused.json()["detail"]


def test_one_person_under_two_spellings_is_one_approver(
    client: TestClient, pg_engine: Engine
) -> None:
    candidate_id = gated_candidate(client, pg_engine)
    first = approve(client, candidate_id, bearer(SETTINGS, "bob", Role.MLOPS))
    assert first.status_code == 200 and first.json()["approvals"] == 1
    twin = approve(client, candidate_id, bearer(SETTINGS, "Bob", Role.MLOPS))
    assert twin.status_code == 403 and "already signed" in twin.json()["detail"]
    detail = client.get(f"/candidates/{candidate_id}", headers=bearer(SETTINGS, "bob", "mlops"))
    assert detail.json()["status"] == "passed" and detail.json()["approvals"] == 1


def test_a_subject_recorded_with_surrounding_space_is_recorded_trimmed(
    client: TestClient, pg_engine: Engine
) -> None:
    candidate_id = gated_candidate(client, pg_engine)
    token = signed_locally(SETTINGS, local_claims(SETTINGS, " bob ", roles=["mlops"]))
    signed = approve(client, candidate_id, {"Authorization": f"Bearer {token}"})
    assert signed.status_code == 200
    assert [s["signer"] for s in signed.json()["signatures"]] == ["bob"]


@pytest.mark.parametrize("subject", ["", "   ", "bob\u200b", "bob\x07", "\u202ebob"])
def test_a_token_whose_subject_is_blank_or_unreadable_is_refused(
    client: TestClient, subject: str
) -> None:
    token = signed_locally(SETTINGS, local_claims(SETTINGS, subject, roles=["mlops"]))
    answer = client.get("/candidates", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401


def test_a_signature_needs_a_fresh_login(pg_engine: Engine) -> None:
    strict = Settings(auth=TEST_AUTH.model_copy(update={"signing_max_age_s": 300.0}))
    with app_client(pg_engine, strict) as client:
        candidate_id = gated_candidate(client, pg_engine)
        long_ago = int(time.time()) - 301
        stale = signed_locally(
            strict, local_claims(strict, "bob", roles=["mlops"], auth_time=long_ago)
        )
        refused = approve(client, candidate_id, {"Authorization": f"Bearer {stale}"})
        assert refused.status_code == 401
        assert refused.json()["detail"] == "re-authenticate to sign"
        assert "insufficient_user_authentication" in refused.headers["www-authenticate"]
        # The same stale token still reads: only signing asks for the person.
        assert (
            client.get(
                f"/candidates/{candidate_id}", headers={"Authorization": f"Bearer {stale}"}
            ).status_code
            == 200
        )
        fresh = approve(client, candidate_id, bearer(strict, "bob", Role.MLOPS))
        assert fresh.status_code == 200


def test_a_signature_shows_the_signers_printed_name_time_and_meaning(
    client: TestClient, pg_engine: Engine
) -> None:
    candidate_id = gated_candidate(client, pg_engine)
    token = issue_local_token(SETTINGS, "bob", [Role.MLOPS], name="Robert Builder, MD")
    signed = approve(client, candidate_id, {"Authorization": f"Bearer {token}"})
    assert signed.status_code == 200
    (signature,) = signed.json()["signatures"]
    assert signature["signer"] == "bob" and signature["signer_name"] == "Robert Builder, MD"
    assert signature["meaning"].startswith("I approve cxr-lesion version 2 for promotion")
    assert signature["signed_at"].endswith(("Z", "+00:00"))
    auditor = bearer(SETTINGS, "audrey", Role.AUDITOR)
    (entry,) = client.get("/audit?action=approval", headers=auditor).json()["items"]
    assert entry["details"]["signer_name"] == "Robert Builder, MD"
    assert entry["details"]["meaning"] == signature["meaning"]
